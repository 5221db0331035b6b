"""Identity and access through the real gateway: OIDC tokens checked against a JWKS server the
test controls (valid, expired, not yet valid, wrong audience or issuer, bad signature,
alg none, HS256 with the RSA public key, key rotation, IdP down warm and cold, missing group,
several issuers), service-account tokens and client certificates."""

from __future__ import annotations

import json
import ssl
import subprocess
import time

import httpx
import pytest
import trustme
import yaml

from gateway_driver import BINARY
from gwconfig import AGENT_TOKEN, DEFAULT_IDENTITY, ROUTE_KEY, route
from net import server_ctx
from idp import ControlledIdP


@pytest.fixture
def idp(upstream_ca):
    srv = ControlledIdP(server_ctx(upstream_ca)).start()
    srv.add_key("rsa-1", "RS256")
    yield srv
    srv.stop()


def oidc_identity(*idps: ControlledIdP, ca_file, extra: dict | None = None, groups_claim: tuple[str, ...] = ()) -> dict:
    """The identity section: each IdP as an OIDC issuer (with `extra` settings), and the agent's
    service account."""
    issuers = []
    for i, p in enumerate(idps):
        issuer = {"issuer": p.issuer, "audiences": [p.audience], "ca_file": str(ca_file), "leeway": "5s"}
        if i < len(groups_claim):
            issuer["groups_claim"] = groups_claim[i]
        issuers.append({**issuer, **(extra or {})})
    return {"oidc": issuers, **DEFAULT_IDENTITY}


@pytest.fixture
def oidc_gateway(start_gateway, mock, idp, upstream_ca_file):
    return start_gateway(
        [route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
         route("admin", "/admin/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, access={"groups": ["admins"]})],
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"jwks_min_refetch_interval": "0s"}),
    )


def call(gw, token: str | None, path: str = "/v1/models") -> httpx.Response:
    with gw.client(token=token) as c:
        return c.get(path)


def assert_refused(r: httpx.Response, status: int, code: str, fragment: str = "", token: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    assert fragment in body["message"], body
    if token:
        assert token not in r.text and token not in json.dumps(dict(r.headers)), "the token was echoed"
    if status == 401:
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="agentgate"'), challenge
        if code != "missing_token":
            assert 'error="invalid_token"' in challenge and "error_description=" in challenge, challenge


def test_valid_tokens_rs256_es256_ps256(oidc_gateway, idp, mock):
    idp.add_key("ec-1", "ES256")
    idp.add_key("pss-1", "PS256")
    for kid in ("rsa-1", "ec-1", "pss-1"):
        token = idp.token(kid, sub=f"agent-{kid}")
        r = call(oidc_gateway, token)
        assert r.status_code == 200, (kid, r.text)
        assert token not in json.dumps(mock.state.last["header_list"]), "the caller's token went upstream"
        assert mock.state.last["headers"]["authorization"] == f"Bearer {ROUTE_KEY}"
    [line] = oidc_gateway.wait_session_lines(lambda l: (l.get("identity") or {}).get("subject") == "agent-pss-1")
    ident = line["identity"]
    assert ident == {"subject": "agent-pss-1", "issuer": idp.issuer, "method": "oidc", "groups": ["agents"]}


@pytest.mark.parametrize(
    "case,code,fragment",
    [
        ("expired", "expired", "expired"),
        ("not_yet_valid", "not_yet_valid", "not valid for another"),
        ("wrong_aud", "wrong_audience", "audience"),
        ("wrong_iss", "unknown_issuer", "not accepted"),
        ("bad_signature", "bad_signature", "signature"),
        ("alg_none", "unsupported_alg", "alg none"),
        ("hs256_public_key", "unsupported_alg", "HS256"),
        ("garbage", "unknown_service_account", "neither a JWT"),
        ("malformed_jwt", "malformed_token", "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(oidc_gateway, idp, mock, case, code, fragment):
    now = int(time.time())
    idp.add_key("other", "RS256", publish=False)
    token = {
        "expired": lambda: idp.token("rsa-1", exp=now - 60, iat=now - 400),
        "not_yet_valid": lambda: idp.token("rsa-1", nbf=now + 120),
        "wrong_aud": lambda: idp.token("rsa-1", aud="someone-else"),
        "wrong_iss": lambda: idp.token("rsa-1", iss="https://evil.example"),
        "bad_signature": lambda: idp.token("rsa-1", signer="other"),
        "alg_none": lambda: idp.unsigned_token(),
        "hs256_public_key": lambda: idp.hs256_with_public_key("rsa-1"),
        "garbage": lambda: "not-a-token-at-all",
        "malformed_jwt": lambda: "eyJhbGciOiJSUzI1NiJ9.!!!.abc",
    }[case]()
    before = oidc_gateway.metric("agentgate_auth_failures_total", reason=code)
    r = call(oidc_gateway, token)
    assert_refused(r, 401, code, fragment, token=token)
    assert mock.state.requests == [], "a refused request reached the upstream"
    assert oidc_gateway.wait_metric("agentgate_auth_failures_total", before + 1, reason=code) == before + 1


def test_id_tokens_are_not_access_tokens(oidc_gateway, idp, mock):
    """Issue 29: an ID token of the same issuer, with the same audience and groups, was let in
    as an API credential. Access tokens say `typ: at+jwt` (RFC 9068); ID tokens carry `nonce`."""
    assert call(oidc_gateway, idp.token("rsa-1")).status_code == 200
    before = oidc_gateway.metric("agentgate_auth_failures_total", reason="not_an_access_token")
    cases = [
        (idp.id_token("rsa-1"), "typ `JWT`"),
        (idp.token("rsa-1", headers={"typ": "JWT"}), "typ `JWT`"),
        (idp.token("rsa-1", headers={"typ": None}), "no `typ`"),
        (idp.token("rsa-1", headers={"typ": "logout+jwt"}), "typ `logout+jwt`"),
        (idp.token("rsa-1", nonce="n-1"), "`nonce`"),
    ]
    for token, fragment in cases:
        r = call(oidc_gateway, token)
        assert_refused(r, 401, "not_an_access_token", fragment, token=token)
        assert "access token" in r.json()["error"]["message"]
    assert mock.state.requests[1:] == [], "a refused token reached the upstream"
    assert oidc_gateway.wait_metric("agentgate_auth_failures_total", before + len(cases),
                                    reason="not_an_access_token") == before + len(cases)


def test_issuers_that_do_not_mark_access_tokens_still_refuse_id_tokens(start_gateway, mock, idp, upstream_ca_file):
    """An IdP whose access tokens say `typ: JWT` or nothing (Keycloak, Entra ID) is configured
    with `access_token_typ: [at+jwt, JWT, none]`; its ID tokens are still refused by `nonce`."""
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"access_token_typ": ["at+jwt", "JWT", "none"]}),
    )
    for headers in ({"typ": "JWT"}, {"typ": None}, {"typ": "application/at+jwt"}):
        r = call(gw, idp.token("rsa-1", headers=headers))
        assert r.status_code == 200, (headers, r.text)
    for token in (idp.id_token("rsa-1"), idp.token("rsa-1", headers={"typ": "JWT"}, at_hash="x"),
                  idp.token("rsa-1", headers={"typ": "JWT"}, typ="ID")):
        assert_refused(call(gw, token), 401, "not_an_access_token", "access token", token=token)


def test_a_token_without_sub_names_nobody_unless_the_issuer_says_which_claim_does(start_gateway, oidc_gateway, mock, idp, upstream_ca_file):
    """Issue 29: a token without `sub` was silently named by its `client_id` or `azp`."""
    token = idp.token("rsa-1", sub=None, client_id="svc-7", azp="svc-7")
    assert_refused(call(oidc_gateway, token), 401, "invalid_claims", "no `sub` claim", token=token)
    assert mock.state.requests == []
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"subject_fallback": ["client_id"]}),
    )
    assert call(gw, token).status_code == 200
    [line] = gw.wait_session_lines(lambda l: (l.get("identity") or {}).get("subject") == "svc-7")
    assert line["identity"]["issuer"] == idp.issuer
    only_azp = idp.token("rsa-1", sub=None, azp="svc-8")
    assert_refused(call(gw, only_azp), 401, "invalid_claims", "client_id", token=only_azp)


def test_missing_credentials_get_a_bare_challenge(oidc_gateway, mock):
    r = call(oidc_gateway, None)
    assert_refused(r, 401, "missing_token", "no credentials")
    assert r.headers["www-authenticate"] == 'Bearer realm="agentgate"'
    with oidc_gateway.client(token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"}) as c:
        assert_refused(c.get("/v1/models"), 401, "malformed_token", "Bearer scheme")
    assert mock.state.requests == []


def test_missing_group_is_403_naming_the_route(oidc_gateway, idp, mock):
    r = call(oidc_gateway, idp.token("rsa-1"), "/admin/x")
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "missing_group"
    assert "route `admin`" in err["message"] and "admins" in err["message"]
    assert mock.state.requests == []
    assert oidc_gateway.wait_metric("agentgate_auth_failures_total", 1, reason="missing_group") == 1
    # The same caller is let in where its group is allowed.
    assert call(oidc_gateway, idp.token("rsa-1"), "/v1/models").status_code == 200


def test_key_rotation_without_restart(oidc_gateway, idp):
    assert call(oidc_gateway, idp.token("rsa-1")).status_code == 200
    fetches = idp.jwks_fetches
    idp.add_key("rsa-2", "RS256")
    idp.published = ["rsa-2"]  # the IdP rotated: the old key is gone, the new one is in
    r = call(oidc_gateway, idp.token("rsa-2", sub="after-rotation"))
    assert r.status_code == 200, r.text
    assert idp.jwks_fetches == fetches + 1, "the unknown kid should have fetched the keys once"
    assert oidc_gateway.metric("agentgate_jwks_refresh_total", issuer=idp.issuer, result="ok") >= 2


def test_a_refresh_that_drops_a_key_stops_the_tokens_it_signed(start_gateway, mock, idp, upstream_ca_file):
    """Issue 29: a verified token stayed cached until its `exp` after the IdP rotated its key
    out, so removing a compromised key from the JWKS did not stop the tokens it had signed."""
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"jwks_refresh_interval": "1s"}),
    )
    token = idp.token("rsa-1", sub="holder-of-a-leaked-token")
    assert call(gw, token).status_code == 200
    assert call(gw, token).status_code == 200  # its verdict is cached now
    idp.add_key("rsa-2", "RS256")
    idp.published = ["rsa-2"]  # the compromised key is rotated out
    ok = gw.metric("agentgate_jwks_refresh_total", issuer=idp.issuer, result="ok")
    # Two refreshes: the second one started after the key left the JWKS.
    gw.wait_metric("agentgate_jwks_refresh_total", lambda v: v >= ok + 2, issuer=idp.issuer, result="ok")
    before = len(mock.state.requests)
    assert_refused(call(gw, token), 401, "unknown_key", "rsa-1", token=token)
    assert len(mock.state.requests) == before, "a token of the rotated-out key reached the upstream"
    assert call(gw, idp.token("rsa-2", sub="after-rotation")).status_code == 200


def test_unknown_kid_refetch_is_rate_limited(start_gateway, mock, idp, upstream_ca_file):
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"jwks_min_refetch_interval": "1h"}),
    )
    idp.add_key("never-published", "RS256", publish=False)
    fetches = idp.jwks_fetches
    for i in range(20):
        r = call(gw, idp.token("never-published", sub=f"x{i}"))
        assert_refused(r, 401, "unknown_key", "no signing key")
    assert idp.jwks_fetches - fetches <= 1, "forged kids must not hammer the IdP"
    assert call(gw, idp.token("rsa-1")).status_code == 200


def test_idp_down_with_warm_cache_keeps_validating(oidc_gateway, idp):
    assert call(oidc_gateway, idp.token("rsa-1")).status_code == 200
    idp.down = True
    # A token never seen before (not in the verdict cache), signed by a cached key.
    r = call(oidc_gateway, idp.token("rsa-1", sub="while-idp-down"))
    assert r.status_code == 200, r.text
    assert oidc_gateway.readyz().status_code == 200


def test_idp_down_cold_is_503_and_not_ready_until_keys_load(start_gateway, mock, idp, upstream_ca_file):
    idp.down = True
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"jwks_min_refetch_interval": "0s", "jwks_refresh_interval": "1s"}),
        wait_ready=False,
    )
    ready = gw.readyz()
    assert ready.status_code == 503 and idp.issuer in ready.text, ready.text
    token = idp.token("rsa-1")
    r = call(gw, token)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "keys_unavailable"
    assert idp.issuer in r.json()["error"]["message"]
    assert mock.state.requests == []
    assert gw.wait_metric("agentgate_jwks_refresh_total", lambda v: v >= 1, issuer=idp.issuer, result="error") >= 1
    # Service accounts do not depend on the IdP.
    assert call(gw, AGENT_TOKEN).status_code == 200
    idp.down = False
    deadline = time.monotonic() + 15
    while gw.readyz().status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.readyz().status_code == 200
    assert call(gw, token).status_code == 200


def test_several_issuers_with_their_own_group_claims(start_gateway, mock, idp, upstream_ca, upstream_ca_file):
    second = ControlledIdP(server_ctx(upstream_ca)).start()
    try:
        second.add_key("ec-9", "ES256")
        gw = start_gateway(
            route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
            identity=oidc_identity(idp, second, ca_file=upstream_ca_file, groups_claim=("groups", "realm_access.roles")),
        )
        assert call(gw, idp.token("rsa-1")).status_code == 200
        t2 = second.token("ec-9", groups=None, realm_access={"roles": ["agents"]})
        assert call(gw, t2).status_code == 200
        # The second issuer's groups come only from its own claim.
        t3 = second.token("ec-9", groups=["agents"], realm_access={"roles": ["viewer"]})
        assert call(gw, t3).status_code == 403
        # A token that names the first issuer but is signed by the second issuer's key.
        forged = second.token("ec-9", iss=idp.issuer)
        assert call(gw, forged).status_code == 401
    finally:
        second.stop()


def test_service_account_tokens(start_gateway, mock, upstream_ca_file):
    made = subprocess.run(
        [str(BINARY), "token", "create", "--name", "ci-agent", "--groups", "agents,ops"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()
    token = next(l for l in made if l.startswith("agt_"))
    line = next(l for l in made if l.startswith("- { name: ci-agent"))
    assert token not in line, "the config line must hold the hash, not the token"
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity={"service_accounts": yaml.safe_load(line)},  # the line is a YAML list item
    )
    for header in ("Authorization", "X-Api-Key", "api-key"):
        value = f"Bearer {token}" if header == "Authorization" else token
        with gw.client(token=None, headers={header: value}) as c:
            r = c.get("/v1/models")
        assert r.status_code == 200, (header, r.text)
        assert token not in json.dumps(mock.state.last["header_list"])
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_refused(call(gw, wrong), 401, "unknown_service_account", token=wrong)
    ident = [l["identity"] for l in gw.wait_session_lines(lambda l: l.get("status") == 200, n=3)][-1]
    assert ident == {"subject": "ci-agent", "issuer": "service-account", "method": "service_account", "groups": ["agents", "ops"]}


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


def mtls_client(gw, cert: trustme.LeafCert | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    if cert is not None:
        cert.configure_cert(ctx)
    return httpx.Client(base_url=gw.base_url, verify=ctx, timeout=10)


def mtls_gateway(start_gateway, mock, upstream_ca_file, client_ca, tmp_path, mode: str):
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    return start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
        identity={"client_certs": [
            {"subject_cn": "build-bot", "groups": ["agents"]},
            {"san_email": "bot-b@corp.example", "groups": ["agents"]},
            {"subject_cn": "intern-bot", "groups": ["interns"]},
        ]},
        listener_tls={"client_ca": str(ca_path), "client_auth": mode},
    )


def test_client_certificates_accepted_and_refused(start_gateway, mock, upstream_ca_file, client_ca, tmp_path):
    gw = mtls_gateway(start_gateway, mock, upstream_ca_file, client_ca, tmp_path, "optional")
    with mtls_client(gw, client_ca.issue_cert("bot.corp", common_name="build-bot")) as c:
        assert c.get("/v1/models").status_code == 200
    assert gw.wait_session_lines(lambda l: "identity" in l)[-1]["identity"] == {"subject": "build-bot", "issuer": "client-cert", "method": "client_cert", "groups": ["agents"]}
    with mtls_client(gw, client_ca.issue_cert("bot-b@corp.example", common_name="whatever")) as c:
        assert c.get("/v1/models").status_code == 200
    # Verified but mapped to no identity: 401; mapped to a group the route does not allow: 403.
    with mtls_client(gw, client_ca.issue_cert("x.corp", common_name="stranger")) as c:
        assert_refused(c.get("/v1/models"), 401, "client_cert_unmapped", "CN=stranger")
    with mtls_client(gw, client_ca.issue_cert("i.corp", common_name="intern-bot")) as c:
        assert c.get("/v1/models").status_code == 403
    # No certificate on an optional listener: the request needs another credential.
    with mtls_client(gw, None) as c:
        assert_refused(c.get("/v1/models"), 401, "missing_token")
    # A certificate from a CA the listener does not trust fails the handshake.
    with mtls_client(gw, trustme.CA().issue_cert("bot.corp", common_name="build-bot")) as c:
        with pytest.raises(httpx.TransportError):
            c.get("/v1/models")
    assert len(mock.state.requests) == 2


def test_client_certificate_required(start_gateway, mock, upstream_ca_file, client_ca, tmp_path):
    gw = mtls_gateway(start_gateway, mock, upstream_ca_file, client_ca, tmp_path, "required")
    with mtls_client(gw, None) as c:
        with pytest.raises(httpx.TransportError):
            c.get("/v1/models")
    with mtls_client(gw, client_ca.issue_cert("bot.corp", common_name="build-bot")) as c:
        assert c.get("/v1/models").status_code == 200
    # Counted when the gateway logs the failed handshake, after the client saw it fail.
    assert gw.wait_metric("agentgate_tls_handshake_failures_total", lambda v: v >= 1, leg="downstream") >= 1
