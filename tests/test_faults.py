"""Faults the gateway must ride out: the approval store cannot write (no request is let through
unapproved), a storm of configuration reloads while traffic flows, agents that go away in the
middle of sending a body or of a stream, and an upstream that resets mid-response."""

from __future__ import annotations

import json
import signal
import threading
import time

from gateway_driver import CHAT, assert_chat_served, eventually, limit_file_size, open_fds
from gwconfig import masked_chat_routes, people_identity, route
from net import request_head
from test_approvals import PEOPLE, TOOLS_BODY, rules


def test_approval_store_that_cannot_write_refuses_instead_of_letting_through(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, recording="off", approvals=["destructive-tools"]),
        identity=people_identity(PEOPLE), extra=rules(mode="ticket"), preexec=limit_file_size(2048),  # the approval log may not grow past 2 KiB
    )
    codes = []
    with gw.client() as c:
        for _ in range(20):
            r = c.post("/v1/chat/completions", json=TOOLS_BODY)
            codes.append(r.status_code)
            if r.status_code == 503:
                err = r.json()["error"]
                assert err["code"] == "approval_store_unavailable" and "destructive-tools" in err["message"], err
                break
        assert codes[0] == 202 and codes[-1] == 503, codes
        # Nothing matching the rule went upstream; requests the rule does not hold still work.
        assert mock.state.requests == []
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_reload_storm_while_serving(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    text = gw.config_path.read_text()
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with gw.client() as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}).status_code)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(200):
        # Valid and invalid files in turn, each with a signal: the running config must hold.
        gw.config_path.write_text(text + f"# storm {i}\n" if i % 2 == 0 else "routes: [ this is not valid\n")
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.005)
    gw.config_path.write_text(text)
    gw.proc.send_signal(signal.SIGHUP)
    # Traffic goes on until both kinds of reload were seen through (refused, applied).
    invalid = gw.wait_metric("agentgate_config_reloads_total", lambda v: v >= 1, result="invalid")
    ok = gw.wait_metric("agentgate_config_reloads_total", lambda v: v >= 1, result="ok")
    eventually(lambda: len(statuses), lambda n: n > 0)
    stop.set()
    for w in workers:
        w.join(30)
    assert gw.proc.poll() is None, "the gateway survived"
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert invalid >= 1
    assert ok >= 1
    with gw.client() as c:
        assert c.get("/v1/models").status_code == 200


def test_agents_that_go_away_mid_upload(start_gateway, mock, upstream_ca_file):
    policy = {"masking": {"policies": {"default": {"request": {"pii": "redact"}}}}}

    gw = start_gateway(masked_chat_routes(mock.port, upstream_ca_file), extra=policy)
    with gw.client() as c:  # the upstream pool holds a connection already
        assert c.post("/v1/responses", json={"model": "m", "input": "hi"}).status_code == 200
    time.sleep(0.3)
    fds_before = open_fds(gw.proc.pid)
    for path in ("/v1/chat/completions", "/v1/responses"):
        for _ in range(20):
            s = gw.connect()
            s.sendall(request_head("POST", path, "Content-Type: application/json", "Content-Length: 1000000") + b'{"model":"m","input":"' + b"x" * 30000)
            s.close()
    time.sleep(1)
    # The masked route never forwards a body it has not read whole; the gateway keeps serving.
    assert not any(q["path"].startswith("/v1/chat/") for q in mock.state.requests)
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert c.post("/v1/responses", json={"model": "m", "input": "hi"}).status_code == 200
    # No connection or task is left behind by the 40 abandoned uploads.
    deadline = time.monotonic() + 10
    while (open_fds(gw.proc.pid) > fds_before + 4 or gw.metric("agentgate_requests_in_flight")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds(gw.proc.pid) <= fds_before + 4
    assert gw.metric("agentgate_requests_in_flight") == 0  # no request task left behind


def test_upstream_reset_mid_response_and_mid_stream(plain_and_masked):
    import httpx

    plain, masked = plain_and_masked()
    for gw in (plain, masked):
        errors = gw.metric("agentgate_errors_total", route="up")
        # A JSON answer cut half-way by a reset. The mock resets only once the gateway has read
        # the header and the half body (mock_upstream.wait_until_read): the reset comes mid-body.
        body = json.dumps(CHAT).encode()
        resp = gw.raw(request_head("POST", "/v1/chat/completions", "Content-Type: application/json",
                                   "x-mock-reset: mid-response", f"Content-Length: {len(body)}") + body)
        head, _, rest = resp.partition(b"\r\n\r\n")
        if gw is masked:
            # Read whole to be masked: the header went out (the gateway had read it), but not one
            # byte of the half answer reaches the agent, and the connection is cut.
            assert head.startswith(b"HTTP/1.1 200 ") and b"choices" not in rest and b"Hello" not in rest, resp
            assert not rest.endswith(b"0\r\n\r\n"), rest  # never a clean end
        else:
            # Streamed through: the header went out already, so the agent gets at most part of the
            # body and a cut connection: fewer bytes than the Content-Length it was promised.
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")).split(b":")[1])
            assert len(rest) < length, (len(rest), length)
        # A stream reset after two events, once the gateway has read them (and the header).
        with gw.client() as c:
            with c.stream("POST", "/v1/chat/completions", json=dict(CHAT, stream=True),
                          headers={"x-mock-reset": "mid-stream"}) as r:
                assert r.status_code == 200
                got = b""
                try:
                    for b in r.iter_bytes():
                        got += b
                    cut = False
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    cut = True
        assert cut, got[-200:]  # the agent sees a broken stream, not a clean end
        assert b"[DONE]" not in got
        # Both counted as upstream errors on the route (when the gateway logs the exchanges).
        assert gw.wait_metric("agentgate_errors_total", errors + 2, route="up") == errors + 2, gw.metrics()
        # And everyone else is still served.
        assert_chat_served(gw)


def test_agents_that_go_away_mid_stream(plain_and_masked):
    plain, masked = plain_and_masked()
    body = json.dumps(dict(CHAT, stream=True)).encode()
    for gw in (plain, masked):
        assert_chat_served(gw)
        time.sleep(0.3)
        pid = gw.proc.pid
        fds_before = open_fds(pid)
        gone0 = gw.metric("agentgate_errors_total", route="up", kind="client_disconnected")
        socks = []
        for _ in range(30):
            s = gw.connect()
            s.sendall(request_head("POST", "/v1/chat/completions", "Content-Type: application/json", "x-mock-delay-ms: 100",
                                   f"x-mock-say: {'word ' * 40}", f"Content-Length: {len(body)}") + body)
            socks.append(s)
        for s in socks:
            got = b""
            while b"data:" not in got:  # the stream has begun
                got += s.recv(65536)
            s.close()  # the agent goes away mid-stream (the upstream would go on for ~4 s)
        # Each one is logged as the agent going away; nothing is left behind once the upstream
        # streams they abandoned are over; everyone else is served meanwhile.
        assert_chat_served(gw)
        deadline = time.monotonic() + 15
        while (open_fds(pid) > fds_before + 4
               or gw.metric("agentgate_errors_total", route="up", kind="client_disconnected") < gone0 + 30
               or gw.metric("agentgate_requests_in_flight")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gw.metric("agentgate_errors_total", route="up", kind="client_disconnected") == gone0 + 30
        assert open_fds(pid) <= fds_before + 4, (fds_before, open_fds(pid))
        assert gw.metric("agentgate_requests_in_flight") == 0  # no request task left behind
