"""Hosted MCP tools in the Responses API (`routes[].hosted_mcp`): the real OpenAI Python SDK's
`client.responses.create(tools=[{"type": "mcp", ...}])` through the gateway to the mock upstream.
A server the route allows goes through (with `require_approval` forced to "always" where the route
says so); any other is refused 403 in the API's error shape and nothing goes upstream, however
the request spells it (case, userinfo, a duplicate `tools` key, another content type, nested)."""

from __future__ import annotations

import json
import ssl

import httpx
import openai
import pytest

from gwconfig import AGENT_TOKEN, route

ALLOWED = "https://mcp.example.com/sse"
HOSTED = {"allow": ["https://mcp.example.com/*", "https://*.tools.example/mcp"], "connectors": ["connector_googledrive"],
          "require_approval": "always"}


@pytest.fixture
def hosted(start_gateway, mock, upstream_ca_file):
    def start(policy: dict | None = None, route_fields: dict | None = None, **config):
        r = route("openai", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file,
                  hosted_mcp=policy if policy is not None else HOSTED, **(route_fields or {}))
        return start_gateway(r, **config)

    return start


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=AGENT_TOKEN, max_retries=0,
                         http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(gw.ca_file))))


def mcp_tool(url: str = ALLOWED, **kw) -> dict:
    return {"type": "mcp", "server_label": "docs", "server_url": url, "require_approval": "never", **kw}


def upstream_tools(mock) -> list[dict]:
    return json.loads(mock.state.requests[-1]["body"])["tools"]


def test_an_allowed_server_goes_upstream_with_approval_forced(hosted, mock):
    """The agent asked for no approval; the route forces it, so the provider (the mock, acting
    as OpenAI does) answers with an `mcp_approval_request`, which the agent approves as usual."""
    gw = hosted()
    client = sdk(gw)
    fn = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    r = client.responses.create(model="mock-model", input="what do the docs say?", tools=[mcp_tool(), fn])
    [ask] = r.output
    assert ask.type == "mcp_approval_request" and ask.server_label == "docs" and ask.name == "search", r.output
    [mcp, fn] = upstream_tools(mock)
    assert mcp == {**mcp_tool(), "require_approval": "always"}
    assert "require_approval" not in fn
    approve = {"type": "mcp_approval_response", "approve": True, "approval_request_id": ask.id}
    done = client.responses.create(model="mock-model", input=[approve], tools=[mcp_tool()], previous_response_id=r.id)
    assert [o.type for o in done.output] == ["mcp_call", "message"] and done.output_text == "The docs say hello."
    assert done.output[0].output == f"searched {ALLOWED}"
    # The object form (`never` for some tools) is replaced too, and streaming requests alike.
    with client.responses.create(model="mock-model", input="hi", stream=True,
                                 tools=[mcp_tool("https://a.tools.example/mcp", require_approval={"never": {"tool_names": ["rm"]}})]) as s:
        assert [e.type for e in s][-1] == "response.completed"
    assert upstream_tools(mock)[0]["require_approval"] == "always"
    assert gw.wait_metric("agentgate_hosted_mcp_requests_total", 3, route="openai", outcome="approval_forced") == 3


def test_without_forcing_the_agents_choice_stands(hosted, mock):
    gw = hosted({"allow": ["https://mcp.example.com/*"]})
    r = sdk(gw).responses.create(model="mock-model", input="hi", tools=[mcp_tool()])
    assert upstream_tools(mock) == [mcp_tool()]
    assert [o.type for o in r.output] == ["mcp_call", "message"], "no approval asked"


@pytest.mark.parametrize("url", [
    "https://evil.example/sse",
    "https://mcp.example.com@evil.example/sse",
    "https://mcp.example.com.evil.example/sse",
    "https://mcp.example.com:8443/sse",
    "http://mcp.example.com/sse",
    "https://tools.example/mcp",
    "https://a.tools.example/x/../mcp",
])
def test_a_server_not_allowed_is_refused_and_nothing_goes_upstream(hosted, mock, url):
    gw = hosted()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(gw).responses.create(model="mock-model", input="hi", tools=[mcp_tool(), mcp_tool(url)])
    err = refused.value
    assert err.status_code == 403 and err.code == "mcp_server_not_allowed", err.body
    assert "route `openai`" in err.message and "hosted_mcp.allow" in err.message
    assert err.body["type"] == "permission_error"
    assert mock.state.requests == []
    assert gw.wait_metric("agentgate_hosted_mcp_requests_total", 1, route="openai", outcome="refused") == 1


def test_spellings_the_upstream_reads_alike_are_decided_alike(hosted, mock):
    """The spellings a parser might read as an allowed server (or not as a tool at all) are
    decided on the document the upstream reads."""
    gw = hosted()
    evil = mcp_tool("https://evil.example/sse")
    ok_variants = [mcp_tool("HTTPS://MCP.Example.COM./sse"), mcp_tool("https://mcp.example.com:443/%73se")]
    with gw.client() as c:
        post = lambda content, ct="application/json": c.post("/v1/responses", content=content, headers={"content-type": ct})
        good = post(json.dumps({"model": "m", "input": "hi", "tools": ok_variants}))
        assert good.status_code == 200, good.text
        assert [t["require_approval"] for t in upstream_tools(mock)] == ["always", "always"]
        mock.state.requests.clear()
        refused = {
            # A second `tools` key: one parser would take the first, another the last.
            "duplicate tools": (f'{{"model":"m","input":"hi","tools":{json.dumps([mcp_tool()])},"tools":{json.dumps([evil])}}}', "application/json", 400, "duplicate_json_key"),
            "duplicate server_url": ('{"model":"m","tools":[{"type":"mcp","server_label":"x","server_url":"https://mcp.example.com/","server_url":"https://evil.example/"}]}', "application/json", 400, "duplicate_json_key"),
            "type in capitals": (json.dumps({"model": "m", "tools": [{**evil, "type": "MCP"}]}), "application/json", 403, "mcp_server_not_allowed"),
            "escaped type": ('{"model":"m","tools":[{"type":"\\u006dcp","server_label":"x","server_url":"https://evil.example/"}]}', "application/json", 403, "mcp_server_not_allowed"),
            "escaped url": ('{"model":"m","tools":[{"type":"mcp","server_label":"x","server_url":"https:\\/\\/evil.example\\/"}]}', "application/json", 403, "mcp_server_not_allowed"),
            "text/plain": (json.dumps({"model": "m", "tools": [evil]}), "text/plain", 403, "mcp_server_not_allowed"),
            "no content type": (json.dumps({"model": "m", "tools": [evil]}), "", 403, "mcp_server_not_allowed"),
            "byte-order mark": ("\ufeff" + json.dumps({"model": "m", "tools": [evil]}), "application/json", 400, "invalid_json"),
            "nested": (json.dumps({"model": "m", "session": {"tools": [evil]}}), "application/json", 403, "mcp_server_not_allowed"),
            "not a string": (json.dumps({"model": "m", "tools": [{**evil, "server_url": {"url": ALLOWED}}]}), "application/json", 403, "mcp_server_not_allowed"),
            "a connector not allowed": (json.dumps({"model": "m", "tools": [{"type": "mcp", "server_label": "g", "connector_id": "connector_gmail"}]}), "application/json", 403, "mcp_connector_not_allowed"),
            "huge": (json.dumps({"model": "m", "tools": [{"type": "function", "name": f"f{i}"} for i in range(20000)] + [evil]}), "application/json", 403, "mcp_server_not_allowed"),
        }
        for name, (body, ct, status, code) in refused.items():
            r = post(body.encode(), ct)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (name, r.text[:300])
    assert mock.state.requests == [], [json.loads(r["body"]) for r in mock.state.requests][:1]
    # A multipart upload's parts that could be JSON are decided too (a batch file's line).
    with gw.client() as c:
        up = c.post("/v1/files", files={"file": ("x.jsonl", b'{"type":"mcp","server_url":"https://evil.example/"}\n')}, data={"purpose": "batch"})
    assert up.status_code == 403 and mock.state.requests == []


def test_masking_and_hosted_mcp_together(hosted, mock):
    """On a masking route the decision is made on the masked body, the one the upstream gets."""
    from gwconfig import REDACT_POLICY
    gw = hosted(route_fields={"masking": "default"}, extra=REDACT_POLICY)
    r = sdk(gw).responses.create(model="mock-model", input="mail jane.doe@example.com", tools=[mcp_tool()])
    assert r.output[0].type == "mcp_approval_request"
    sent = json.loads(mock.state.requests[-1]["body"])
    assert "jane.doe@example.com" not in json.dumps(sent) and sent["tools"][0]["require_approval"] == "always"


def test_a_large_request_is_decided_and_rewritten_too(hosted, mock):
    """Past the 64 KiB the session itself replays, the decided body goes out through a
    subrequest: it carries the forced approval as well."""
    gw = hosted()
    history = [{"role": "user", "content": "x" * 1000} for _ in range(200)]
    r = sdk(gw).responses.create(model="mock-model", input=history, tools=[mcp_tool()])
    assert r.output[0].type == "mcp_approval_request"
    assert len(mock.state.requests[-1]["body"]) > 200_000
    assert upstream_tools(mock)[0]["require_approval"] == "always"


# --- found by the red team: other carriers of an MCP server, and a hidden encoding ----------

EVIL = "https://evil.example/sse"


def test_a_second_content_encoding_header_does_not_hide_a_compressed_body(hosted, mock):
    """Failed with the upstream receiving `Content-Encoding: identity` + `Content-Encoding: gzip`
    and the gzip of a tool naming evil.example: only the first header was read."""
    import gzip

    gw = hosted()
    body = gzip.compress(json.dumps({"model": "m", "input": "hi", "tools": [mcp_tool(EVIL)]}).encode())
    head = (f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n"
            f"Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    answer = gw.raw(head + body)
    assert answer.startswith(b"HTTP/1.1 415"), answer[:300]
    assert b"compressed_body_refused" in answer and b"identity, gzip" in answer
    assert mock.state.requests == []


def test_a_transfer_coding_other_than_chunked_is_refused(hosted, mock):
    """Failed with the gzip bytes forwarded as the body with no encoding named at all."""
    gw = hosted()
    chunk = b'{"model":"m","input":"hi"}'
    req = (f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n"
           f"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    answer = gw.raw(req)
    assert answer.startswith(b"HTTP/1.1 501"), answer[:300]
    assert b"transfer_coding_refused" in answer and mock.state.requests == []


def test_servers_named_inside_multipart_bodies_are_decided(hosted, mock):
    """Failed with the upstream receiving both: a realtime call's `session` part and a batch
    file's JSON lines naming evil.example passed a multipart body undecided."""
    gw = hosted()
    session = {"type": "realtime", "model": "gpt-realtime", "tools": [mcp_tool(EVIL)]}
    batch = "\n".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/responses",
                                  "body": {"model": "m", "input": "hi", "tools": [mcp_tool(EVIL if i == 2 else ALLOWED)]}})
                      for i in range(3))
    with gw.client() as c:
        r = c.post("/v1/realtime/calls", files={"sdp": (None, "v=0\r\n"), "session": (None, json.dumps(session), "application/json")})
        assert r.status_code == 403 and r.json()["error"]["code"] == "mcp_server_not_allowed", r.text
        r = c.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", batch.encode(), "application/jsonl")})
        assert r.status_code == 403 and r.json()["error"]["code"] == "mcp_server_not_allowed", r.text
        # Framing a lenient parser could read differently is refused, not guessed at.
        bad = b"--b\nContent-Disposition: form-data; name=\"session\"\n\n" + json.dumps(session).encode() + b"\n--b--\n"
        r = c.post("/v1/realtime/calls", content=bad, headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart", r.text
    assert mock.state.requests == []
    # Allowed servers pass, with approval forced inside the part; other parts are left as sent.
    ok = {**session, "tools": [mcp_tool()]}
    with gw.client() as c:
        c.post("/v1/realtime/calls", files={"sdp": (None, "v=0\r\n"), "session": (None, json.dumps(ok), "application/json")})
    sent = mock.state.requests[-1]["body"]
    sent = sent.decode() if isinstance(sent, bytes) else sent
    assert '"require_approval":"always"' in sent and "v=0\r\n" in sent and '"never"' not in sent


def test_anthropics_mcp_connector_is_decided(hosted, mock):
    """Failed with a 200: `mcp_servers: [{type: url, url: evil}]` was never read."""
    gw = hosted()
    body = {"model": "claude-sonnet-4", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}],
            "mcp_servers": [{"type": "url", "url": EVIL, "name": "evil"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "evil"}]}
    with gw.client(headers={"anthropic-beta": "mcp-client-2025-11-20"}) as c:
        r = c.post("/v1/messages", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "mcp_server_not_allowed", r.text
        assert mock.state.requests == []
        body["mcp_servers"][0]["url"] = ALLOWED
        assert c.post("/v1/messages", json=body).status_code == 200


def test_an_mcp_tool_choice_is_not_taken_for_a_tool(hosted, mock):
    """Failed with 403 mcp_server_missing: the tool_choice object was decided as a tool."""
    gw = hosted()
    choice = {"type": "mcp", "server_label": "docs", "name": "search"}
    with gw.client() as c:
        r = c.post("/v1/responses", json={"model": "mock-model", "input": "hi", "tools": [mcp_tool()], "tool_choice": choice})
    assert r.status_code == 200, r.text
    assert json.loads(mock.state.requests[-1]["body"])["tool_choice"] == choice
