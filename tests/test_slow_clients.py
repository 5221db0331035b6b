"""Slow and idle agents (slowloris): with `server.client_timeout: 2s` a stalled request body gets
408 `client_timeout` (and nothing reaches the upstream of an inspected route), a kept-alive
connection is closed after 2 s idle or 2 s into a stalled next header, and a crowd of agents
holding first request headers open neither starves the others nor stays forever (Pingora bounds
each read of a first header at 60 s)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from gateway_driver import assert_chat_served, open_fds
from gwconfig import REDACT_POLICY, masked_chat_routes
from net import read_until_closed
from net import request_head as head


@pytest.fixture
def gw(start_gateway, mock, upstream_ca_file):
    return start_gateway(masked_chat_routes(mock.port, upstream_ca_file), server={"client_timeout": "2s"}, extra=REDACT_POLICY)


@pytest.mark.parametrize("path,route", [("/v1/chat/completions", "masked"), ("/v1/responses", "plain")])
def test_a_stalled_body_gets_408_and_no_partial_request_is_answered_upstream(gw, mock, path, route):
    assert_chat_served(gw)
    seen = len(mock.state.requests)
    errors = gw.metric("agentgate_errors_total", route=route, kind="client_timeout")
    answered_4xx = gw.metric("agentgate_requests_total", route=route, status_class="4xx")
    body = json.dumps({"model": "m", "input": "x" * 900, "messages": [{"role": "user", "content": "y"}]}).encode()
    with gw.connect(15) as tls:
        tls.sendall(head("POST", path, "Content-Type: application/json", f"Content-Length: {len(body)}") + body[:100])
        t0 = time.monotonic()
        resp = read_until_closed(tls)
        waited = time.monotonic() - t0
    # Cut by the 2 s bound (not the 60 s default, not left open).
    assert 1.5 <= waited < 12, waited
    assert resp.startswith(b"HTTP/1.1 408 "), resp[:300]
    err = json.loads(resp.partition(b"\r\n\r\n")[2])["error"]
    assert err["code"] == "client_timeout" and "too slowly" in err["message"], err
    assert gw.wait_metric("agentgate_errors_total", errors + 1, route=route, kind="client_timeout") == errors + 1
    assert gw.wait_metric("agentgate_requests_total", answered_4xx + 1, route=route, status_class="4xx") == answered_4xx + 1
    # The upstream never got a whole request out of it: nothing at all when the body is
    # inspected (read whole before anything is sent), at most an incomplete upload otherwise.
    new = mock.state.requests[seen:]
    if route == "masked":
        assert new == [], new
    else:
        assert all(len(q["body"]) < len(body) for q in new), [len(q["body"]) for q in new]
    assert_chat_served(gw)


def test_kept_alive_connections_are_closed_when_idle_or_stalled_in_the_next_header(gw):
    request = head("GET", "/v1/models")
    for stall_with in (b"", b"GET /v1/mod"):
        with gw.connect(15) as tls:
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
    assert_chat_served(gw)
    pid = gw.proc.pid
    base = open_fds(pid)
    crowd = []
    for _ in range(150):
        tls = gw.connect(90)
        tls.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        crowd.append(tls)
    # Trickle a header byte now and then: each read resets Pingora's 60 s per-read bound.
    for _ in range(3):
        for tls in crowd:
            tls.sendall(b"X")
        time.sleep(0.5)
    # They are all held open by the gateway (the base may include a pooled or kept-alive
    # connection that closes meanwhile: the same slack of 4 as the check below).
    assert open_fds(pid) >= base + len(crowd) - 4, (base, open_fds(pid))
    # Everyone else is served while the crowd holds its connections.
    for _ in range(20):
        assert_chat_served(gw)
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
    while open_fds(pid) > base + 4 and time.monotonic() < end:
        time.sleep(0.2)
    assert open_fds(pid) <= base + 4, (base, open_fds(pid))
    assert_chat_served(gw)
