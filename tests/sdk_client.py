"""Runs one scenario with the real OpenAI Python SDK or the OpenAI Agents SDK, configured only
through the environment an agent would get: OPENAI_BASE_URL, OPENAI_API_KEY, SSL_CERT_FILE.
Prints one JSON object with what the SDK returned."""

from __future__ import annotations

import asyncio
import json
import os
import sys


def chat() -> dict:
    from openai import OpenAI

    client = OpenAI()
    r = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    return {"text": r.choices[0].message.content, "id": r.id}


def chat_stream() -> dict:
    from openai import OpenAI

    client = OpenAI()
    parts = []
    with client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as stream:
        for ev in stream:
            if ev.choices and ev.choices[0].delta.content:
                parts.append(ev.choices[0].delta.content)
    return {"text": "".join(parts), "chunks": len(parts)}


def responses_stream() -> dict:
    from openai import OpenAI

    client = OpenAI()
    kinds, deltas, final = [], [], None
    with client.responses.create(model="mock-model", input="hi", stream=True) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
            if ev.type == "response.completed":
                final = ev.response.output_text
    return {"text": "".join(deltas), "final": final, "events": kinds}


def models() -> dict:
    from openai import OpenAI

    return {"models": [m.id for m in OpenAI().models.list()]}


def bad_route() -> dict:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=OpenAI().base_url.copy_with(path="/nope/"))
    try:
        client.models.list()
    except openai.NotFoundError as e:
        return {"status": e.status_code, "code": e.code, "message": e.message}
    return {"status": 200}


def chat_or_error() -> dict:
    """A chat call whose API error (401/403...) is reported instead of raised."""
    import openai

    try:
        return {"status": 200, **chat()}
    except openai.APIStatusError as e:
        return {"status": e.status_code, "code": e.code, "message": e.message}


def _prompt_and_headers() -> tuple[str, dict]:
    import os

    headers = json.loads(os.environ.get("SDK_EXTRA_HEADERS", "{}"))
    return os.environ.get("SDK_PROMPT", "hi"), headers


def masked_chat() -> dict:
    """Chat with SDK_PROMPT and SDK_EXTRA_HEADERS, streaming when SDK_STREAM=1; errors reported."""
    import os

    import openai
    from openai import OpenAI

    prompt, headers = _prompt_and_headers()
    client = OpenAI()
    try:
        parts: list[str] = []
        if os.environ.get("SDK_STREAM") == "1":
            with client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": prompt}], stream=True, extra_headers=headers) as s:
                for ev in s:
                    if ev.choices and ev.choices[0].delta.content:
                        parts.append(ev.choices[0].delta.content)
            return {"status": 200, "text": "".join(parts), "chunks": len(parts)}
        r = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": prompt}], extra_headers=headers)
        return {"status": 200, "text": r.choices[0].message.content}
    except openai.APIStatusError as e:
        return {"status": e.status_code, "code": e.code, "message": e.message}
    except openai.APIError as e:
        # An error event inside a stream (the HTTP status was 200).
        return {"status": "stream_error", "message": e.message, "partial": "".join(parts)}


def masked_responses() -> dict:
    """The Responses API with SDK_PROMPT, streaming when SDK_STREAM=1."""
    import os

    from openai import OpenAI

    prompt, headers = _prompt_and_headers()
    client = OpenAI()
    if os.environ.get("SDK_STREAM") == "1":
        deltas, final = [], None
        with client.responses.create(model="mock-model", input=prompt, stream=True, extra_headers=headers) as s:
            for ev in s:
                if ev.type == "response.output_text.delta":
                    deltas.append(ev.delta)
                if ev.type == "response.completed":
                    final = ev.response.output_text
        return {"status": 200, "text": "".join(deltas), "final": final}
    r = client.responses.create(model="mock-model", input=prompt, extra_headers=headers)
    return {"status": 200, "text": r.output_text}


def chat_tools() -> dict:
    """A chat call offering a destructive tool (what an approval rule holds); errors reported."""
    import openai
    from openai import OpenAI

    tools = [{"type": "function", "function": {"name": "delete_records", "description": "Deletes rows",
                                               "parameters": {"type": "object", "properties": {"table": {"type": "string"}}}}}]
    try:
        r = OpenAI(max_retries=0).chat.completions.create(
            model="mock-model", tools=tools,
            messages=[{"role": "user", "content": "clean up the users table, then mail ann.lee@example.com"}])
        calls = [c.function.name for c in r.choices[0].message.tool_calls or []]
        return {"status": 200, "text": r.choices[0].message.content, "tool_calls": calls}
    except openai.APIStatusError as e:
        return {"status": e.status_code, "code": e.code, "message": e.message, "body": e.body}


def agent() -> dict:
    from agents import Agent, Runner, function_tool

    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Returns the weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    weather = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather], model="mock-model")
    result = asyncio.run(Runner.run(weather, "What is the weather in Paris?"))
    return {"final": result.final_output, "tool_calls": calls}


def mcp_agent() -> dict:
    """An agent whose only tools come from an MCP server behind the gateway (MCP_URL, with
    MCP_TRANSPORT `streamable_http` or `sse`); the model (the mock, through the gateway) calls the
    first one."""
    from agents import Agent, Runner
    from agents.mcp import MCPServerSse, MCPServerStreamableHttp

    params = {"url": os.environ["MCP_URL"], "headers": {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}}
    server_cls = MCPServerSse if os.environ.get("MCP_TRANSPORT") == "sse" else MCPServerStreamableHttp

    async def main() -> dict:
        async with server_cls(params=params, name="tools") as server:
            tools = [t.name for t in await server.list_tools()]
            agent = Agent(name="mcp", instructions="Answer with the tool.", mcp_servers=[server], model="mock-model")
            result = await Runner.run(agent, "What is the weather in Paris?")
            return {"final": result.final_output, "tools": tools}

    return asyncio.run(main())


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
