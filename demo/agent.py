"""The demo's agent: the OpenAI Agents SDK, configured only as an agent behind agentgate is —
OPENAI_BASE_URL (the gateway), SSL_CERT_FILE (the gateway's CA), OPENAI_API_KEY (its own token,
not a provider key) and MCP_URL (the gateway's MCP route). demo/run.py starts it.

Each step prints what the agent sent and got, and — from the stand-in servers' own logs
(DEMO_UPSTREAM_LOG, DEMO_TOOLS_LOG) — what actually arrived on the far side of the gateway.
It exits 1 if a step did not do what it shows."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys

EMAIL = "jane.doe@example.com"
# An OpenAI-shaped key a developer pasted into a prompt (made up; nothing accepts it).
PROMPT_KEY = "sk-proj-Tq8vW2nR5yK1mZ7xB4cJ9dF3hL6pS0gA2eU8iO5tY1rE7wQ"
PROMPT = f"Tell {EMAIL} that the staging key {PROMPT_KEY} was rotated this morning."
REPO = "payments-prod"

failures: list[str] = []


def say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def heading(title: str) -> None:
    say("", "=" * 78, title, "=" * 78)


def check(ok: bool, text: str) -> None:
    say(f"  [{'ok' if ok else 'FAILED'}] {text}")
    if not ok:
        failures.append(text)


def upstream_requests() -> list[dict]:
    """What the stand-in model received, as it logged it."""
    path = pathlib.Path(os.environ["DEMO_UPSTREAM_LOG"])
    return [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []


def tool_log() -> list[dict]:
    return [json.loads(l) for l in pathlib.Path(os.environ["DEMO_TOOLS_LOG"]).read_text().splitlines() if l]


def user_text(body: str) -> str:
    """The user's message in a Responses API request body as the model got it."""
    req = json.loads(body)
    items = req.get("input")
    items = items if isinstance(items, list) else [{"role": "user", "content": items}]
    return next(i["content"] for i in items if isinstance(i, dict) and i.get("role") == "user")


async def step_masking() -> None:
    from agents import Agent, ModelSettings, Runner

    heading("Step 1. A prompt with an e-mail address and a secret key")
    say(f"  the agent sends:       {PROMPT}")
    # The stand-in model repeats what it received (x-mock-echo), streamed 4 characters per event.
    agent = Agent(name="assistant", instructions="Repeat the user's message.", model="mock-model",
                  model_settings=ModelSettings(extra_headers={"x-mock-echo": "1", "x-mock-split": "4"}))
    result = Runner.run_streamed(agent, PROMPT)
    deltas = 0
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas += 1
    got = result.final_output
    [sent] = [r for r in upstream_requests() if r["path"].startswith("/v1/responses")][-1:]
    received = user_text(sent["body"])
    say(f"  the model received:    {received}",
        f"  the agent got back:    {got}   (streamed in {deltas} SSE events)",
        f"  the model was called with: Authorization: Bearer {sent['authorization'][7:15]}... (the provider key, "
        "added by the gateway; the agent's token was taken off)")
    check(EMAIL not in received and "<EMAIL_1>" in received, "the e-mail address left as a pseudonym, <EMAIL_1>")
    check(PROMPT_KEY not in received and "[REDACTED:OPENAI_KEY]" in received, "the key never left the gateway: [REDACTED:OPENAI_KEY]")
    check(EMAIL in got and "<EMAIL_1>" not in got, "the agent got its e-mail address back in the answer, restored across stream events")
    check(PROMPT_KEY not in got, "the key stays redacted on the way back too (a redaction is not reversible)")


async def step_guardrail() -> None:
    import openai
    from agents import Agent, Runner
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    heading("Step 2. A guardrail: a private key never goes to a model")
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    before = len(upstream_requests())
    agent = Agent(name="assistant", instructions="Help with keys.", model="mock-model")
    say("  the agent sends:       Is this deploy key still valid?\\n-----BEGIN PRIVATE KEY-----\\n...")
    try:
        result = await Runner.run(agent, f"Is this deploy key still valid?\n{pem}")
        say(f"  the agent got back:    {result.final_output}")
        check(False, "the request was refused")
    except openai.BadRequestError as e:
        message = (e.body or {}).get("message", e.message) if isinstance(e.body, dict) else e.message
        say(f"  the agent got:         HTTP {e.status_code} {e.code}: {message}")
        check(e.code == "request_blocked" and "no-private-keys" in e.message, "refused by the no-private-keys guardrail")
    after = len(upstream_requests())
    check(after == before, f"the model received nothing ({before} requests before, {after} after)")


async def step_approval() -> None:
    from agents import Agent, ModelSettings, Runner
    from agents.mcp import MCPServerStreamableHttp

    heading("Step 3. A destructive tool call waits for a person")
    token = os.environ["OPENAI_API_KEY"]
    # A human may take minutes: the MCP client waits as long as the rule's timeout (10m).
    params = {"url": os.environ["MCP_URL"], "headers": {"Authorization": f"Bearer {token}"}, "timeout": 30, "sse_read_timeout": 900}
    async with MCPServerStreamableHttp(params=params, name="tools", client_session_timeout_seconds=900) as server:
        tools = [t.name for t in await server.list_tools()]
        say(f"  tools the gateway shows this agent: {', '.join(tools)}   (the server has 7; the route grants 3)")
        call = {"name": "delete_repo", "arguments": {"name": REPO}}
        agent = Agent(name="ops", instructions="Use the tools.", mcp_servers=[server], model="mock-model",
                      model_settings=ModelSettings(extra_headers={"x-mock-call": json.dumps(call)}))
        say(f"  the agent asks:        Delete the {REPO} repository, we are moving off it.",
            f"  the model decides to call delete_repo(name={REPO!r}); the gateway holds the MCP tools/call ...")
        try:
            result = await Runner.run(agent, f"Delete the {REPO} repository, we are moving off it.")
        except Exception as e:  # a denial or an expiry reaches the SDK as an MCP error
            say(f"  the call did not run:  {e}")
            refused = "denied by" in str(e) or "no decision within" in str(e)
            check(refused, "the gateway answered the held call with the decision")
            check(not any(e.get("tool") == "delete_repo" for e in tool_log()), "the tool server never received it")
            return
    final = result.final_output
    text = final
    if final.startswith("The tool said: "):
        try:
            text = json.loads(final[len("The tool said: "):])["text"]
        except (ValueError, KeyError, TypeError):
            pass
    ran = [e for e in tool_log() if e.get("tool") == "delete_repo"]
    say(f"  approved; the tool server ran it and answered: {text}",
        f"  the agent's final answer: {final}")
    check(text == f"repository {REPO} deleted", "the approved call ran and its result reached the agent")
    check(len(ran) == 1 and ran[0]["arguments"] == {"name": REPO}, "the tool server ran delete_repo once, only after the approval")


async def main() -> int:
    import logging

    logging.getLogger("openai.agents").setLevel(logging.CRITICAL)  # the SDK's own copy of errors shown below
    if not os.environ.get("OPENAI_BASE_URL"):
        say("demo/agent.py is started by demo/run.py (`make demo`)")
        return 2
    await step_masking()
    await step_guardrail()
    await step_approval()
    if failures:
        say("", "the agent's steps that did not do what they show:", *(f"  - {f}" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:  # Ctrl-C: demo/run.py says so and cleans up
        sys.exit(130)
