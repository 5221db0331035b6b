"""The real OpenAI Python SDK and OpenAI Agents SDK through the gateway, configured only with
OPENAI_BASE_URL and the gateway's CA (SSL_CERT_FILE), as an agent would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import pathlib

import pytest

from gwconfig import AGENT_TOKEN, ROUTE_KEY

HERE = pathlib.Path(__file__).resolve().parent


def sdk_env(gateway, api_key: str = AGENT_TOKEN, env_extra: dict | None = None) -> dict:
    """The environment an agent gets: the gateway's base URL and CA, its own API key."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SSL_CERT", "REQUESTS_CA", "HTTP", "ALL_PROXY"))
    }
    env.update(
        OPENAI_BASE_URL=f"{gateway.base_url}/v1",
        OPENAI_API_KEY=api_key,
        SSL_CERT_FILE=str(gateway.ca_file),
        OPENAI_AGENTS_DISABLE_TRACING="1",
        NO_PROXY="*",
    )
    env.update(env_extra or {})
    return env


def run_sdk(gateway, scenario: str, api_key: str = AGENT_TOKEN, env_extra: dict | None = None) -> dict:
    env = sdk_env(gateway, api_key, env_extra)
    out = subprocess.run([sys.executable, str(HERE / "sdk_client.py"), scenario], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_only_route_key(mock):
    for req in mock.state.requests:
        assert req["headers"]["authorization"] == f"Bearer {ROUTE_KEY}"
        assert AGENT_TOKEN not in json.dumps(req["header_list"])


def test_chat_completion(gateway, mock):
    r = run_sdk(gateway, "chat")
    assert r["text"] == "Hello from the mock upstream."
    assert_only_route_key(mock)


def test_chat_completion_streaming(gateway, mock):
    r = run_sdk(gateway, "chat_stream")
    assert r["text"] == "Hello from the mock upstream."
    assert r["chunks"] == 5


def test_responses_api_streaming(gateway, mock):
    r = run_sdk(gateway, "responses_stream")
    assert r["text"] == "Hello from the mock upstream."
    assert r["final"] == "Hello from the mock upstream."
    assert r["events"][0] == "response.created" and r["events"][-1] == "response.completed"
    assert mock.state.last["path"] == "/v1/responses"


def test_models_list(gateway, mock):
    assert run_sdk(gateway, "models")["models"] == ["mock-model"]


def test_gateway_error_surfaces_as_sdk_error(gateway, mock):
    r = run_sdk(gateway, "bad_route")
    assert r["status"] == 404
    assert r["code"] == "route_not_found"


def test_agents_sdk_runner_with_a_function_tool(gateway, mock):
    r = run_sdk(gateway, "agent")
    assert r["tool_calls"] == ["Paris"]
    assert r["final"] == "The tool said: sunny in Paris"
    paths = [q["path"] for q in mock.state.requests]
    assert paths == ["/v1/responses", "/v1/responses"], paths
    assert_only_route_key(mock)


def test_sdk_refuses_a_gateway_it_does_not_trust(gateway, mock, upstream_ca_file, monkeypatch):
    """The SDK really verifies the gateway's certificate: with another CA it cannot connect."""
    monkeypatch.setattr(type(gateway), "ca_file", property(lambda self: upstream_ca_file))
    with pytest.raises(AssertionError, match="CERTIFICATE_VERIFY_FAILED|APIConnectionError"):
        run_sdk(gateway, "models")
    assert mock.state.requests == []
