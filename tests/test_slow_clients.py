"""Slow and idle agents (slowloris): with `server.client_timeout: 2s` a stalled request body gets
408 `client_timeout` (and nothing reaches the upstream of an inspected route), a kept-alive
connection is closed after 2 s idle or 2 s into a stalled next header, and a crowd of agents
holding first request headers open neither starves the others nor stays forever (Pingora bounds
each read of a first header at 60 s)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time

import pytest

from conftest import AGENT_TOKEN, DEFAULT_IDENTITY, route_yaml

POLICY = (
    "masking:\n  policies:\n    default:\n"
    "      request: { secrets: redact, pii: redact }\n"
    "      response: { secrets: redact, pii: redact }\n"
)


@pytest.fixture
def gw(start_gateway, mock, upstream_ca_file):
    routes = route_yaml("masked", "/v1/chat/", f"https://127.0.0.1:{mock.port}", upstream_ca_file) + "    masking: default\n"
    routes += route_yaml("plain", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file)
    return start_gateway(routes, server_extra=", client_timeout: 2s", identity=DEFAULT_IDENTITY + POLICY)


def connect(gw, timeout: float = 15) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def read_until_closed(tls: ssl.SSLSocket) -> bytes:
    out = b""
    while True:
        try:
            data = tls.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return out


def head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {AGENT_TOKEN}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def still_serving(gw) -> None:
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."


@pytest.mark.parametrize("path,route", [("/v1/chat/completions", "masked"), ("/v1/responses", "plain")])
def test_a_stalled_body_gets_408_and_no_partial_request_is_answered_upstream(gw, mock, path, route):
    still_serving(gw)
    seen = len(mock.state.requests)
    errors = gw.metric("agentgate_errors_total", route=route, kind="client_timeout")
    answered_4xx = gw.metric("agentgate_requests_total", route=route, status_class="4xx")
    body = json.dumps({"model": "m", "input": "x" * 900, "messages": [{"role": "user", "content": "y"}]}).encode()
    with connect(gw) as tls:
        tls.sendall(head("POST", path, "Content-Type: application/json", f"Content-Length: {len(body)}") + body[:100])
        t0 = time.monotonic()
        resp = read_until_closed(tls)
        waited = time.monotonic() - t0
    # Cut by the 2 s bound (not the 60 s default, not left open).
    assert 1.5 <= waited < 12, waited
    assert resp.startswith(b"HTTP/1.1 408 "), resp[:300]
    err = json.loads(resp.partition(b"\r\n\r\n")[2])["error"]
    assert err["code"] == "client_timeout" and "too slowly" in err["message"], err
    assert gw.metric("agentgate_errors_total", route=route, kind="client_timeout") == errors + 1
    assert gw.metric("agentgate_requests_total", route=route, status_class="4xx") == answered_4xx + 1
    # The upstream never got a whole request out of it: nothing at all when the body is
    # inspected (read whole before anything is sent), at most an incomplete upload otherwise.
    new = mock.state.requests[seen:]
    if route == "masked":
        assert new == [], new
    else:
        assert all(len(q["body"]) < len(body) for q in new), [len(q["body"]) for q in new]
    still_serving(gw)


def test_kept_alive_connections_are_closed_when_idle_or_stalled_in_the_next_header(gw):
    request = head("GET", "/v1/models")
    for stall_with in (b"", b"GET /v1/mod"):
        with connect(gw) as tls:
            tls.sendall(request)
            first = b""
            while b"\r\n\r\n" not in first:
                first += tls.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 "), first[:200]
            length = int(next(l for l in first.split(b"\r\n") if l.lower().startswith(b"content-length:")).split(b":")[1])
            rest = first.partition(b"\r\n\r\n")[2]
            while len(rest) < length:
                rest += tls.recv(65536)
            # The connection was kept alive; now it idles (or stalls mid-header).
            if stall_with:
                tls.sendall(stall_with)
            t0 = time.monotonic()
            tail = read_until_closed(tls)
            waited = time.monotonic() - t0
        assert tail == b"", tail[:200]
        assert 1.5 <= waited < 12, (stall_with, waited)


def test_a_crowd_holding_first_headers_open_starves_no_one_and_is_cut(gw):
    still_serving(gw)
    pid = gw.proc.pid
    base = fds(pid)
    crowd = []
    for _ in range(150):
        tls = connect(gw, timeout=90)
        tls.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        crowd.append(tls)
    # Trickle a header byte now and then: each read resets Pingora's 60 s per-read bound.
    for _ in range(3):
        for tls in crowd:
            tls.sendall(b"X")
        time.sleep(0.5)
    # They are all held open by the gateway (the base may include a pooled or kept-alive
    # connection that closes meanwhile: the same slack of 4 as the check below).
    assert fds(pid) >= base + len(crowd) - 4, (base, fds(pid))
    # Everyone else is served while the crowd holds its connections.
    for _ in range(20):
        still_serving(gw)
    # Then they go silent: the gateway closes every one of them (60 s per read of a first
    # request header, Pingora's fixed bound), answering none of them with a request.
    deadline = time.monotonic() + 80
    closed = 0
    for tls in crowd:
        tls.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = read_until_closed(tls)
        except socket.timeout:
            data = None
        if data is not None:
            assert not data.startswith(b"HTTP/1.1 200"), data[:200]
            closed += 1
        tls.close()
    assert closed == len(crowd)
    end = time.monotonic() + 10
    while fds(pid) > base + 4 and time.monotonic() < end:
        time.sleep(0.2)
    assert fds(pid) <= base + 4, (base, fds(pid))
    still_serving(gw)
