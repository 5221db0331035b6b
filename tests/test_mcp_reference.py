"""MCP routes in front of the official MCP reference server, `@modelcontextprotocol/server-everything`
(npm, pinned in tests/mcp_js), run on loopback over TLS, and with the TypeScript SDK's client
(`@modelcontextprotocol/sdk`) beside the `mcp` Python client: per-group tool lists, a hidden
tool refused with a JSON-RPC error and nothing upstream, arguments masked before the server (its
`echo` tool shows what it got), its sampling request under `server_requests: {sampling: deny}`,
and a held tools/call approved."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.types import CreateMessageResult, TextContent

from gateway_driver import Gateway
from gwconfig import AGENT_TOKEN, ROUTE_KEY, people_identity, person_token, route
from net import free_port
from test_approvals import wait_pending
from test_mcp import APPROVERS, PEOPLE, McpUpstream, cli, server_cert

HERE = pathlib.Path(__file__).resolve().parent
JS = HERE / "mcp_js"
PATH = "/mcp/everything"
# server-everything's tools, as its grants see them: agents get two, release bots every `get-*`
# (get-env among them: the server's environment, a tool an agent should not have).
POLICY = {"tools": [
    {"name": "echo", "groups": ["agents"]},
    {"name": "get-sum", "groups": ["agents"]},
    {"name": "trigger-sampling-request", "groups": ["agents"]},
    {"name": "get-*", "groups": ["release-bots"]},
]}
SECRET = "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5"
EMAIL = "jane.doe@example.com"

class Everything(McpUpstream):
    """tests/mcp_js/everything.mjs in a process: server-everything over TLS with a certificate
    from the tests' upstream CA; every HTTP request it gets is a line in its log (`log()`;
    `url` and `stop()` as for the FastMCP server)."""

    def __init__(self, ca, tmp: pathlib.Path) -> None:
        self.port = free_port()
        cert, key = server_cert(ca, tmp, "everything")
        self.log_path = tmp / "everything.jsonl"
        self.log_path.write_text("")
        out, err = tmp / "everything.out", tmp / "everything.err"
        self.proc = subprocess.Popen([shutil.which("node") or "node", str(JS / "everything.mjs"), str(self.port), str(cert), str(key),
                                      str(self.log_path)], cwd=JS, stdout=open(out, "wb"), stderr=open(err, "wb"))
        deadline = time.monotonic() + 30
        while "listening" not in out.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)

    def posts(self) -> list:
        return [json.loads(e["body"]) for e in self.log() if e["http"] == "POST"]

    def tool_calls(self) -> list[dict]:
        return [p["params"] for p in self.posts() if isinstance(p, dict) and p.get("method") == "tools/call"]


@pytest.fixture
def everything(upstream_ca, tmp_path):
    d = tmp_path / "everything"
    d.mkdir()
    srv = Everything(upstream_ca, d)
    yield srv
    srv.stop()


@pytest.fixture
def everything_gateway(start_gateway, everything, upstream_ca_file):
    """A gateway with route `everything` (PATH -> server-everything) under POLICY (or `policy`);
    `route_fields` and `config` add to the route and the file; `routes` adds routes."""

    def start(policy: dict | None = None, route_fields: dict | None = None, routes: list | None = None, **config):
        r = route("everything", PATH, everything.url, upstream_ca_file, access={"groups": ["agents", "release-bots"]},
                  mcp=policy if policy is not None else POLICY, **(route_fields or {}))
        config.setdefault("identity", people_identity(PEOPLE))
        return start_gateway([r, *(routes or [])], **config), everything

    return start


def run_client(gw: Gateway, scenario, token: str = AGENT_TOKEN, path: str = PATH, **session_kw):
    """`scenario(session)` in an initialized `mcp` client session through the gateway."""

    async def main():
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        async with httpx.AsyncClient(verify=ctx, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30, read=60)) as http:
            async with streamable_http_client(f"{gw.base_url}{path}", http_client=http) as (read, write, session_id):
                async with ClientSession(read, write, **session_kw) as s:
                    await s.initialize()
                    return await scenario(s), session_id()

    return asyncio.run(main())


async def tool_names(s: ClientSession) -> list[str]:
    return sorted(t.name for t in (await s.list_tools()).tools)


def test_tool_lists_are_filtered_per_group(everything_gateway):
    gw, up = everything_gateway()
    agent, _ = run_client(gw, tool_names)
    assert agent == ["echo", "get-sum"]
    bot, _ = run_client(gw, tool_names, token=person_token("release-bot"))
    assert "get-env" in bot and "get-sum" in bot and "echo" not in bot and all(n.startswith("get-") for n in bot), bot
    # The server offered both callers everything: the gateway took out what each may not use.
    listed = [p for p in up.posts() if isinstance(p, dict) and p.get("method") == "tools/list"]
    assert len(listed) == 2


def test_a_hidden_tool_is_refused_with_a_jsonrpc_error_and_nothing_upstream(everything_gateway):
    gw, up = everything_gateway()

    async def scenario(s: ClientSession):
        ok = await s.call_tool("get-sum", {"a": 2, "b": 3})
        with pytest.raises(McpError) as refused:
            await s.call_tool("get-env", {})
        return ok, refused.value

    (ok, refused), _ = run_client(gw, scenario)
    assert "5" in ok.content[0].text, ok
    assert refused.error.data == {"agentgate": "tool_not_allowed"}
    assert "tool `get-env` is not available to this caller on route `everything`" in refused.error.message
    assert [c["name"] for c in up.tool_calls()] == ["get-sum"]
    assert not any("get-env" in e.get("body", "") for e in up.log())
    assert gw.wait_metric("agentgate_mcp_calls_total", 1, route="everything", tool="get-env", outcome="refused") == 1
    # The server got the route's credential on every request, never the agent's token.
    assert {e["authorization"] for e in up.log()} == {f"Bearer {ROUTE_KEY}"}


def test_tool_arguments_are_masked_before_the_server(everything_gateway):
    masking = {"masking": {"policies": {"default": {"request": {"secrets": "redact", "pii": "redact"},
                                                    "response": {"secrets": "redact", "pii": "redact"}}}}}
    gw, up = everything_gateway(route_fields={"masking": "default"}, extra=masking)
    echoed, _ = run_client(gw, lambda s: s.call_tool("echo", {"message": f"key {SECRET} from {EMAIL}"}))
    [call] = up.tool_calls()
    got = call["arguments"]["message"]
    assert SECRET not in got and EMAIL not in got and "[REDACTED" in got, got
    # echo answers with what it received: the redacted text.
    assert echoed.content[0].text == f"Echo: {got}"
    assert SECRET not in up.log_path.read_text() and EMAIL not in up.log_path.read_text()


def sampling_client(asked: list):
    async def sample(context, params) -> CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="a sampled answer"), model="test-model")

    return sample


def test_a_sampling_request_from_the_server_is_denied_by_policy(everything_gateway, everything, upstream_ca_file):
    """`server_requests: {sampling: deny}` (the default): the gateway takes `sampling` out of the
    client's initialize, so server-everything never offers its sampling tool, and a sampling
    request the server sends anyway (here: on a session it began through a route that allows
    sampling) is dropped from the answer: the client never sees it. A route with `sampling:
    allow` beside it shows the same client does answer sampling when it gets the request."""
    allow = {**POLICY, "server_requests": {"sampling": "allow"}}
    gw, up = everything_gateway(routes=[route("open", "/mcp/open", everything.url, upstream_ca_file, mcp=allow)])
    asked: list[str] = []

    # Through the strict route the server never learns the client could sample.
    names, _ = run_client(gw, tool_names, sampling_callback=sampling_client(asked))
    assert "trigger-sampling-request" not in names and "echo" in names
    inits = [p for p in up.posts() if isinstance(p, dict) and p.get("method") == "initialize"]
    assert "sampling" not in inits[-1]["params"]["capabilities"], inits[-1]

    # Through the open route it does, and the client answers the server's request.
    async def sample(s: ClientSession):
        return await tool_names(s), await s.call_tool("trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})

    (names, sampled), session_id = run_client(gw, sample, path="/mcp/open", sampling_callback=sampling_client(asked))
    assert "trigger-sampling-request" in names
    assert "a sampled answer" in sampled.content[0].text and len(asked) == 1

    # The same call on a session the open route began, sent through the strict route: the server
    # asks for sampling on the call's answer stream, and the gateway drops that request.
    def strict_call(sid: str) -> list[str]:
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "x"}}}
        headers = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        seen = []
        with gw.client() as c, c.stream("POST", PATH, json=call, headers=headers, timeout=httpx.Timeout(10, read=3)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), (r.status_code, r.headers)
            try:
                for line in r.iter_lines():
                    seen.append(line)
            except httpx.ReadTimeout:
                pass  # the server waits for a sampling answer that never comes
        return seen

    async def across_routes():
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        async with httpx.AsyncClient(verify=ctx, headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=30) as http:
            async with streamable_http_client(f"{gw.base_url}/mcp/open", http_client=http) as (read, write, session_id):
                async with ClientSession(read, write, sampling_callback=sampling_client(asked)) as s:
                    await s.initialize()
                    # Listed once the server registered it (after the client's `initialized`).
                    assert "trigger-sampling-request" in await tool_names(s)
                    return await asyncio.to_thread(strict_call, session_id())

    seen = asyncio.run(across_routes())
    assert gw.wait_metric("agentgate_mcp_server_requests_dropped_total", 1, route="everything", method="sampling/createMessage") == 1, seen
    assert not any("sampling/createMessage" in l for l in seen), seen
    assert len(asked) == 1, "the client was never asked again"


class ToolCallInBackground(threading.Thread):
    """One `mcp` client session calling `tool` through the gateway in a thread."""

    def __init__(self, gw: Gateway, tool: str, arguments: dict) -> None:
        super().__init__(daemon=True)
        self.gw, self.tool, self.arguments = gw, tool, arguments
        self.result = self.error = None
        self.start()

    def run(self) -> None:
        try:
            self.result, _ = run_client(self.gw, lambda s: s.call_tool(self.tool, self.arguments))
        except BaseException as e:
            self.error = e

    def outcome(self):
        self.join(60)
        assert not self.is_alive(), "the tool call did not end"
        return self.result, self.error


def test_a_held_tool_call_runs_once_approved(everything_gateway):
    rule = {"approvals": [{"name": "sums", "when": {"mcp": {"method": "tools/call", "tool": {"any_of": ["get-sum"]}}},
                           "approvers": {"groups": ["security-oncall"]}, "timeout": "30s"}]}
    gw, up = everything_gateway(route_fields={"approvals": ["sums"]}, identity=people_identity(APPROVERS), extra=rule,
                                admin={"auditors": ["security-oncall"]})
    run_client(gw, tool_names)  # the approver sees the description from the server's list
    call = ToolCallInBackground(gw, "get-sum", {"a": 20, "b": 22})
    [a] = wait_pending(gw)
    [shown] = a["summary"]["mcp"]
    assert shown["name"] == "get-sum" and '"a":20' in shown["arguments"].replace(" ", ""), shown
    assert shown["description"], shown
    assert not up.tool_calls(), "nothing upstream while it waits"
    assert cli(gw, "bob", "approve", a["id"], "--reason", "fine").returncode == 0
    result, error = call.outcome()
    assert error is None, error
    assert "42" in result.content[0].text, result
    assert [c["name"] for c in up.tool_calls()] == ["get-sum"]


# --- the TypeScript SDK client ------------------------------------------------------

def run_ts_client(gw: Gateway, allowed: str, arguments: dict, hidden: str, token: str = AGENT_TOKEN) -> dict:
    env = dict(os.environ, MCP_TOKEN=token, NODE_EXTRA_CA_CERTS=str(gw.ca_file))
    p = subprocess.run([shutil.which("node") or "node", str(JS / "client.mjs"), f"{gw.base_url}{PATH}", allowed, json.dumps(arguments), hidden],
                       cwd=JS, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_typescript_sdk_client_through_the_gateway(everything_gateway):
    gw, up = everything_gateway()
    out = run_ts_client(gw, "echo", {"message": "from node"}, "get-env")
    assert out["tools"] == ["echo", "get-sum"]
    assert out["allowed"]["content"][0]["text"] == "Echo: from node"
    err = out["hidden"]["error"]
    assert err["code"] == -32602 and err["data"] == {"agentgate": "tool_not_allowed"}, err
    assert "tool `get-env` is not available" in err["message"]
    assert [c["name"] for c in up.tool_calls()] == ["echo"]
    assert {e["authorization"] for e in up.log()} == {f"Bearer {ROUTE_KEY}"}
    # Its session ended with a DELETE through the gateway.
    assert any(e["http"] == "DELETE" for e in up.log())
    # Another group's caller with the same client sees its own tools.
    bot = run_ts_client(gw, "get-sum", {"a": 1, "b": 2}, "echo", token=person_token("release-bot"))
    assert "get-env" in bot["tools"] and "echo" not in bot["tools"]
    assert bot["hidden"]["error"]["data"] == {"agentgate": "tool_not_allowed"}
