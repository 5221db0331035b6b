"""Runs one scenario with the real OpenAI Python SDK or the OpenAI Agents SDK, configured only
through the environment an agent would get: OPENAI_BASE_URL, OPENAI_API_KEY, SSL_CERT_FILE.
Prints one JSON object with what the SDK returned."""

from __future__ import annotations

import asyncio
import json
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


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
