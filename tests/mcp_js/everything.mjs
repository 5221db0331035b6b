// The official MCP reference server (@modelcontextprotocol/server-everything) over TLS on loopback,
// for agentgate's tests:
//
//     node everything.mjs PORT CERT KEY LOG
//
// Its own launcher (dist/transports/streamableHttp.js) speaks plain HTTP on every interface at a
// fixed path; this one serves the same server (its createServer(), one per MCP session, the SDK's
// StreamableHTTPServerTransport, as that launcher wires them) over HTTPS on 127.0.0.1 at any path,
// so one server can stand behind several gateway routes. Every HTTP request that reaches it is
// appended to LOG as a JSON line (method, path, Authorization, body), so tests can tell what got
// past the gateway. Prints "listening" once it accepts connections.
import { appendFileSync, readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import https from "node:https";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createServer } from "@modelcontextprotocol/server-everything/dist/server/index.js";

const [port, cert, key, logPath] = process.argv.slice(2);
const log = (entry) => appendFileSync(logPath, JSON.stringify(entry) + "\n");
const sessions = new Map();

function jsonError(res, status, message) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString("utf8");
}

async function handle(req, res) {
  const path = new URL(req.url, "https://127.0.0.1").pathname;
  const sid = req.headers["mcp-session-id"];
  const entry = { http: req.method, path, authorization: req.headers.authorization ?? null };
  if (req.method !== "POST") {
    log(entry);
    const transport = sid && sessions.get(sid);
    if (!transport) return jsonError(res, 400, "Bad Request: No valid session ID provided");
    return transport.handleRequest(req, res);
  }
  const text = await readBody(req);
  log({ ...entry, body: text });
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    return jsonError(res, 400, "Parse error");
  }
  if (sid) {
    const transport = sessions.get(sid);
    if (!transport) return jsonError(res, 404, "Session not found");
    return transport.handleRequest(req, res, body);
  }
  const { server, cleanup } = createServer();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    onsessioninitialized: (id) => sessions.set(id, transport),
  });
  server.server.onclose = async () => {
    const id = transport.sessionId;
    if (id && sessions.delete(id)) cleanup(id);
  };
  await server.connect(transport);
  return transport.handleRequest(req, res, body);
}

const srv = https.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
  handle(req, res).catch((e) => {
    console.error("request failed:", e);
    if (!res.headersSent) jsonError(res, 500, "Internal server error");
  });
});
srv.listen(Number(port), "127.0.0.1", () => console.log("listening"));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
