"""Masking through the real gateway with the real OpenAI SDK: personal data in a prompt reaches
the upstream only as placeholders and comes back restored; a secret the upstream emits split
across SSE events never reaches the SDK; a private key in a prompt is refused with 400 and
nothing goes upstream."""

from __future__ import annotations

import json

import pytest

from gwconfig import route, section
from net import free_port
from test_sdk import run_sdk

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
SECRET = "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5"
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----"

MASKING = section("""
masking:
  policies:
    default:
      request:  { secrets: redact, pii: pseudonymize }
      response: { secrets: redact, pii: redact, restore_pseudonyms: true }
  custom_detectors:
    - { name: employee_id, regex: "EMP-[0-9]{6}" }
guardrails:
  - { name: no-private-keys, direction: request, detectors: [private_key], message: "never send keys to a model" }
  - { name: no-deploy-words, direction: response, deny_words: ["rm -rf /"] }
""")


@pytest.fixture
def masked_gateway(start_gateway, mock, upstream_ca_file):
    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file,
                               masking="default", guardrails=["no-private-keys", "no-deploy-words"]), extra=MASKING)


def upstream_bodies(mock) -> str:
    return json.dumps([(r.get("body") or b"").decode() for r in mock.state.requests])


@pytest.mark.parametrize("stream", ["0", "1"])
def test_pii_pseudonymized_upstream_and_restored_for_the_sdk(masked_gateway, mock, stream):
    prompt = f"Email {EMAIL} about card {CARD} and employee EMP-004217."
    r = run_sdk(masked_gateway, "masked_chat", env_extra={"SDK_PROMPT": prompt, "SDK_STREAM": stream, "SDK_EXTRA_HEADERS": json.dumps({"x-mock-echo": "1"})})
    assert r["status"] == 200, r
    sent = upstream_bodies(mock)
    assert EMAIL not in sent and CARD not in sent and "EMP-004217" not in sent, sent
    assert "<EMAIL_1>" in sent and "<CREDIT_CARD_1>" in sent and "[REDACTED:EMPLOYEE_ID]" in sent, sent
    # The mock echoes the prompt: the SDK gets the original values back (the custom detector
    # redacts, which is not reversible).
    assert r["text"] == f"You said: Email {EMAIL} about card {CARD} and employee [REDACTED:EMPLOYEE_ID].", r
    line = masked_gateway.wait_session_lines(lambda l: l.get("status") == 200)[-1]
    assert line["masked"]["request"]["email/pseudonymize"] == 1
    assert line["masked"]["response"]["restored"] == 2
    assert masked_gateway.wait_metric("agentgate_masked_values_total", 1, detector="email", direction="request", action="pseudonymize") == 1


@pytest.mark.parametrize("stream", ["0", "1"])
def test_responses_api_restores_pseudonyms(masked_gateway, mock, stream):
    r = run_sdk(masked_gateway, "masked_responses", env_extra={"SDK_PROMPT": f"reach me at {EMAIL}, card {CARD}", "SDK_STREAM": stream, "SDK_EXTRA_HEADERS": json.dumps({"x-mock-echo": "1", "x-mock-split": "3"})})
    assert r["status"] == 200, r
    sent = upstream_bodies(mock)
    assert EMAIL not in sent and CARD not in sent and "<EMAIL_1>" in sent and "<CREDIT_CARD_1>" in sent, sent
    assert r["text"] == f"You said: reach me at {EMAIL}, card {CARD}", r
    if stream == "1":
        assert r["final"] == r["text"]


@pytest.mark.parametrize("split", ["1", "2", "3", "5", "7", "11"])
def test_secret_emitted_split_across_events_never_reaches_the_sdk(masked_gateway, mock, split):
    say = f"Here is the key: {SECRET} and mail {EMAIL}"
    r = run_sdk(masked_gateway, "masked_chat", env_extra={"SDK_STREAM": "1", "SDK_EXTRA_HEADERS": json.dumps({"x-mock-say": say, "x-mock-split": split})})
    assert r["status"] == 200, r
    assert SECRET[:8] not in r["text"] and EMAIL not in r["text"], r
    assert r["text"] == "Here is the key: [REDACTED:OPENAI_KEY] and mail [REDACTED:EMAIL]", r
    assert r["chunks"] > 1


def test_private_key_in_a_prompt_is_blocked(masked_gateway, mock):
    r = run_sdk(masked_gateway, "masked_chat", env_extra={"SDK_PROMPT": f"please fix\n{PRIVATE_KEY}"})
    assert r["status"] == 400, r
    assert r["code"] == "request_blocked"
    assert "no-private-keys" in r["message"] and "private_key" in r["message"] and "never send keys" in r["message"]
    assert "MIIEow" not in r["message"]
    assert mock.state.requests == [], "a blocked request reached the upstream"
    assert masked_gateway.metric("agentgate_guardrail_blocks_total", rule="no-private-keys") == 1


def test_response_guardrail_ends_the_stream(masked_gateway, mock):
    r = run_sdk(masked_gateway, "masked_chat", env_extra={"SDK_STREAM": "1", "SDK_EXTRA_HEADERS": json.dumps({"x-mock-say": "Now run rm -rf / to clean up", "x-mock-split": "4"})})
    assert r["status"] == "stream_error", r
    assert "no-deploy-words" in r["message"], r
    assert "rm -rf" not in json.dumps(r), r
    assert masked_gateway.metric("agentgate_guardrail_blocks_total", rule="no-deploy-words") == 1


def test_large_body_goes_through_intact(masked_gateway, mock):
    big = "lorem ipsum dolor sit amet " * 40_000  # ~1 MiB
    with masked_gateway.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": big + EMAIL}]})
    assert r.status_code == 200, r.text
    sent = json.loads(mock.state.last["body"])
    assert sent["messages"][0]["content"] == big + "<EMAIL_1>"


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("size", [2_000, 65_400, 65_600, 200_000])
def test_the_decided_body_replaces_the_agents_at_every_size(masked_gateway, mock, size, chunked, http2):
    """Bodies up to Pingora's 64 KiB retry buffer go upstream from the agent's own session (the
    decided body put in place of the agent's in `request_body_filter`), larger ones through a
    subrequest: on both sides of that bound, framed by length or chunked, over HTTP/1.1 or
    HTTP/2, the upstream gets the masked body whole with its own length, never the agent's."""
    pad = "x" * (size - 200)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"{EMAIL} {pad} {EMAIL}"}]}).encode()
    content = iter([body[: len(body) // 2], body[len(body) // 2:]]) if chunked else body
    with masked_gateway.client(http2=http2) as c:
        r = c.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
    assert len(mock.state.requests) == 1
    got = mock.state.last
    assert EMAIL.encode() not in got["body"]
    sent = json.loads(got["body"])
    assert sent["messages"][0]["content"] == f"<EMAIL_1> {pad} <EMAIL_1>"
    assert int(got["headers"]["content-length"]) == len(got["body"])
    assert "transfer-encoding" not in got["headers"]


def test_invalid_json_is_masked_as_text_never_forwarded_raw(masked_gateway, mock):
    with masked_gateway.client() as c:
        r = c.post("/v1/chat/completions", content=f'{{"broken": "{EMAIL}'.encode(), headers={"content-type": "application/json"})
    assert mock.state.requests, r.text
    assert EMAIL not in upstream_bodies(mock)
    assert "<EMAIL_1>" in upstream_bodies(mock)


def test_compressed_request_bodies_are_refused(masked_gateway, mock):
    import gzip

    with masked_gateway.client() as c:
        r = c.post("/v1/chat/completions", content=gzip.compress(EMAIL.encode()), headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "compressed_body_refused"
    assert mock.state.requests == []


def test_routes_without_masking_stream_bodies_unchanged(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": EMAIL}]})
    assert r.status_code == 200
    assert EMAIL in upstream_bodies(mock)


def test_masking_over_http2_from_the_agent(masked_gateway, mock):
    with masked_gateway.client(http2=True) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": f"to {EMAIL}"}]}, headers={"x-mock-echo": "1"})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"You said: to {EMAIL}"
        with c.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": f"to {EMAIL}"}]},
                      headers={"x-mock-echo": "1", "x-mock-split": "4"}) as s:
            body = s.read().decode()
    assert EMAIL not in upstream_bodies(mock)
    text = "".join(json.loads(l[6:])["choices"][0]["delta"].get("content", "") for l in body.splitlines() if l.startswith("data: {"))
    assert text == f"You said: to {EMAIL}", body


def test_upstream_down_on_a_masking_route_is_a_clear_502(start_gateway, upstream_ca_file):
    dead = free_port()
    gw = start_gateway(route("dead", "/v1/", f"https://127.0.0.1:{dead}", upstream_ca_file, masking="default"), extra=MASKING)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": EMAIL}]})
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_failed" and f"127.0.0.1:{dead}" in err["message"], err
    assert EMAIL not in r.text
    with gw.client() as c:  # and it keeps serving
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 502
