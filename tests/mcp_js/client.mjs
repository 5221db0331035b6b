// The TypeScript SDK's MCP client (@modelcontextprotocol/sdk) over Streamable HTTP, driven by
// agentgate's tests:
//
//     MCP_TOKEN=... NODE_EXTRA_CA_CERTS=ca.pem node client.mjs URL ALLOWED_TOOL ARGS_JSON HIDDEN_TOOL
//
// Connects to URL with the bearer token, lists the tools, calls ALLOWED_TOOL with ARGS_JSON and
// then HIDDEN_TOOL, and prints one JSON object: the tool names it was shown, the allowed call's
// result and the hidden call's JSON-RPC error (code, message, data) as the SDK raised it.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";

const [url, allowed, argsJson, hidden] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_TOKEN}` } },
});
const client = new Client({ name: "agentgate-ts-test", version: "1.0.0" });
await client.connect(transport);
const out = { sessionId: transport.sessionId ?? null };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
out.allowed = await client.callTool({ name: allowed, arguments: JSON.parse(argsJson) });
try {
  out.hidden = { result: await client.callTool({ name: hidden, arguments: {} }) };
} catch (e) {
  if (!(e instanceof McpError)) throw e;
  out.hidden = { error: { code: e.code, message: e.message, data: e.data ?? null } };
}
await transport.terminateSession();
await client.close();
console.log(JSON.stringify(out));
