"""An HTTP/2 upstream that sends GOAWAY: after answering (graceful: "no new streams here"), or
instead of answering a stream it never processed (its id is above GOAWAY's last_stream_id). The
gateway must move to a new connection, never hang, never hand the agent a torn answer, and keep
serving; a stream the upstream says it did not process is safe to send again (RFC 9113 §6.8)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from gateway_driver import CHAT
from gwconfig import AGENT_TOKEN, REDACT_POLICY, route
from net import server_ctx


class GoawayUpstream:
    """A TLS HTTP/2 server speaking just enough of the OpenAI API. `mode`:
    `graceful` — GOAWAY(last_stream_id = the stream just answered) after `per_conn` streams;
    `refuse` — the second stream on a connection is not processed: GOAWAY(last_stream_id = the
    first) and the connection closes."""

    def __init__(self, ca, mode: str, per_conn: int = 1) -> None:
        self.mode, self.per_conn = mode, per_conn
        self.ctx = server_ctx(ca, "127.0.0.1")
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = self.answered = self.refused = 0
        self.request_headers: list[list] = []  # as h2 decoded them (HeaderTuple or NeverIndexedHeaderTuple)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        with self.lock:
            self.connections += 1
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        done = 0
        try:
            while True:
                data = tls.recv(65535)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        with self.lock:
                            self.request_headers.append(list(ev.headers))
                    if isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        done += 1
                        if self.mode == "refuse" and done == 2:
                            conn.close_connection(error_code=0, last_stream_id=ev.stream_id - 2)
                            tls.sendall(conn.data_to_send())
                            with self.lock:
                                self.refused += 1
                            return self._drain(tls)
                        self._answer(conn, ev.stream_id)
                        if self.mode == "graceful" and done == self.per_conn:
                            conn.close_connection(error_code=0, last_stream_id=ev.stream_id)
                            tls.sendall(conn.data_to_send())
                            return self._drain(tls)
                tls.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            try:
                tls.close()
            except OSError:
                pass

    @staticmethod
    def _drain(tls) -> None:
        """After GOAWAY: read (and drop) until the client closes, as a server would, so closing
        does not reset the connection under data the client has not read yet."""
        tls.settimeout(3)
        try:
            while tls.recv(65535):
                pass
        except OSError:
            pass

    def _answer(self, conn, stream_id: int) -> None:
        with self.lock:
            self.answered += 1
            n = self.answered
        body = json.dumps({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {n}"}, "finish_reason": "stop"}],
        }).encode()
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(body)))])
        conn.send_data(stream_id, body, end_stream=True)


@pytest.fixture
def upstream(upstream_ca, request):
    srv = GoawayUpstream(upstream_ca, *request.param)
    yield srv
    srv.stop()


def chat(c) -> tuple[int, dict]:
    r = c.post("/v1/chat/completions", json=CHAT)
    return r.status_code, r.json()


@pytest.mark.parametrize("upstream", [("graceful", 1), ("graceful", 3)], indirect=True, ids=["every-stream", "every-3rd"])
def test_graceful_goaway_moves_to_a_new_connection_without_failing_anyone(start_gateway, upstream, upstream_ca_file):
    gw = start_gateway(route("h2", "/v1/", f"https://127.0.0.1:{upstream.port}", upstream_ca_file))
    new0 = gw.metric("agentgate_upstream_connections_total", reused="false")
    with gw.client() as c:
        for i in range(12):
            status, body = chat(c)
            assert status == 200, body
            assert body["choices"][0]["message"]["content"].startswith("answer ")

    def agent(_: int) -> list[int]:
        with gw.client() as c:
            return [chat(c)[0] for _ in range(6)]

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for batch in pool.map(agent, range(4)) for s in batch]
    assert statuses == [200] * 24
    assert upstream.answered == 36
    # A new upstream connection at least every `per_conn` requests: GOAWAY was obeyed.
    assert upstream.connections >= 36 // upstream.per_conn
    assert gw.metric("agentgate_upstream_connections_total", reused="false") - new0 >= 36 // upstream.per_conn


@pytest.mark.parametrize("upstream", [("refuse",)], indirect=True, ids=["refused-stream"])
@pytest.mark.parametrize("inspected", [False, True], ids=["streamed-body", "inspected-body"])
def test_a_stream_the_upstream_never_processed_is_sent_again(start_gateway, upstream, upstream_ca_file, inspected):
    masking = {"masking": "default"} if inspected else {}
    gw = start_gateway(route("h2", "/v1/", f"https://127.0.0.1:{upstream.port}", upstream_ca_file, **masking),
                       extra=REDACT_POLICY if inspected else None)
    with gw.client() as c:
        outcomes = [chat(c) for _ in range(10)]
    # Every second stream on a connection is refused (GOAWAY below it): the agents' POSTs are
    # sent again on a new connection (RFC 9113 §8.7: it was never processed) and all answered.
    assert upstream.refused >= 4
    assert [s for s, _ in outcomes] == [200] * 10, outcomes
    assert all(b["choices"][0]["message"]["content"].startswith("answer ") for _, b in outcomes)
    assert upstream.answered == 10
    assert gw.wait_metric("agentgate_requests_total", 10, route="h2", status_class="2xx") == 10
    assert gw.metric("agentgate_errors_total", route="h2") == 0  # all ten logged by now


def h2_exchange(gw, path: str, body: bytes) -> list:
    """One POST over HTTP/2 to the agent listener with the h2 library as client; the response
    headers as h2 decoded them (HeaderTuple or NeverIndexedHeaderTuple)."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=10), server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", path),
                              ("authorization", f"Bearer {AGENT_TOKEN}"), ("content-type", "application/json"),
                              ("content-length", str(len(body)))])
        conn.send_data(1, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        headers, ended = None, False
        for _ in range(200):
            data = tls.recv(65535)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = list(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            tls.sendall(conn.data_to_send())
            if ended:
                break
        assert headers is not None and ended, "no whole response"
        return headers


@pytest.mark.parametrize("upstream", [("graceful", 1000)], indirect=True, ids=["h2-upstream"])
def test_per_request_ids_and_keys_are_never_indexed_in_hpack(start_gateway, upstream, upstream_ca_file):
    """RFC 7541 §7.1.3: the injected key must never enter an HPACK dynamic table (compression
    side channels), and a value unique to each request (x-request-id) would only churn it. Both
    legs: the agent's HTTP/2 response and the gateway's HTTP/2 request upstream."""
    gw = start_gateway(route("h2", "/v1/", f"https://127.0.0.1:{upstream.port}", upstream_ca_file))
    body = json.dumps(CHAT).encode()
    for _ in range(3):
        got = h2_exchange(gw, "/v1/chat/completions", body)
        by_name = {h[0]: h for h in got}
        assert by_name[b":status"][1] == b"200", got
        assert isinstance(by_name[b"x-request-id"], hpack.NeverIndexedHeaderTuple), got
        assert not isinstance(by_name[b"content-type"], hpack.NeverIndexedHeaderTuple), "ordinary headers stay indexable"
    assert len(upstream.request_headers) == 3
    for sent in upstream.request_headers:
        by_name = {h[0]: h for h in sent}
        assert isinstance(by_name[b"x-request-id"], hpack.NeverIndexedHeaderTuple), sent
        assert isinstance(by_name[b"authorization"], hpack.NeverIndexedHeaderTuple), sent
        assert by_name[b"authorization"][1] != f"Bearer {AGENT_TOKEN}".encode(), "the route key replaced the agent's"
