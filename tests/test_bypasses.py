"""The gateway's promises, tried the way a security review of 4b02e9d broke them (issue 22): one
canonical request for every decision and for the upstream, approvals bound to what was
approved, the route's key confined at every exit, masking that reads what it masks. Each test's
docstring says what it failed with on 4b02e9d."""

from __future__ import annotations

import json
import random
import re
import threading

import pytest

from gwconfig import AGENT_TOKEN, people_identity, person_token, route
from net import request_head as head
from test_upstream_protocols import rust_mock  # noqa: F401 (a fixture)

PEOPLE = {"alice": ["security-oncall"], "bob": ["security-oncall"]}


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else 0


def body_of(resp: bytes) -> dict:
    return json.loads(resp.partition(b"\r\n\r\n")[2] or b"{}")


@pytest.fixture
def two_routes(start_gateway, mock, upstream_ca_file):
    """`/v1/admin/` for group `admins` only, the rest of `/v1/` for `agents`."""
    up = f"https://127.0.0.1:{mock.port}"
    return start_gateway([route("admin", "/v1/admin/", up, upstream_ca_file, access={"groups": ["admins"]}),
                          route("all", "/v1/", up, upstream_ca_file)])


ENCODED_ADMIN = ["/v1/%61dmin/users", "/v1/%61%64%6D%69%6E/users", "/v1/a%64min/users", "/v1/%61dmin/%75sers"]


@pytest.mark.parametrize("path", ENCODED_ADMIN)
def test_an_encoded_path_is_routed_and_authorized_as_the_upstream_reads_it(two_routes, mock, path):
    """On 4b02e9d `GET /v1/%61dmin/users` matched the broader route `all` (200), and the upstream
    decoded it to /v1/admin/users: a route reserved to `admins` was reached by `agents`."""
    before = len(mock.state.requests)
    resp = two_routes.raw(head("GET", path))
    assert status_of(resp) == 403, resp[:300]
    assert "route `admin`" in body_of(resp)["error"]["message"]
    assert len(mock.state.requests) == before, "the request reached the upstream"


def test_the_upstream_receives_the_canonical_path(two_routes, mock):
    """On 4b02e9d the upstream received the path as the agent encoded it (`/v1/m%6Fdels`)."""
    rng = random.Random(22)
    for _ in range(20):
        plain = "/v1/models/gpt-4o-mini_x~y.z"
        encoded = "".join(f"%{ord(c):02{rng.choice('xX')}}" if c != "/" and rng.random() < 0.4 else c for c in plain)
        resp = two_routes.raw(head("GET", encoded + "?limit=3"))
        assert status_of(resp) == 200, (encoded, resp[:300])
        assert mock.state.last["path"] == plain + "?limit=3", encoded


@pytest.mark.parametrize("path,why", [
    ("/v1/a%2fb", "encoded separator"),
    ("/v1/a%5Cb", "encoded separator"),
    ("/v1/a%00b", "encoded control character"),
    ("/v1/a%zzb", "not followed by two hex digits"),
    ("/v1/%c0%afadmin", "not valid UTF-8"),
    ("//v1/admin/users", "empty segment"),
    ("/v1//admin/users", "empty segment"),
    ("/v1/admin;x=1/users", "path parameters"),
    ("/v1/%2e%2e/admin/users", "segments"),
])
def test_paths_without_a_canonical_form_are_refused(two_routes, mock, path, why):
    """On 4b02e9d `//v1/admin/users`, `/v1//admin/users` and `/v1/admin;x=1/users` went to the
    route `all` (the upstream may collapse `//` or drop `;x=1`), `%00` and overlong UTF-8 went
    upstream as they were."""
    before = len(mock.state.requests)
    resp = two_routes.raw(head("GET", path))
    assert status_of(resp) == 400, resp[:300]
    err = body_of(resp)["error"]
    assert err["code"] == "invalid_path" and why in err["message"], err
    assert len(mock.state.requests) == before


def test_an_encoded_path_does_not_skip_an_approval_rule(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d `POST /ops/%65xec` skipped the rule `path: /ops/exec` and went upstream at once."""
    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [{"name": "exec", "when": {"method": ["POST"], "path": "/ops/exec"},
                            "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket"}]}
    gw = start_gateway(route("ops", "/ops/", up, upstream_ca_file, approvals=["exec"]),
                       identity=people_identity(PEOPLE), extra=rules)
    before = len(mock.state.requests)
    body = b'{"cmd":"ls"}'
    resp = gw.raw(head("POST", "/ops/%65xec", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
    assert status_of(resp) == 202, resp[:300]
    assert body_of(resp)["approval"]["rule"] == "exec"
    assert len(mock.state.requests) == before, "the held request reached the upstream"


def test_a_trailing_slash_or_an_empty_segment_does_not_skip_an_exact_path_rule(start_gateway, mock, upstream_ca_file):
    """Issue 29: `POST /ops/exec/` skipped the rule `path: /ops/exec` and went upstream at once
    (upstreams serve both as one endpoint); `/ops//exec` is refused before any rule."""
    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [
        {"name": "exec", "when": {"method": ["POST"], "path": "/ops/exec"},
         "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket"},
        {"name": "admin", "when": {"method": ["POST"], "path_prefix": "/ops/admin/"},
         "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket"},
    ]}
    gw = start_gateway(route("ops", "/ops/", up, upstream_ca_file, approvals=["exec", "admin"]),
                       identity=people_identity(PEOPLE), extra=rules)
    body = b'{"cmd":"ls"}'

    def post(path: str) -> bytes:
        return gw.raw(head("POST", path, "Content-Type: application/json", f"Content-Length: {len(body)}") + body)

    before = len(mock.state.requests)
    for path, rule in [("/ops/exec", "exec"), ("/ops/exec/", "exec"), ("/ops/ex%65c/", "exec"),
                       ("/ops/admin", "admin"), ("/ops/admin/", "admin")]:
        resp = post(path)
        assert status_of(resp) == 202, (path, resp[:300])
        assert body_of(resp)["approval"]["rule"] == rule, path
    for path in ["/ops//exec", "/ops/exec//", "//ops/exec"]:
        resp = post(path)
        assert status_of(resp) == 400, (path, resp[:300])
        assert body_of(resp)["error"]["code"] == "invalid_path", path
    assert len(mock.state.requests) == before, "a request a rule holds reached the upstream"
    # Paths the rules do not name still go through (the mock answers 404 for them).
    post("/ops/exec/status")
    assert [r["path"] for r in mock.state.requests[before:]] == ["/ops/exec/status"]


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
                                    "X-Original-URL", "X-Rewrite-URL", "X-Original-Method"])
def test_headers_that_override_method_or_path_do_not_reach_the_upstream(two_routes, mock, header):
    """On 4b02e9d `X-HTTP-Method-Override: DELETE` (and the others) were passed upstream: a
    method- or path-based rule judged a GET the upstream then ran as a DELETE of another path."""
    resp = two_routes.raw(head("GET", "/v1/models", f"{header}: DELETE /v1/admin/users"))
    assert status_of(resp) == 200, resp[:300]
    assert header.lower() not in mock.state.last["headers"], mock.state.last["headers"]


def ticket_gateway(start_gateway, mock, upstream_ca_file, grant: dict):
    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [{"name": "repo-delete", "when": {"method": ["DELETE"], "path_prefix": "/t/repos/"},
                            "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket",
                            "grant": grant}]}
    return start_gateway(route("tools", "/t/", up, upstream_ca_file, approvals=["repo-delete"]),
                         identity=people_identity(PEOPLE), extra=rules, admin={"auditors": ["security-oncall"]})


def ask_and_approve(gw, target: str) -> str:
    from test_approvals import decide

    resp = gw.raw(head("DELETE", target))
    assert status_of(resp) == 202, resp[:300]
    aid = body_of(resp)["approval"]["id"]
    assert decide(gw, "alice", aid, "approve").status_code == 200
    return aid


def test_a_ticket_lets_through_only_the_request_that_was_approved(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d a ticket approved for `DELETE /t/repos/org/sandbox?force=false` was redeemed on
    `DELETE /t/repos/org/production?force=true` (redemption compared requester, rule and body
    hash only), and the approver was never shown the query string."""
    from test_approvals import admin

    gw = ticket_gateway(start_gateway, mock, upstream_ca_file, {"scope": "once"})
    aid = ask_and_approve(gw, "/t/repos/org/sandbox?force=false")
    shown = admin(gw, "alice", "GET", f"/v1/approvals/{aid}").json()
    assert (shown["method"], shown["path"], shown["query"]) == ("DELETE", "/t/repos/org/sandbox", "force=false"), shown
    before = len(mock.state.requests)
    for other in ["/t/repos/org/production?force=true", "/t/repos/org/sandbox?force=true", "/t/repos/org/production?force=false"]:
        resp = gw.raw(head("DELETE", other, f"x-agentgate-approval: {aid}"))
        assert status_of(resp) == 403, (other, resp[:300])
        assert "different request" in body_of(resp)["error"]["message"], other
    assert len(mock.state.requests) == before, "a request the ticket was not for reached the upstream"
    resp = gw.raw(head("DELETE", "/t/repos/org/sandbox?force=false", f"x-agentgate-approval: {aid}"))
    assert status_of(resp) == 200, resp[:300]
    assert mock.state.last["path"] == "/t/repos/org/sandbox?force=false"


def test_a_window_grants_tickets_end_with_its_window(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d a ticket from a `grant: {scope: window, duration: 2s}` approval kept letting the
    request through after the window ended (only `once` tickets were ever refused again)."""
    import time

    gw = ticket_gateway(start_gateway, mock, upstream_ca_file, {"scope": "window", "duration": "2s"})
    aid = ask_and_approve(gw, "/t/repos/org/sandbox")
    approved = time.monotonic()
    again = head("DELETE", "/t/repos/org/sandbox", f"x-agentgate-approval: {aid}")
    assert status_of(gw.raw(again)) == 200
    time.sleep(max(0.0, approved + 2.5 - time.monotonic()))
    resp = gw.raw(again)
    assert status_of(resp) == 403, resp[:300]
    assert "window" in body_of(resp)["error"]["message"]


def test_the_route_key_is_not_in_records_headers(start_gateway, mock, upstream_ca_file, tmp_path):
    """On 4b02e9d the record kept the upstream's response headers as captured before the
    scrubber: a route key no detector recognises, echoed by the upstream in
    `x-echo-authorization`, was in the segment file (and in GET /v1/sessions/{id})."""
    from test_recording import records, wait_records

    key = "opaque-route-key-without-any-pattern"
    (tmp_path / "key").write_text(key)
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, key_header=False,
                             credentials={"set_headers": {"Authorization": f"Bearer ${{file:{tmp_path / 'key'}}}"}}))
    with gw.client() as c:
        r = c.get("/v1/echo")
        assert r.status_code == 200 and key not in r.headers.get("x-echo-authorization", "x")
    wait_records(gw, 1)
    stored = "".join(p.read_text() for p in records(gw).glob("seg-*.jsonl"))
    assert "x-echo-authorization" in stored
    assert key not in stored, stored[-800:]


def test_the_route_key_echoed_escaped_never_reaches_the_agent(start_gateway, mock, upstream_ca_file):
    """The scrubber starred only the key's own bytes: an upstream that echoed it as JSON `\\u`
    escapes, percent-encoded in a URL (body or header) or as HTML character references gave
    it to the agent, whose JSON parser (or URL decoding, or browser) reads it back."""
    import html
    import urllib.parse

    from gwconfig import ROUTE_KEY

    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    with gw.client() as c:
        r = c.get("/v1/escaped-echo")
    assert r.status_code == 200, r.text
    assert mock.state.last["headers"]["authorization"] == f"Bearer {ROUTE_KEY}"
    got = r.json()  # the \\u escapes decoded, as the agent's SDK decodes them
    seen = [got["json"], urllib.parse.unquote(got["url"]), html.unescape(got["html"]),
            urllib.parse.unquote(r.headers["x-echo-url"])]
    for s in seen:
        assert ROUTE_KEY not in s, seen
    assert all("*" in s for s in seen), seen


def test_a_malformed_upstream_head_is_not_quoted(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d an upstream's malformed response head was quoted in the agent's 502 message
    and in Pingora's error line on stderr, with the route key the upstream echoed in it."""
    from gwconfig import ROUTE_KEY

    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    with gw.client() as c:
        r = c.get("/v1/malformed-echo")
    assert r.status_code == 502, r.text
    assert ROUTE_KEY not in r.text and "upstream_protocol_error" in r.text, r.text
    gw.wait_session_lines(lambda l: l.get("status") == 502)
    err = gw.stderr_path.read_text()
    assert ROUTE_KEY not in err, err[-1500:]


def test_free_text_cannot_forge_a_log_line(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d an approver's reason with a newline wrote a second, forged line to the log."""
    from test_approvals import admin, decide

    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [{"name": "exec", "when": {"method": ["POST"], "path": "/ops/exec"},
                            "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket"}]}
    gw = start_gateway(route("ops", "/ops/", up, upstream_ca_file, approvals=["exec"]),
                       identity=people_identity(PEOPLE), extra=rules, server={"threads": 2})
    body = b'{"cmd":"ls"}'
    resp = gw.raw(head("POST", "/ops/exec", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
    aid = body_of(resp)["approval"]["id"]
    forged = "2026-12-04T00:00:00.000Z INFO  agentgate::approval: approval apr_forged approved by root"
    assert decide(gw, "alice", aid, "deny", f"no\n{forged}").status_code == 200
    assert admin(gw, "alice", "GET", f"/v1/approvals/{aid}").json()["state"] == "denied"
    from gateway_driver import eventually

    lines = eventually(lambda: gw.stderr_path.read_text().splitlines(), lambda ls: any("forged" in l for l in ls))
    assert any("forged" in l for l in lines), "the decision was not logged"
    assert not any(l.startswith(forged[:30]) for l in lines), [l for l in lines if "forged" in l]


def test_the_session_line_masks_the_path(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d the session line on stdout carried the raw path: an e-mail and a key in the
    path were masked in records but not there."""
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    with gw.client() as c:
        c.get("/v1/models/jane.doe@example.com/sk-proj-abcdefghijklmnopqrstuvwxyz0123")
    lines = gw.wait_session_lines(lambda l: "/v1/models/" in l.get("path", ""))
    assert lines, gw.session_lines()
    line = json.dumps(lines[-1])
    assert "/v1/models/" in line, line
    assert "jane.doe@example.com" not in line and "sk-proj-abcdefghijklmnopqrstuvwxyz0123" not in line, line


@pytest.fixture
def masked(start_gateway, mock, upstream_ca_file):
    from gwconfig import REDACT_POLICY

    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, masking="default"),
                         extra=REDACT_POLICY)


KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def post_raw(gw, body: bytes, ctype: str = "application/json") -> bytes:
    return gw.raw(head("POST", "/v1/chat/completions", f"Content-Type: {ctype}", f"Content-Length: {len(body)}") + body)


def test_a_secret_in_a_json_key_is_masked(masked, mock):
    """On 4b02e9d request masking skipped object keys: `"metadata": {"sk-proj-…": "x"}` went
    upstream (and into records) as it was."""
    with masked.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {KEY: "x"}})
    assert r.status_code == 200, r.text
    sent = mock.state.last["body"].decode()
    assert KEY not in sent and "REDACTED" in sent, sent
    json.loads(sent)


@pytest.mark.parametrize("name,body,status,code", [
    ("escaped secret in invalid JSON", b'{"messages":[{"content":"\\u0073k-proj-abcdefghijklmnopqrstuvwxyz0123456789"}], ', 400, "invalid_json"),
    ("lone surrogate", b'{"messages":[{"content":"\\ud800 \\u0073k-proj-abcdefghijklmnopqrstuvwxyz0123456789"}]}', 400, "invalid_json"),
    ("nested past the limit", b'{"a":' * 200 + b'1' + b'}' * 200, 400, "json_too_deep"),
    ("UTF-16", json.dumps({"messages": [{"content": KEY}]}).encode("utf-16-le"), 415, "uninspectable_body"),
    ("duplicate keys", b'{"model":"m","messages":[{"content":"hi"}],"messages":[]}', 400, "duplicate_json_key"),
])
def test_bodies_masking_cannot_read_are_refused(masked, mock, name, body, status, code):
    """On 4b02e9d each of these was forwarded: invalid JSON, a lone surrogate and over-deep
    nesting fell back to text masking, which cannot see `\\u0073k-…` (`sk-…` once the upstream
    decodes it); UTF-16 passed as 'text' with a NUL between letters; duplicate keys let the
    decision read one `messages` and an upstream parser the other."""
    before = len(mock.state.requests)
    resp = post_raw(masked, body, "application/json" if name != "UTF-16" else "text/plain")
    assert status_of(resp) == status, (name, resp[:300])
    assert body_of(resp)["error"]["code"] == code, resp[:300]
    assert len(mock.state.requests) == before, f"{name}: the body reached the upstream"


def test_duplicate_keys_cannot_hide_a_tool_from_an_approval_rule(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d `{"tools":[delete_records],"tools":[]}` on a route with an approval rule on the
    tool name went upstream at once: the rule read the last `tools` (empty), a first-wins parser
    upstream reads delete_records."""
    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [{"name": "destructive", "when": {"method": ["POST"],
                            "json": {"tools[*].function.name": {"any_of": ["delete_records"]}}},
                            "approvers": {"groups": ["security-oncall"]}, "timeout": "30s", "mode": "ticket"}]}
    gw = start_gateway(route("mock", "/v1/", up, upstream_ca_file, approvals=["destructive"]),
                       identity=people_identity(PEOPLE), extra=rules)
    before = len(mock.state.requests)
    body = b'{"model":"m","tools":[{"type":"function","function":{"name":"delete_records"}}],"tools":[],"messages":[]}'
    resp = post_raw(gw, body)
    assert status_of(resp) == 400, resp[:300]
    assert body_of(resp)["error"]["code"] == "duplicate_json_key"
    assert len(mock.state.requests) == before


def test_approvals_an_agent_opens_are_bounded(start_gateway, mock, upstream_ca_file):
    """On 4b02e9d a 2 MiB tool name was copied whole into the approval (memory, approvals.jsonl,
    every GET /v1/approvals the console polls), and one caller could open pending approvals
    without limit."""
    from test_approvals import admin

    up = f"https://127.0.0.1:{mock.port}"
    rules = {"approvals": [{"name": "tools", "when": {"method": ["POST"], "json": {"tools[*].type": {"any_of": ["function"]}}},
                            "approvers": {"groups": ["security-oncall"]}, "timeout": "5m", "mode": "ticket"}]}
    gw = start_gateway(route("mock", "/v1/", up, upstream_ca_file, approvals=["tools"]),
                       identity=people_identity(PEOPLE), extra=rules, admin={"auditors": ["security-oncall"]})
    huge = "t" * (2 << 20)
    body = json.dumps({"model": "m", "tools": [{"type": "function", "function": {"name": huge}}], "messages": []}).encode()
    resp = post_raw(gw, body)
    assert status_of(resp) == 202, resp[:300]
    listed = admin(gw, "alice", "GET", "/v1/approvals?state=pending")
    assert len(listed.content) < 64 << 10, f"{len(listed.content)} bytes for one approval"
    assert listed.json()[0]["summary"]["tools"][0].endswith("…")
    small = json.dumps({"model": "m", "tools": [{"type": "function", "function": {"name": "x"}}], "messages": []}).encode()
    statuses = [status_of(post_raw(gw, small)) for _ in range(100)]
    assert statuses[:99] == [202] * 99 and statuses[99] == 429, statuses[-3:]
    refused = post_raw(gw, small)
    assert body_of(refused)["error"]["code"] == "too_many_pending_approvals"


def h2_post(gw, path: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[list, bytes, list]:
    """One HTTP/2 request to the gateway with the `h2` package (httpx does not show trailers):
    (response headers, body, trailers)."""
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        req = [(":method", "POST"), (":path", path), (":scheme", "https"), (":authority", "127.0.0.1"),
               ("authorization", f"Bearer {AGENT_TOKEN}"), ("content-type", "application/json"),
               ("content-length", str(len(body))), *headers]
        conn.send_headers(1, req)
        conn.send_data(1, body, end_stream=True)
        s.sendall(conn.data_to_send())
        resp_headers, data, trailers, done = [], b"", [], False
        while not done:
            chunk = s.recv(65536)
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    resp_headers = ev.headers
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = ev.headers
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            s.sendall(conn.data_to_send())
        return resp_headers, data, trailers


def test_http2_trailers_do_not_carry_the_route_key(start_gateway, upstream_ca_file, rust_mock):
    """On 4b02e9d HTTP/2 response trailers went to the agent unfiltered: the route key an upstream
    echoed in a trailer reached the agent."""
    from gwconfig import ROUTE_KEY

    port = rust_mock()
    gw = start_gateway(route("rust", "/v1/", f"https://127.0.0.1:{port}", upstream_ca_file))
    headers, body, trailers = h2_post(gw, "/v1/chat/completions", b'{"model":"m","messages":[]}', [("x-mock-trailer-echo", "1")])
    assert dict(headers).get(b":status") == b"200", headers
    names = {k.decode(): v.decode() for k, v in trailers}
    assert names.get("x-mock-done") == "1", (names, body[:200])
    assert "x-echo-authorization" in names and ROUTE_KEY not in names["x-echo-authorization"], names


def test_a_masked_json_answer_that_ends_with_trailers_reaches_the_agent(start_gateway, upstream_ca_file, rust_mock):
    """A JSON answer is masked whole at its last chunk; one that ended with HTTP/2 trailers had
    no last chunk, so on the session's start binary the agent got the response head and an empty
    body (issue 22). Now the masked answer goes out when the trailers come (which Pingora then
    does not write), the credential the trailers echo with it nowhere."""
    from gwconfig import REDACT_POLICY, ROUTE_KEY

    port = rust_mock()
    gw = start_gateway(route("rust", "/v1/", f"https://127.0.0.1:{port}", upstream_ca_file, masking="default"),
                       extra=REDACT_POLICY)
    headers, body, trailers = h2_post(gw, "/v1/chat/completions", b'{"model":"m","messages":[]}', [("x-mock-trailer-echo", "1")])
    assert dict(headers).get(b":status") == b"200", headers
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"], answer
    assert ROUTE_KEY.encode() not in body + b"".join(k + v for k, v in trailers)



def _unescaped(text: str, layers: int) -> list[str]:
    """`text` and its views with up to `layers` layers of `\\\\`, `\\\\uXXXX`, `\\\\/` and `%HH`
    escapes decoded, as an agent, a tool or a reader of the record may decode them."""
    import urllib.parse

    def once(t: str) -> list[str]:
        u = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), t)
        return [u.replace("\\/", "/").replace("\\\\", "\\"), t.replace("\\\\", "\\"), urllib.parse.unquote(t)]
    views = [text]
    for _ in range(layers):
        views = views + [v for t in views for v in once(t)]
    return views


def test_a_twice_escaped_secret_in_a_record_cut_by_max_body_is_masked(start_gateway, mock, upstream_ca_file):
    """A tool call's `arguments` is JSON inside a JSON string, so a key in it is escaped twice
    (`\\\\u0073k-proj-…`). Masking a JSON body decodes a string's escapes and then one layer
    more, and finds it; a body the record keeps cut at `recording.max_body` is no longer JSON and
    was masked as text, one layer only: on the session's start binary the key was in the segment
    file, readable after decoding the record twice (`assert 'sk-proj-…' not in …`)."""
    from test_recording import records, wait_records

    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
    escaped = "".join(f"\\\\u{ord(c):04x}" for c in key[:2]) + key[2:]  # `\\u0073\\u006b-proj-…` in the body
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       extra={"recording": {"max_body": "1KiB"}})
    arguments = '{\\"text\\": \\"' + escaped + '\\"}'
    body = ('{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", '
            '"function": {"name": "deploy", "arguments": "' + arguments + '"}}]}], "pad": "' + "x" * 3000 + '"}')
    assert key in json.loads(json.loads(body)["messages"][0]["tool_calls"][0]["function"]["arguments"])["text"] \
        .encode().decode("unicode_escape")
    whole = body.replace("x" * 3000, "short")  # kept whole: JSON, masked as such
    with gw.client() as c:
        for b in (body, whole):
            assert c.post("/v1/chat/completions", content=b.encode(), headers={"content-type": "application/json"}).status_code == 200
    wait_records(gw, 2)
    stored = "".join(p.read_text() for p in records(gw).glob("seg-*.jsonl"))
    assert [json.loads(line)["request"]["truncated"] for line in stored.splitlines()] == [True, False]
    for view in _unescaped(stored, 3):
        assert key not in view, stored[:1500]


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "text/event-stream"])
def test_the_route_key_echoed_escaped_in_a_body_that_is_not_json_is_not_recorded(start_gateway, mock, upstream_ca_file, tmp_path, content_type):
    """A recorded route without masking: the upstream echoes the route's key (one no detector
    knows, with slashes) `\\u`-escaped, percent-encoded and with `\\/` for each slash, in a body
    that is not valid JSON, each form cut across two chunks. The live scrubber stars every form
    before the capture, so the record (masked as text by the writer, which does not know the
    route's keys) never holds it: a guard for the record's text fallback (passes on the session's
    start binary)."""
    from test_recording import records, wait_records

    key = "opaque/route/key-without-any-pattern/42"
    (tmp_path / "key").write_text(key)
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, key_header=False,
                             credentials={"set_headers": {"Authorization": f"Bearer ${{file:{tmp_path / 'key'}}}"}}))
    forms = ["".join(f"\\u{ord(c):04x}" for c in key), "".join(f"%{b:02X}" for b in key.encode()), key.replace("/", "\\/")]
    for form in forms:
        text = f"data: not json {{ echo={form} ;\n\n"
        half = len(text) // 2
        with gw.client() as c:
            r = c.post("/v1/raw", json={"content_type": content_type,
                                        "chunks": [{"hex": text[:half].encode().hex()}, {"hex": text[half:].encode().hex()}]})
        assert r.status_code == 200, r.text
        assert not any(key in v for v in _unescaped(r.text, 1)), r.text
    wait_records(gw, len(forms))
    stored = "".join(p.read_text() for p in records(gw).glob("seg-*.jsonl"))
    assert stored.count("*" * 10) >= len(forms), stored[-1000:]
    assert not any(key in v for v in _unescaped(stored, 3)), stored[-1000:]
