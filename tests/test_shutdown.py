"""Graceful shutdown: on SIGTERM the gateway stops taking new requests (503 `shutting_down`,
/readyz 503), lets an in-flight SSE stream finish within server.grace_period, writes its queued
records and session lines, and exits 0 as soon as nothing is in flight."""

from __future__ import annotations

import signal
import time

import httpx

from gateway_driver import SlowStream, eventually
from gwconfig import route


def readiness(gw) -> int:
    """/readyz's status, 0 once the admin listener no longer answers."""
    try:
        return gw.readyz().status_code
    except httpx.HTTPError:
        return 0


def test_sigterm_lets_in_flight_streams_finish(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    s = SlowStream(gw, "one two three four five six", 300)
    assert s.first.wait(10)
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    # Shutdown has begun once /readyz says 503 (or the admin listener is gone).
    assert eventually(lambda: readiness(gw), lambda status: status != 200) != 200
    # New requests are turned away once shutdown began (the listener closes; a request on a
    # connection opened just before gets 503 shutting_down)...
    try:
        with gw.client() as c:
            r = c.get("/v1/models")
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
    except httpx.ConnectError:
        pass
    # ...while the stream in flight runs to its end.
    assert s.done.wait(15)
    assert "".join(s.got) == "one two three four five six"
    assert gw.proc.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 4, "exited after the grace period (5 s), not when the stream ended"
    lines = [l for l in gw.session_lines() if l.get("path") == "/v1/chat/completions"]
    assert lines and lines[-1]["status"] == 200, "the session line was not written before exit"
    index = gw.state_dir / "var" / "records" / "index.jsonl"
    assert index.exists() and index.read_text().strip(), "the record was not written before exit"


def test_sigterm_when_idle_exits_at_once(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3
