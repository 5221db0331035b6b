"""Faults the gateway must ride out: the approval store cannot write (no request is let through
unapproved), a storm of configuration reloads while traffic flows, and agents that go away in the
middle of sending a body."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time

from conftest import AGENT_TOKEN, DEFAULT_IDENTITY, limit_file_size, people_identity, route_yaml
from test_approvals import PEOPLE, TOOLS_BODY, rules_yaml


def test_approval_store_that_cannot_write_refuses_instead_of_letting_through(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(
        route_yaml("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file) + "    recording: off\n    approvals: [destructive-tools]\n",
        identity=people_identity(PEOPLE), extra=rules_yaml(mode="ticket"), preexec=limit_file_size(2048),  # the approval log may not grow past 2 KiB
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
    gw = start_gateway(route_yaml("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
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
    time.sleep(1.5)
    stop.set()
    for w in workers:
        w.join(30)
    assert gw.proc.poll() is None, "the gateway survived"
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert gw.metric("agentgate_config_reloads_total", result="invalid") >= 1
    assert gw.metric("agentgate_config_reloads_total", result="ok") >= 1
    with gw.client() as c:
        assert c.get("/v1/models").status_code == 200


def test_agents_that_go_away_mid_upload(start_gateway, mock, upstream_ca_file):
    policy = "masking:\n  policies:\n    default:\n      request: { pii: redact }\n"

    routes = route_yaml("masked", "/v1/chat/", f"https://127.0.0.1:{mock.port}", upstream_ca_file) + "    masking: default\n"
    routes += route_yaml("plain", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file)
    gw = start_gateway(routes, identity=DEFAULT_IDENTITY + policy)
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    with gw.client() as c:  # the upstream pool holds a connection already
        assert c.post("/v1/responses", json={"model": "m", "input": "hi"}).status_code == 200
    time.sleep(0.3)
    fds_before = len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
    for path in ("/v1/chat/completions", "/v1/responses"):
        for _ in range(20):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="127.0.0.1")
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n".encode() + b'{"model":"m","input":"' + b"x" * 30000)
            s.close()
    time.sleep(1)
    # The masked route never forwards a body it has not read whole; the gateway keeps serving.
    assert not any(q["path"].startswith("/v1/chat/") for q in mock.state.requests)
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert c.post("/v1/responses", json={"model": "m", "input": "hi"}).status_code == 200
    # No connection or task is left behind by the 40 abandoned uploads.
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{gw.proc.pid}/fd")) > fds_before + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(os.listdir(f"/proc/{gw.proc.pid}/fd")) <= fds_before + 4


MASKING = (
    "masking:\n  policies:\n    default:\n"
    "      request: { secrets: redact, pii: redact }\n"
    "      response: { secrets: redact, pii: redact }\n"
)


def test_upstream_reset_mid_response_and_mid_stream(start_gateway, mock, upstream_ca_file):
    import httpx

    upstream = f"https://127.0.0.1:{mock.port}"
    plain = start_gateway(route_yaml("up", "/v1/", upstream, upstream_ca_file))
    masked = start_gateway(route_yaml("up", "/v1/", upstream, upstream_ca_file) + "    masking: default\n", identity=DEFAULT_IDENTITY + MASKING)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for gw in (plain, masked):
        errors = gw.metric("agentgate_errors_total", route="up")
        # A JSON answer cut half-way by a reset.
        with gw.client() as c:
            try:
                r = c.post("/v1/chat/completions", json=chat, headers={"x-mock-reset": "mid-response"})
                outcome = (r.status_code, r.json())
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                outcome = ("cut", str(e))
        if gw is masked:
            # Read whole to be masked: nothing reached the agent yet, so a clear 502.
            assert outcome[0] == 502 and outcome[1]["error"]["type"] == "upstream_error", outcome
        else:
            # Streamed through: the header went out already, so the agent's connection is cut;
            # half a body is never presented as a complete answer.
            assert outcome[0] == "cut", outcome
        # A stream reset after two events.
        with gw.client() as c:
            with c.stream("POST", "/v1/chat/completions", json=dict(chat, stream=True), headers={"x-mock-reset": "mid-stream"}) as r:
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
        # Both counted as upstream errors on the route.
        assert gw.metric("agentgate_errors_total", route="up") == errors + 2, gw.metrics()
        # And everyone else is still served.
        with gw.client() as c:
            r = c.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."
