"""A small OpenAI-compatible TLS upstream for tests: JSON and SSE for /v1/chat/completions,
/v1/responses and /v1/models, plus probes (/v1/echo, /v1/slow, /v1/big).

It is the far side of the gateway, not the thing under test: it records what it received
(headers, TLS handshakes) so tests can assert what the gateway sent.
"""

from __future__ import annotations

import json
import socket
import struct
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _tcp_address(family: int, host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: the address words in host byte order, in hex."""
    packed = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _tcp_queues(path: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(local, remote) -> (tx_queue, rx_queue) of every TCP socket in this network namespace:
    bytes sent but not yet acknowledged by the peer, bytes received but not yet read."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    with open(path) as f:
        next(f)
        for line in f:
            fields = line.split()
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            old = out.get((fields[1], fields[2]), (0, 0))
            out[(fields[1], fields[2])] = (max(tx, old[0]), max(rx, old[1]))
    return out


def wait_until_read(conn: socket.socket, timeout: float = 10) -> bool:
    """Waits until the peer of `conn` has read every byte sent on it: none left unacknowledged on
    this side, none left unread in the peer's receive queue (both on this machine, so both are
    in /proc/net/tcp). False if that did not happen within `timeout`."""
    family = conn.family
    me = _tcp_address(family, *conn.getsockname()[:2])
    peer = _tcp_address(family, *conn.getpeername()[:2])
    path = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    deadline = time.monotonic() + timeout
    while True:
        queues = _tcp_queues(path)
        if queues.get((me, peer), (0, 0))[0] == 0 and queues.get((peer, me), (0, 0))[1] == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


class MockState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handshakes = 0
        self.requests: list[dict] = []
        # Set by a test to let a held SSE stream continue (see `hold_after_first`).
        self.release = threading.Event()
        self.released_by_timeout = False
        self.hold_after_first = False

    def record(self, handler: "Handler", body: bytes) -> None:
        with self.lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "path": handler.path,
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                    "header_list": [(k.lower(), v) for k, v in handler.headers.items()],
                    "body": body,
                }
            )

    @property
    def last(self) -> dict:
        with self.lock:
            return self.requests[-1]


def mock_usage(headers, model: str) -> dict:
    """The usage an answer reports: `x-mock-usage: PROMPT,COMPLETION[,CACHED[,REASONING]]`
    (default 5,5), and the model it names (the request's)."""
    parts = [int(x) for x in (headers.get("x-mock-usage") or "5,5").split(",")] + [0, 0]
    return {"prompt": parts[0], "completion": parts[1], "cached": parts[2], "reasoning": parts[3], "model": model}


def chat_usage(u: dict) -> dict:
    return {
        "prompt_tokens": u["prompt"], "completion_tokens": u["completion"], "total_tokens": u["prompt"] + u["completion"],
        "prompt_tokens_details": {"cached_tokens": u["cached"]},
        "completion_tokens_details": {"reasoning_tokens": u["reasoning"]},
    }


def chat_completion(content: str | None, tool_calls: list | None = None, usage: dict | None = None) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": usage["model"] if usage else "mock-model",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": chat_usage(usage) if usage else {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def chunk(delta: dict, finish: str | None = None, model: str = "mock-model") -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def response_object(output: list, status: str = "completed", usage: dict | None = None) -> dict:
    return {
        "id": "resp_mock",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": usage["model"] if usage else "mock-model",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None if status == "in_progress" else {
            "input_tokens": usage["prompt"] if usage else 5,
            "output_tokens": usage["completion"] if usage else 5,
            "total_tokens": (usage["prompt"] + usage["completion"]) if usage else 10,
            "input_tokens_details": {"cached_tokens": usage["cached"] if usage else 0},
            "output_tokens_details": {"reasoning_tokens": usage["reasoning"] if usage else 0},
        },
    }


def message_item(text: str, status: str = "completed") -> dict:
    return {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}] if text else [],
    }


def hosted_mcp_output(tool: dict, items: list) -> list:
    """What the provider answers when its model calls `search` on hosted MCP `tool`."""
    label = tool.get("server_label", "mcp")
    call = {"server_label": label, "name": "search", "arguments": '{"query":"docs"}'}
    approved = [i for i in items if isinstance(i, dict) and i.get("type") == "mcp_approval_response"]
    if tool.get("require_approval") == "always" and not approved:
        return [{"id": "mcpr_mock", "type": "mcp_approval_request", **call}]
    if approved and not approved[-1].get("approve"):
        return [message_item("The call was not approved.")]
    return [{"id": "mcp_mock", "type": "mcp_call", **call, "output": f"searched {tool.get('server_url')}", "error": None},
            message_item("The docs say hello.")]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "MockServer"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.handshakes += 1

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.headers.get("x-mock-gzip"):
            # A hostile upstream: compressed whatever the gateway asked for.
            import gzip

            data = gzip.compress(data)
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_upstream_mock")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.headers.get("x-mock-reset") == "mid-response":
            # The upstream dies half-way through a JSON answer: part of the body, then a reset.
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(data)
        self.wfile.flush()

    def _reset(self) -> None:
        """Resets the TCP connection under the gateway (RST, not a clean close), once the gateway
        has read every byte sent before it: a reset throws away whatever the peer had not read
        yet, so resetting at once would race the gateway's reads (a header it never read makes a
        502, not a response cut short)."""
        wait_until_read(self.connection)
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _sse_send(self, data: str, event: str | None = None) -> None:
        payload = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        raw = payload.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _sse_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _maybe_hold(self) -> None:
        st = self.server.state
        if st.hold_after_first:
            if not st.release.wait(timeout=10):
                st.released_by_timeout = True

    def do_GET(self) -> None:
        body = self._body()
        self.server.state.record(self, body)
        if self.path.startswith("/v1/models"):
            self._json(200, {"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})
        elif self.path.startswith("/v1/echo"):
            # Echoes what it received, including credentials: the gateway must scrub them.
            self._json(
                200,
                {"headers": dict(self.server.state.last["headers"])},
                {"x-echo-authorization": self.headers.get("authorization", "")},
            )
        elif self.path.startswith("/v1/escaped-echo"):
            # Echoes the credentials it got escaped, as serializers and templates do: every byte
            # as a JSON \\u escape, percent-encoded in a URL (body and header), as HTML references.
            auth = self.headers.get("authorization", "")
            u = "".join(f"\\u{ord(c):04x}" for c in auth)
            pct = "".join(f"%{b:02X}" for b in auth.encode())
            html = "".join(f"&#{b};" for b in auth.encode())
            raw = ('{"json": "' + u + '", "url": "https://cb.example/?k=' + pct + '", "html": "<b>' + html + '</b>"}').encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.send_header("x-echo-url", "https://cb.example/?k=" + pct)
            self.end_headers()
            self.wfile.write(raw)
        elif self.path.startswith("/v1/malformed-echo"):
            # A broken upstream that echoes the key it got inside a response head that does not
            # parse: the gateway's error message and logs must not quote it.
            auth = self.headers.get("authorization", "").encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Echo\x01: " + auth + b"\r\nbroken " + auth + b"\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
        elif self.path.startswith("/v1/slow"):
            time.sleep(float(self.headers.get("x-mock-sleep", "3")))
            self._json(200, {"slow": True})
        elif self.path.startswith("/v1/big"):
            n = int(self.path.rsplit("/", 1)[-1])
            data = b"x" * n
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(n))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json(404, {"error": {"message": f"mock has no {self.path}", "type": "invalid_request_error", "code": None}})

    def do_DELETE(self) -> None:
        """Any DELETE succeeds (a tool server's destructive call)."""
        body = self._body()
        self.server.state.record(self, body)
        self._json(200, {"deleted": self.path})

    def do_POST(self) -> None:
        body = self._body()
        self.server.state.record(self, body)
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "bad json", "type": "invalid_request_error", "code": None}})
            return
        if self.path.startswith("/v1/chat/completions"):
            self._chat(req)
        elif self.path.startswith("/v1/messages"):
            self._anthropic(req)
        elif self.path.startswith("/v1/responses"):
            self._responses(req)
        elif self.path.startswith("/v1/echo"):
            self._json(200, {"headers": self.server.state.last["headers"], "body_len": len(body)})
        elif self.path.startswith("/v1/raw"):
            self._raw(req)
        elif self.path == "/checkpoints":  # a receiver of the gateway's signed checkpoints
            self._json(200, {"received": len(body)})
        else:
            self._json(404, {"error": {"message": f"mock has no {self.path}", "type": "invalid_request_error", "code": None}})

    def _raw(self, req: dict) -> None:
        """Answers exactly `{"content_type", "chunks": [str | {"hex": ...}]}`: each chunk one HTTP
        chunk, flushed apart (a model server, or a hostile one, of any stream format)."""
        self.send_response(200)
        self.send_header("content-type", req["content_type"])
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for c in req["chunks"]:
            raw = bytes.fromhex(c["hex"]) if isinstance(c, dict) else c.encode()
            self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            self.wfile.flush()
        self._sse_end()

    # --- chat completions -------------------------------------------------
    def _chat(self, req: dict) -> None:
        messages = req.get("messages", [])
        tool_results = [m for m in messages if m.get("role") == "tool"]
        tools = req.get("tools") or []
        if tools and not tool_results:
            name, arguments = self._tool_call([t["function"]["name"] for t in tools])
            call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
            self._json(200, chat_completion(None, [call]))
            return
        text = "The tool said: " + tool_results[-1]["content"] if tool_results else "Hello from the mock upstream."
        users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
        text = self._scripted(text, users[-1]["content"] if users else "")
        usage = mock_usage(self.headers, req.get("model") if isinstance(req.get("model"), str) else "mock-model")
        if not req.get("stream"):
            self._json(200, chat_completion(text, usage=usage))
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self._sse_start()
        self._sse_send(json.dumps(chunk({"role": "assistant", "content": ""}, model=usage["model"])))
        delay = float(self.headers.get("x-mock-delay-ms", "0")) / 1000
        for i, w in enumerate(self._pieces(text)):
            if delay and i:
                time.sleep(delay)
            if i == 2 and self.headers.get("x-mock-reset") == "mid-stream":
                # The upstream dies mid-stream: the TCP connection is reset under the gateway.
                self._reset()
                return
            self._sse_send(json.dumps(chunk({"content": w}, model=usage["model"])))
            if i == 0:
                self._maybe_hold()
                if self.headers.get("x-mock-big-event"):
                    # One huge event (`x-mock-big-event: BYTES` of content in a single data line).
                    self._sse_send(json.dumps(chunk({"content": "A" * int(self.headers["x-mock-big-event"])}, model=usage["model"])))
        self._sse_send(json.dumps(chunk({}, "stop", usage["model"])))
        if include_usage:
            # As OpenAI does: one more chunk, with no choices and the usage.
            self._sse_send(json.dumps({**chunk({}), "choices": [], "model": usage["model"], "usage": chat_usage(usage)}))
        self._sse_send("[DONE]")
        self._sse_end()

    def _tool_call(self, offered: list[str]) -> tuple[str, str]:
        """The tool call the model makes: the first tool offered with `{"city": "Paris"}`, or
        `x-mock-call: {"name": N, "arguments": {...}}` (N must be among the tools offered)."""
        scripted = self.headers.get("x-mock-call")
        if scripted:
            want = json.loads(scripted)
            if want["name"] in offered:
                return want["name"], json.dumps(want.get("arguments", {}))
        return offered[0], json.dumps({"city": "Paris"})

    # --- anthropic messages -----------------------------------------------
    def _anthropic(self, req: dict) -> None:
        """Anthropic's Messages API: usage with cache reads apart from `input_tokens`
        (`x-mock-usage: INPUT,OUTPUT,CACHE_READ`)."""
        u = mock_usage(self.headers, req.get("model") or "claude-mock")
        text = self._scripted("Hello from the mock upstream.", "")
        usage = {"input_tokens": u["prompt"], "output_tokens": u["completion"], "cache_read_input_tokens": u["cached"], "cache_creation_input_tokens": 0}
        message = {"id": "msg_mock", "type": "message", "role": "assistant", "model": u["model"], "stop_reason": "end_turn",
                   "content": [{"type": "text", "text": text}], "usage": usage}
        if not req.get("stream"):
            self._json(200, message)
            return
        self._sse_start()
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        self._sse_send(json.dumps({"type": "message_start", "message": start}), "message_start")
        self._sse_send(json.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), "content_block_start")
        for w in self._pieces(text):
            self._sse_send(json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}), "content_block_delta")
        self._sse_send(json.dumps({"type": "content_block_stop", "index": 0}), "content_block_stop")
        self._sse_send(json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": u["completion"]}}), "message_delta")
        self._sse_send(json.dumps({"type": "message_stop"}), "message_stop")
        self._sse_end()

    def _scripted(self, default: str, prompt: str) -> str:
        """`x-mock-echo: 1` answers with the prompt; `x-mock-say: TEXT` answers TEXT."""
        if self.headers.get("x-mock-echo"):
            return "You said: " + prompt
        return self.headers.get("x-mock-say") or default

    def _pieces(self, text: str) -> list[str]:
        """Stream pieces: `x-mock-split: N` cuts every N characters, else word by word."""
        n = int(self.headers.get("x-mock-split", "0"))
        if n > 0:
            return [text[i : i + n] for i in range(0, len(text), n)]
        words = text.split(" ")
        return [(" " if i else "") + w for i, w in enumerate(words)]

    # --- responses API ----------------------------------------------------
    def _responses(self, req: dict) -> None:
        self._usage = mock_usage(self.headers, req.get("model") if isinstance(req.get("model"), str) else "mock-model")
        items = req.get("input")
        items = items if isinstance(items, list) else [{"role": "user", "content": items}]
        outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
        tools = [t for t in (req.get("tools") or []) if t.get("type") == "function"]
        # Hosted MCP tools as the provider runs them: a call asks first where `require_approval`
        # is "always", and runs once an `mcp_approval_response` approves it (non-streaming only).
        hosted = [t for t in (req.get("tools") or []) if isinstance(t, dict) and t.get("type") == "mcp"]
        if hosted and not req.get("stream"):
            self._json(200, response_object(hosted_mcp_output(hosted[0], items)))
            return
        if tools and not outputs:
            name, arguments = self._tool_call([t["name"] for t in tools])
            call = {
                "id": "fc_mock",
                "type": "function_call",
                "call_id": "call_1",
                "name": name,
                "arguments": arguments,
                "status": "completed",
            }
            if req.get("stream"):
                self._responses_stream([call], "")
            else:
                self._json(200, response_object([call]))
            return
        text = "The tool said: " + outputs[-1]["output"] if outputs else "Hello from the mock upstream."
        prompts = [i.get("content") for i in items if isinstance(i, dict) and i.get("role") == "user" and isinstance(i.get("content"), str)]
        text = self._scripted(text, prompts[-1] if prompts else "")
        if req.get("stream"):
            self._responses_stream([], text)
        else:
            self._json(200, response_object([message_item(text)], usage=self._usage))

    def _responses_stream(self, calls: list, text: str) -> None:
        self._sse_start()
        seq = 0

        def send(ev: dict) -> None:
            nonlocal seq
            ev["sequence_number"] = seq
            seq += 1
            self._sse_send(json.dumps(ev), ev["type"])

        send({"type": "response.created", "response": response_object([], "in_progress", usage=self._usage)})
        if calls:
            for i, c in enumerate(calls):
                send({"type": "response.output_item.added", "output_index": i, "item": c})
                send({"type": "response.output_item.done", "output_index": i, "item": c})
            send({"type": "response.completed", "response": response_object(calls)})
            self._sse_end()
            return
        send({"type": "response.output_item.added", "output_index": 0, "item": message_item("", "in_progress")})
        part = {"type": "output_text", "text": "", "annotations": []}
        send({"type": "response.content_part.added", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": part})
        for i, w in enumerate(self._pieces(text)):
            send({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": w, "logprobs": []})
            if i == 0:
                self._maybe_hold()
        send({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text, "logprobs": []})
        send({"type": "response.content_part.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {**part, "text": text}})
        send({"type": "response.output_item.done", "output_index": 0, "item": message_item(text)})
        send({"type": "response.completed", "response": response_object([message_item(text)], usage=self._usage)})
        self._sse_end()


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ssl_ctx: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.state = MockState()
        self.ssl_ctx = ssl_ctx

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_ctx is not None:
            # The handshake runs in the handler thread (do_handshake_on_connect on first I/O).
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=True)
        return sock, addr

    def handle_error(self, request, client_address) -> None:  # handshake refusals are expected in tests
        pass

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "MockServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
