"""End-to-end: agent --TLS--> agentgate --TLS--> mock OpenAI upstream, with a verifying client."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from gateway_driver import Gateway
from gwconfig import AGENT_TOKEN, ROUTE_KEY, route


def test_models_through_both_tls_legs(gateway, mock):
    with gateway.client() as c:
        r = c.get("/v1/models")
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["id"] == "mock-model"
    assert len(r.headers["x-request-id"]) == 32
    assert r.headers["x-upstream-request-id"] == "req_upstream_mock"


def test_credentials_injected_and_client_credentials_stripped(gateway, mock):
    with gateway.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={
                "Authorization": f"Bearer {AGENT_TOKEN}",
                "X-Api-Key": "agent-x-api-key",
                "api-key": "agent-azure-key",
                "Cookie": "session=agent-cookie",
                "Proxy-Authorization": "Basic agent-proxy",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "must-not-pass",
                "X-Custom": "kept",
            },
        )
    assert r.status_code == 200, r.text
    seen = mock.state.last
    auth = [v for k, v in seen["header_list"] if k == "authorization"]
    assert auth == [f"Bearer {ROUTE_KEY}"], "upstream must see only the route's key"
    assert AGENT_TOKEN not in json.dumps(seen["header_list"]), "the caller's token reached the upstream"
    for h in ("x-api-key", "api-key", "cookie", "proxy-authorization", "x-hop"):
        assert h not in seen["headers"], f"{h} reached the upstream"
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["host"] == f"127.0.0.1:{mock.port}"
    assert seen["headers"]["x-request-id"] == r.headers["x-request-id"]
    assert ROUTE_KEY not in r.text and ROUTE_KEY not in str(r.headers)


def test_route_key_echoed_by_upstream_never_reaches_the_client(gateway, mock):
    with gateway.client() as c:
        r = c.get("/v1/echo")
    assert r.status_code == 200
    # The mock echoes the Authorization header in a response header and in the body.
    assert ROUTE_KEY not in r.text
    assert ROUTE_KEY not in json.dumps(dict(r.headers))
    assert r.json()["headers"]["authorization"] == "Bearer " + "*" * len(ROUTE_KEY)
    assert r.headers["x-echo-authorization"] == "Bearer " + "*" * len(ROUTE_KEY)
    # Nor the logs, nor the metrics.
    assert ROUTE_KEY not in gateway.stdout_path.read_text()
    assert ROUTE_KEY not in gateway.stderr_path.read_text()
    assert ROUTE_KEY not in gateway.metrics()


def test_sse_events_arrive_incrementally(gateway, mock):
    """The mock sends the first content event, then waits until the client has it before
    sending the rest: a gateway that buffered the stream would deadlock into the mock's timeout."""
    mock.state.hold_after_first = True
    events = []
    with gateway.client() as c:
        with c.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 2:  # role chunk, then the first word
                    mock.state.release.set()
    assert not mock.state.released_by_timeout, "the first events were held back until the stream ended"
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "Hello from the mock upstream."


def test_sequential_requests_share_one_upstream_handshake(gateway, mock):
    n = 20
    for i in range(n):
        # A new client connection each time: pooling must work across agent connections too.
        with gateway.client() as c:
            assert c.get("/v1/models").status_code == 200
    assert len(mock.state.requests) == n
    assert mock.state.handshakes == 1
    assert gateway.metric("agentgate_upstream_connections_total", reused="true") == n - 1
    assert gateway.metric("agentgate_upstream_connections_total", reused="false") == 1


def test_http2_from_the_agent(gateway, mock):
    with gateway.client(http2=True) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."


def test_large_request_and_response_bodies(gateway, mock):
    big = "x" * (3 << 20)
    with gateway.client() as c:
        payload = json.dumps({"blob": big}).encode()
        r = c.post("/v1/echo", content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert r.json()["body_len"] == len(payload)
        r = c.get(f"/v1/big/{5 << 20}")
        assert r.status_code == 200 and len(r.content) == 5 << 20


def test_session_log_line_per_exchange(gateway, mock):
    with gateway.client() as c:
        r = c.get("/v1/models")
    rid = r.headers["x-request-id"]
    # Lines are written off the request path; a graceful stop (SIGTERM) must flush them all.
    gateway.stop()
    assert gateway.proc.returncode == 0, gateway.stderr_path.read_text()
    lines = [l for l in gateway.session_lines() if l.get("request_id") == rid]
    assert len(lines) == 1, gateway.session_lines()
    rec = lines[0]
    assert rec["route"] == "mock" and rec["method"] == "GET" and rec["path"] == "/v1/models"
    assert rec["status"] == 200
    assert rec["duration_ms"] > 0 and rec["upstream_ttfb_ms"] > 0
    assert rec["response_bytes"] == len(r.content)
    assert rec["downstream_tls"]["version"] in ("TLSv1.2", "TLSv1.3") and rec["downstream_tls"]["cipher"]
    assert rec["upstream_tls"]["version"] in ("TLSv1.2", "TLSv1.3") and rec["upstream_tls"]["cipher"]


def test_metrics_and_probes(gateway, mock):
    with gateway.client() as c:
        c.get("/v1/models")
        c.get("/nope")
    assert httpx.get(f"http://127.0.0.1:{gateway.admin_port}/healthz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{gateway.admin_port}/readyz").status_code == 200
    text = gateway.metrics()
    for name in (
        "agentgate_requests_total",
        "agentgate_request_duration_seconds_bucket",
        "agentgate_upstream_ttfb_seconds_bucket",
        "agentgate_request_bytes_total",
        "agentgate_response_bytes_total",
        "agentgate_upstream_connections_total",
        "agentgate_tls_handshake_failures_total",
        "agentgate_requests_in_flight",
    ):
        assert name in text, name
    # Both exchanges are over (and counted) once the gateway has logged them, just after answering.
    assert gateway.wait_metric("agentgate_requests_in_flight", 0) == 0  # all answered
    assert gateway.wait_metric("agentgate_requests_total", lambda v: v >= 1, route="mock", status_class="2xx") >= 1
    assert gateway.wait_metric("agentgate_requests_total", 1, route="none", status_class="4xx") == 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_downstream_handshake_failures_are_counted_and_old_tls_refused(gateway):
    import socket
    import ssl

    # The driver's readiness probe completes its handshake: the count holds no failure of its own.
    before = gateway.metric("agentgate_tls_handshake_failures_total", leg="downstream")
    # Plaintext HTTP on the TLS port.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
    # TLS 1.1 is below the minimum.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(gateway.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s, server_hostname="127.0.0.1")
    # Counted when the gateway logs each failure, after the client saw it fail.
    assert gateway.wait_metric("agentgate_tls_handshake_failures_total", before + 2, leg="downstream") == before + 2
    with gateway.client() as c:
        assert c.get("/v1/models").status_code == 200


def test_generated_ca_path_is_printed_and_reused_across_restarts(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    ca = gw.ca_file
    assert str(ca) in gw.stderr_path.read_text(), "the CA to trust must be printed"
    first = ca.read_bytes()
    leaf = (ca.parent / "server.pem").read_bytes()
    gw.stop()
    # Same state directory, fresh process: the same CA and leaf serve again.
    again = Gateway(gw.config_path.read_text(), gw.state_dir, gw.port, gw.admin_port)
    try:
        assert ca.read_bytes() == first
        assert (ca.parent / "server.pem").read_bytes() == leaf
        with again.client() as c:
            assert c.get("/v1/models").status_code == 200
    finally:
        again.stop()
