"""HTTP/2 to upstreams that offer it (ALPN), HTTP/1.1 to those that do not, against the Rust
mock upstream (examples/mock_upstream.rs), which reports the version it served."""

from __future__ import annotations

import ssl
import subprocess
import time

import httpx
import pytest

from gateway_driver import ROOT
from gwconfig import route
from net import free_port

MOCK_BIN = ROOT / "target" / "debug" / "examples" / "mock_upstream"


@pytest.fixture
def rust_mock(upstream_ca, tmp_path):
    procs = []

    def start(*extra: str) -> int:
        cert = upstream_ca.issue_cert("127.0.0.1")
        chain, key = tmp_path / f"chain{len(procs)}.pem", tmp_path / f"key{len(procs)}.pem"
        chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        port = free_port()
        p = subprocess.Popen(
            [str(MOCK_BIN), "--listen", f"127.0.0.1:{port}", "--cert", str(chain), "--key", str(key), "--sse-events", "3", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        procs.append(p)
        ctx = ssl.create_default_context()
        upstream_ca.configure_trust(ctx)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"https://127.0.0.1:{port}/v1/models", verify=ctx, timeout=1)
                return port
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("mock_upstream did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.parametrize("offer_h2,expected", [(True, "HTTP/2.0"), (False, "HTTP/1.1")])
def test_upstream_protocol_follows_alpn(start_gateway, rust_mock, upstream_ca_file, offer_h2, expected):
    port = rust_mock(*([] if offer_h2 else ["--no-h2"]))
    gw = start_gateway(route("rust", "/v1/", f"https://127.0.0.1:{port}", upstream_ca_file))
    with gw.client() as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json={"model": "m", "messages": []})
            assert r.status_code == 200, r.text
            assert r.headers["x-mock-http-version"] == expected
            assert r.json()["choices"][0]["message"]["content"]
        with c.stream("POST", "/v1/chat/completions", json={"stream": True}) as s:
            events = [l for l in s.iter_lines() if l.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) == 4
    # Three JSON calls and one stream over one pooled connection (h2 multiplexes, h1 keeps alive).
    assert gw.metric("agentgate_upstream_connections_total", reused="false") == 1
