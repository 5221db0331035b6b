"""Red-team tests for the decided body forwarded from the agent's own session (retry buffer,
`request_body_filter`) on 4f3f5e2: no byte of the agent's original body reaches the upstream,
what reaches it is the decided (masked) body whole, and nothing hangs."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from gwconfig import AGENT_TOKEN, REDACT_POLICY, route
from net import request_head as head
from test_upstream_protocols import rust_mock  # noqa: F401 (a fixture)

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture
def masked(start_gateway, mock, upstream_ca_file):
    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, masking="default"),
                         extra=REDACT_POLICY)


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def h2_request(gw, path: str, headers: list[tuple[str, str]], frames: list, timeout: float = 15) -> tuple[dict, bytes, str]:
    """One HTTP/2 stream: `frames` is a list of ("data", bytes, end) / ("trailers", [(k, v)]).
    Returns (response headers, body, how it ended: "ended", "reset", "closed", "timeout")."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                                            normalize_outbound_headers=False))
        conn.initiate_connection()
        req = [(":method", "POST"), (":path", path), (":scheme", "https"), (":authority", "127.0.0.1"),
               ("authorization", f"Bearer {AGENT_TOKEN}"), *headers]
        conn.send_headers(1, req)
        for f in frames:
            if f[0] == "data":
                conn.send_data(1, f[1], end_stream=f[2])
            else:
                conn.send_headers(1, f[1], end_stream=True)
        s.sendall(conn.data_to_send())
        resp_headers, data, how = {}, b"", "closed"
        deadline = time.monotonic() + timeout
        while how == "closed" and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    resp_headers = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.StreamEnded):
                    how = "ended"
                elif isinstance(ev, h2.events.StreamReset):
                    how = "reset"
            s.sendall(conn.data_to_send())
        return resp_headers, data, how


def test_http2_request_trailers_do_not_leave_the_upstream_waiting_for_the_decided_body(masked, mock):
    """On 4f3f5e2 an HTTP/2 agent that ends its body with a trailers HEADERS frame got no answer
    (held until the upstream's read_timeout): after the DATA frames h2's stream is not at its end
    while the trailers wait unread, so Pingora hands the retry buffer to `request_body_filter`
    with end_of_stream=false, the filter turned it into `None` (end of body) and the upstream got
    `Content-Length: 96` and no body byte (PREMATURE body end, an upstream left waiting)."""
    body = chat_body(f"my key is {KEY}")
    h, data, how = h2_request(masked, "/v1/chat/completions",
                              [("content-type", "application/json"), ("content-length", str(len(body)))],
                              [("data", body, False), ("trailers", [("x-trailer", "1")])], timeout=10)
    assert how == "ended" and h.get(":status") == "200", (h, data[:300], how)
    sent = mock.state.last
    assert KEY not in sent["body"].decode() and b"REDACTED" in sent["body"], sent["body"]
    assert int(sent["headers"]["content-length"]) == len(sent["body"]), sent


def test_http2_request_trailers_on_an_approval_route_do_not_send_an_empty_body_once_approved(start_gateway, mock, upstream_ca_file):
    """On 4f3f5e2 the same request on a route with an approval rule and no masking (the decided
    body is the agent's own): once approved, the upstream got `Content-Length: 191` and no body
    (the mock, reading to the end of the connection the gateway closed, served it as an empty
    request); the agent got no answer."""
    import threading

    from gwconfig import people_identity
    from test_approvals import CHAT, PEOPLE, TOOLS_BODY, decide, rules, wait_pending

    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
                       identity=people_identity(PEOPLE), extra=rules(), admin={"auditors": ["security-oncall"]})
    body = json.dumps(TOOLS_BODY).encode()
    out: dict = {}

    def call() -> None:
        out["r"] = h2_request(gw, CHAT, [("content-type", "application/json")],
                              [("data", body, False), ("trailers", [("x-trailer", "1")])], timeout=10)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    aid = wait_pending(gw)[0]["id"]
    assert mock.state.requests == []
    decide(gw, "alice", aid, "approve")
    t.join(20)
    h, data, how = out["r"]
    assert how == "ended" and h.get(":status") == "200", (h, data[:300], how)
    assert [r["body"] for r in mock.state.requests] == [body], [(r["headers"].get("content-length"), r["body"][:80]) for r in mock.state.requests]


def test_http2_request_trailers_through_an_http2_upstream_are_answered(start_gateway, upstream_ca_file, rust_mock):
    """On 4f3f5e2, with an HTTP/2 upstream, the same request got a 502 (`upstream_protocol_error`):
    Pingora's HTTP/2 leg ended the upstream stream with no DATA under `content-length: 96`."""
    port = rust_mock()
    gw = start_gateway(route("rust", "/v1/", f"https://127.0.0.1:{port}", upstream_ca_file, masking="default",
                             upstream={"http2": True}), extra=REDACT_POLICY)
    body = chat_body(f"my key is {KEY}")
    h, data, how = h2_request(gw, "/v1/chat/completions", [("content-type", "application/json")],
                              [("data", body, False), ("trailers", [("x-trailer", "1")])], timeout=10)
    assert how == "ended" and h.get(":status") == "200", (h, data[:300], how)


# --- what held on 4f3f5e2 (kept as regression tests) -------------------------------------------

import threading  # noqa: E402

from net import server_ctx  # noqa: E402


class Wire:
    """TLS upstream recording every byte per connection; answers each request head with 200
    (reading a Content-Length body), keep-alive."""
    def __init__(self, ca):
        self.ctx = server_ctx(ca)
        self.sock = socket.socket(); self.sock.bind(("127.0.0.1", 0)); self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try: c, _ = self.sock.accept()
            except OSError: return
            rec = bytearray(); self.conns.append(rec)
            threading.Thread(target=self.conn, args=(c, rec), daemon=True).start()

    def conn(self, c, rec):
        try:
            s = self.ctx.wrap_socket(c, server_side=True); s.settimeout(5)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d: return
                    rec += d; buf += d
                h, _, buf = buf.partition(b"\r\n\r\n")
                lines = h.decode("latin1").split("\r\n")
                hd = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
                cl = int(hd.get("content-length", "0"))
                while len(buf) < cl:
                    d = s.recv(65536)
                    if not d: return
                    rec += d; buf += d
                buf = buf[cl:]
                out = b'{"ok":true}'
                if lines[0].startswith("HEAD"):
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n")
                else:
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n" + out)
        except Exception:
            pass

    def all(self):
        return b"".join(bytes(c) for c in self.conns)


def chunked(body, size, ext=b"", trailer=b""):
    out = b""
    for i in range(0, len(body), size):
        c = body[i:i+size]
        out += f"{len(c):x}".encode() + ext + b"\r\n" + c + b"\r\n"
    return out + b"0\r\n" + trailer + b"\r\n"



def test_no_byte_of_the_original_body_reaches_the_wire_whatever_the_method_or_framing(start_gateway, upstream_ca, upstream_ca_file):
    """Every method (HEAD, OPTIONS and unknown ones included), Content-Length and chunked bodies
    (extensions, a trailer carrying the key), Expect: 100-continue, pipelining, bytes after
    `Content-Length: 0`, an upgrade request with bytes after its body, and HTTP/2 bodies split
    across DATA frames: the key is in no byte the upstream reads, and each request's framing
    holds (the upstream parses every one)."""
    up = Wire(upstream_ca)
    gw = start_gateway(route("w", "/v1/", f"https://127.0.0.1:{up.port}", upstream_ca_file, masking="default"), extra=REDACT_POLICY)
    b = chat_body(f"my key is {KEY}")
    reqs = {}
    for m in ("POST", "GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "FOO"):
        reqs[m + "-cl"] = head(m, "/v1/x", "Content-Type: application/json", f"Content-Length: {len(b)}") + b
        reqs[m + "-chunked"] = head(m, "/v1/x", "Content-Type: application/json", "Transfer-Encoding: chunked") + chunked(b, 5, b";x=y", b"X-T: " + KEY.encode() + b"\r\n")
    reqs["text"] = head("POST", "/v1/x", "Content-Type: text/plain", f"Content-Length: {len(b)}") + b
    reqs["expect"] = head("POST", "/v1/x", "Expect: 100-continue", f"Content-Length: {len(b)}") + b
    reqs["pipelined"] = head("POST", "/v1/x", f"Content-Length: {len(b)}") + b + head("POST", "/v1/x", f"Content-Length: {len(b)}") + b
    reqs["cl0-then-bytes"] = head("POST", "/v1/x", "Content-Length: 0") + KEY.encode() + b"\r\n\r\n"
    reqs["upgrade"] = head("POST", "/v1/x", "Upgrade: websocket", "Connection: Upgrade", f"Content-Length: {len(b)}") + b + KEY.encode()
    for name, r in reqs.items():
        with gw.connect() as s:
            s.sendall(r)
            s.settimeout(1)
            out = b""
            try:
                while d := s.recv(65536):
                    out += d
            except OSError:
                pass
        assert status_of(out) == 200, (name, out[:200])
    for frames in ([("data", b, True)], [("data", b[:3], False), ("data", b[3:], False), ("data", b"", True)]):
        h, _, how = h2_request(gw, "/v1/x", [("content-type", "application/json")], frames, timeout=5)
        assert how == "ended" and h.get(":status") == "200", h
    assert KEY.encode() not in up.all()


class Flaky:
    """TLS upstream: answers the first request on each connection (keep-alive), and on a later
    request of the same connection reads the head and closes (a pooled connection gone)."""
    def __init__(self, ca, mode="close-after-head"):
        self.ctx = server_ctx(ca)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.got = []
        self.mode = mode
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        try:
            s = self.ctx.wrap_socket(c, server_side=True)
            s.settimeout(5)
            buf = b""
            n = 0
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                h, _, buf = buf.partition(b"\r\n\r\n")
                lines = h.decode().split("\r\n")
                hd = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
                n += 1
                if n >= 2:
                    self.got.append(("dropped", lines[0], hd.get("content-length"), buf))
                    s.close()
                    return
                cl = int(hd.get("content-length", "0"))
                t = time.monotonic()
                while len(buf) < cl and time.monotonic() - t < 5:
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
                body, buf = buf[:cl], buf[cl:]
                self.got.append(("served", lines[0], hd.get("content-length"), body))
                out = b'{"ok":true}'
                s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out) + out)
        except Exception as e:
            self.got.append(("error", repr(e)))



def test_a_retry_on_a_fresh_connection_sends_the_decided_body_again(start_gateway, upstream_ca, upstream_ca_file):
    """A pooled upstream connection closed under an idempotent request: Pingora sends it again
    from its retry buffer (the agent's bytes), and the decided body goes instead each time."""
    up = Flaky(upstream_ca)
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{up.port}", upstream_ca_file, masking="default"), extra=REDACT_POLICY)
    b = chat_body(f"my key is {KEY}")
    for m in ("GET", "PUT", "DELETE"):
        resp = gw.raw(head(m, "/v1/x", "Connection: close", "Content-Type: application/json", f"Content-Length: {len(b)}") + b)
        assert status_of(resp) == 200, resp[:200]
        time.sleep(0.2)
    assert [g[0] for g in up.got] == ["served", "dropped", "served", "dropped", "served"], up.got
    for g in up.got:
        assert KEY.encode() not in g[3] and (g[0] == "dropped" or b"REDACTED" in g[3]), g
