"""End to end with a real OpenID provider (panva/oidc-provider from npm, on loopback over TLS):
an agent gets an access token by the client-credentials grant and the real OpenAI Python SDK
uses it as its api_key through the gateway; a client outside the route's group gets 403."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess

import httpx
import pytest

from gwconfig import ROUTE_KEY, route
from net import free_port
from test_sdk import run_sdk

OIDC_DIR = pathlib.Path(__file__).resolve().parent / "oidc"


@contextlib.contextmanager
def run_provider(upstream_ca, tmp_path, env: dict | None = None, port: int | None = None):
    """oidc-provider on loopback over TLS (a certificate from `upstream_ca`); yields the issuer."""
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("oidc-provider is not installed: run `make test` (it runs npm ci in tests/oidc)")
    node = shutil.which("node")
    assert node, "node is required for the OpenID provider"
    leaf = upstream_ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "idp-cert.pem", tmp_path / "idp-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    port = port or free_port()
    proc = subprocess.Popen(
        [node, str(OIDC_DIR / "provider.mjs"), str(port), str(cert), str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {})),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready "), (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def provider(upstream_ca, tmp_path):
    with run_provider(upstream_ca, tmp_path) as issuer:
        yield issuer


def client_credentials_token(issuer: str, ca_file, client: str) -> str:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file))
    meta = httpx.get(f"{issuer}/.well-known/openid-configuration", verify=ctx, timeout=10).json()
    r = httpx.post(
        meta["token_endpoint"],
        data={"grant_type": "client_credentials"},
        auth=(client, f"{client}-secret-0123456789"),
        verify=ctx,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_openai_sdk_with_an_access_token_from_a_real_provider(start_gateway, mock, provider, upstream_ca_file):
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity={"oidc": [{"issuer": provider, "audiences": ["agentgate"], "ca_file": str(upstream_ca_file)}]},
    )
    token = client_credentials_token(provider, upstream_ca_file, "agent-a")
    r = run_sdk(gw, "chat_or_error", api_key=token)
    assert r["status"] == 200, r
    assert r["text"] == "Hello from the mock upstream."
    seen = mock.state.last
    assert seen["headers"]["authorization"] == f"Bearer {ROUTE_KEY}"
    assert token not in json.dumps(seen["header_list"]), "the access token reached the upstream"
    ident = [l["identity"] for l in gw.wait_session_lines(lambda l: l.get("status") == 200)][-1]
    assert ident == {"subject": "agent-a", "issuer": provider, "method": "oidc", "groups": ["agents"]}

    outsider = client_credentials_token(provider, upstream_ca_file, "outsider")
    before = len(mock.state.requests)
    r = run_sdk(gw, "chat_or_error", api_key=outsider)
    assert r["status"] == 403, r
    assert r["code"] == "missing_group"
    assert "route `mock`" in r["message"]
    assert len(mock.state.requests) == before, "the outsider's request reached the upstream"
