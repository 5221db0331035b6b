"""Each error the gateway answers itself: status, OpenAI-shaped JSON body, metric, and the
gateway keeps serving the next request."""

from __future__ import annotations

import base64
import hashlib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway_driver import CHAT
from gwconfig import ROUTE_KEY, route
from net import free_port, server_ctx
from mock_upstream import MockServer


def assert_api_error(r, status: int, code: str, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["code"] == code, err
    for f in fragments:
        assert f in err["message"], err
    assert ROUTE_KEY not in r.text
    return err


def spki_pin(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def other_mock(upstream_ca):
    """Started by tests that need a second upstream with its own certificate."""
    servers = []

    def start(ctx: ssl.SSLContext) -> MockServer:
        srv = MockServer(ctx).start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def test_no_route_is_404(gateway):
    with gateway.client() as c:
        r = c.post("/v2/anything", json={})
        assert_api_error(r, 404, "route_not_found", "/v2/anything")
        assert c.get("/v1/models").status_code == 200
    assert gateway.wait_metric("agentgate_errors_total", 1, route="none", kind="route_not_found") == 1


def test_path_escaping_the_prefix_is_refused(gateway, mock):
    import json

    for path in ("/v1/../admin", "/v1/./models", "/v1/%2e%2e/admin", "/v1%2fadmin", "/v1/..%2Fadmin"):
        raw = gateway.raw(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (path, raw)
        assert json.loads(body)["error"]["code"] == "invalid_path"
    assert mock.state.requests == []


def test_upstream_refusing_connections_is_502(start_gateway, upstream_ca_file, mock):
    dead = free_port()
    gw = start_gateway([
        route("dead", "/dead/", f"https://127.0.0.1:{dead}", upstream_ca_file),
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
    ])
    with gw.client() as c:
        r = c.get("/dead/x")
        assert_api_error(r, 502, "upstream_connect_failed", "route `dead`", f"127.0.0.1:{dead}")
        assert c.get("/v1/models").status_code == 200
    assert gw.wait_metric("agentgate_errors_total", 1, route="dead", kind="upstream_connect_failed") == 1
    assert gw.wait_metric("agentgate_requests_total", 1, route="dead", status_class="5xx") == 1


@pytest.mark.parametrize("kind", ["self-signed", "another-host", "expired"])
def test_upstream_certificates_that_must_not_be_trusted_are_502(start_gateway, upstream_ca, upstream_ca_file, other_mock, mock, kind):
    import datetime

    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    ctx, says = {
        # A CA the route does not trust (a self-signed chain of its own).
        "self-signed": (lambda: server_ctx(trustme.CA()), "TLS handshake failed"),
        "another-host": (lambda: server_ctx(upstream_ca, "wrong.example"), "not valid for 127.0.0.1"),
        "expired": (lambda: server_ctx(upstream_ca, "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1)), "TLS handshake failed"),
    }[kind]
    bad = other_mock(ctx())
    gw = start_gateway([
        route("bad", "/v1/models", f"https://127.0.0.1:{bad.port}", upstream_ca_file),
        route("good", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
    ])
    with gw.client() as c:
        r = c.get("/v1/models")
        assert_api_error(r, 502, "upstream_tls_failed", says)
        # Never a plaintext or unverified fallback; other routes are served meanwhile.
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert bad.state.requests == [], "no request may reach an unverified upstream"
    assert gw.wait_metric("agentgate_errors_total", 1, route="bad", kind="upstream_tls_failed") == 1
    assert gw.metric("agentgate_tls_handshake_failures_total", leg="upstream") >= 1


def test_pins(start_gateway, upstream_ca, upstream_ca_file, other_mock):
    cert = upstream_ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    pinned = other_mock(ctx)
    good = spki_pin(cert.cert_chain_pems[0].bytes())
    bad = base64.b64encode(hashlib.sha256(b"some other key").digest()).decode()
    url = f"https://127.0.0.1:{pinned.port}"
    gw = start_gateway([
        route("pinned-bad", "/bad/", url, upstream_ca_file, upstream={"pins_sha256": [bad]}),
        route("pinned-good", "/v1/", url, upstream_ca_file, upstream={"pins_sha256": [bad, good]}),
    ])
    with gw.client() as c:
        r = c.get("/bad/models")
        assert_api_error(r, 502, "upstream_pin_mismatch", "pins_sha256", "route `pinned-bad`")
        assert [q["path"] for q in pinned.state.requests] == [], "a request went to an unpinned upstream"
        r = c.get("/v1/models")
        assert r.status_code == 200, r.text
    assert [q["path"] for q in pinned.state.requests] == ["/v1/models"]


def test_agentgate_cert_pin_matches_python(gateway, upstream_ca):
    import subprocess

    from gateway_driver import BINARY

    cert = upstream_ca.issue_cert("127.0.0.1")
    pem = cert.cert_chain_pems[0].bytes()
    path = gateway.state_dir / "leaf.pem"
    path.write_bytes(pem)
    out = subprocess.run([str(BINARY), "cert", "pin", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == spki_pin(pem)


def test_upstream_timeout_is_504(start_gateway, mock, upstream_ca_file):
    gw = start_gateway([
        route("slow", "/v1/slow", f"https://127.0.0.1:{mock.port}", upstream_ca_file, upstream={"read_timeout": "1s"}),
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
    ])
    with gw.client() as c:
        r = c.get("/v1/slow", headers={"x-mock-sleep": "3"})
        assert_api_error(r, 504, "upstream_timeout", "route `slow`")
        assert c.get("/v1/models").status_code == 200
    assert gw.wait_metric("agentgate_errors_total", 1, route="slow", kind="upstream_timeout") == 1


def test_body_over_max_body_is_413(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file), server={"max_body": "1KiB"})
    with gw.client() as c:
        r = c.post("/v1/chat/completions", content=b"x" * 2048, headers={"content-type": "application/json"})
        assert_api_error(r, 413, "body_too_large", "1024 bytes")
        assert mock.state.requests == [], "a declared oversized body must not be forwarded"

        def chunks():
            for _ in range(4):
                yield b"y" * 512

        r = c.post("/v1/echo", content=chunks())
        assert_api_error(r, 413, "body_too_large")
    with gw.client() as c:
        ok = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200
    assert gw.wait_metric("agentgate_errors_total", 2, route="mock", kind="body_too_large") == 2
