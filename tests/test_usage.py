"""Usage, cost and limits with the real OpenAI Python SDK through the gateway in front of the mock
upstream (TLS on both legs): tokens and cost counted for Chat Completions (plain and streamed),
the Responses API and Anthropic's Messages API; limits answered with OpenAI's 429 and headers the
SDK's own retry reads; a monthly budget that outlives a restart; concurrency."""

from __future__ import annotations

import json
import ssl
import threading

import httpx
import openai
import pytest

from gateway_driver import Gateway, SlowStream
from gwconfig import AGENT_TOKEN, gateway_config, route
from net import free_port

PROMPT = [{"role": "user", "content": "hi"}]


def sdk(gw: Gateway, max_retries: int = 0, headers: dict | None = None) -> openai.OpenAI:
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    return openai.OpenAI(
        base_url=f"{gw.base_url}/v1",
        api_key=AGENT_TOKEN,
        max_retries=max_retries,
        default_headers=headers or {},
        http_client=httpx.Client(verify=ctx, timeout=30),
    )


def usage_lines(gw: Gateway, n: int = 1) -> list[dict]:
    return [l["usage"] for l in gw.wait_session_lines(lambda l: "usage" in l, n)]


@pytest.fixture
def metered(start_gateway, mock, upstream_ca_file):
    """A gateway with route `llm` (/v1/ -> the mock) that adds include_usage to streams."""

    def start(**config) -> Gateway:
        url = f"https://127.0.0.1:{mock.port}"
        return start_gateway(route("llm", "/v1/", url, upstream_ca_file, stream_usage=True), **config)

    return start


def test_plain_chat_usage_is_counted_priced_and_logged(metered, mock):
    gw = metered()
    r = sdk(gw, headers={"x-mock-usage": "1000,200,400,50"}).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert r.usage.prompt_tokens == 1000
    labels = {"route": "llm", "model": "gpt-4o-mini"}
    assert gw.wait_metric("agentgate_tokens_total", 1000, kind="input", **labels) == 1000
    assert gw.metric("agentgate_tokens_total", kind="output", **labels) == 200
    assert gw.metric("agentgate_tokens_total", kind="cached_input", **labels) == 400
    assert gw.metric("agentgate_tokens_total", kind="reasoning", **labels) == 50
    # gpt-4o-mini: $0.15/M input, $0.075/M cached, $0.60/M output
    want = (600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6
    assert gw.metric("agentgate_cost_total", **labels) == pytest.approx(want, abs=1e-6)
    (u,) = usage_lines(gw)
    assert u["model"] == "gpt-4o-mini" and u["reported"] is True
    assert (u["input"], u["output"], u["cached_input"], u["reasoning"]) == (1000, 200, 400, 50)
    assert u["cost"] == pytest.approx(want, abs=1e-6) and u["currency"] == "USD"


def test_a_stream_is_asked_for_usage_and_the_agent_does_not_see_the_extra_chunk(metered, mock):
    gw = metered()
    client = sdk(gw, headers={"x-mock-usage": "30,7"})
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the mock upstream."
    # The agent did not ask for usage: no chunk without choices, no usage.
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    sent = json.loads(mock.state.last["body"])
    assert sent["stream_options"] == {"include_usage": True}
    assert gw.wait_metric("agentgate_tokens_total", 30, route="llm", model="gpt-4o", kind="input") == 30
    assert gw.metric("agentgate_tokens_total", route="llm", model="gpt-4o", kind="output") == 7

    # An agent that asks for usage itself gets its chunk, and it is counted once.
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=PROMPT, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 30
    assert gw.wait_metric("agentgate_tokens_total", 60, route="llm", model="gpt-4o", kind="input") == 60


def test_a_stream_that_reports_no_usage_is_counted_as_unreported(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("plain", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    chunks = list(sdk(gw).chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True))
    assert chunks
    assert "stream_options" not in json.loads(mock.state.last["body"])
    assert gw.wait_metric("agentgate_usage_unreported_total", 1, route="plain") == 1
    (u,) = usage_lines(gw)
    assert u["reported"] is False and u["model"] == "gpt-4o"


def test_responses_api_usage_json_and_streamed(metered, mock):
    gw = metered()
    client = sdk(gw, headers={"x-mock-usage": "80,40,16,12"})
    r = client.responses.create(model="o3", input="hi")
    assert r.output_text == "Hello from the mock upstream."
    with client.responses.create(model="o3", input="hi", stream=True) as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.completed"
    labels = {"route": "llm", "model": "o3"}
    assert gw.wait_metric("agentgate_tokens_total", 160, kind="input", **labels) == 160
    assert gw.metric("agentgate_tokens_total", kind="output", **labels) == 80
    assert gw.metric("agentgate_tokens_total", kind="cached_input", **labels) == 32
    assert gw.metric("agentgate_tokens_total", kind="reasoning", **labels) == 24


def test_anthropic_messages_usage_json_and_streamed(metered, mock):
    gw = metered()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": PROMPT}
    headers = {"x-mock-usage": "10,20,100"}  # input, output, cache reads (not in input_tokens)
    with gw.client(headers=headers) as c:
        r = c.post("/v1/messages", json=body)
        assert r.status_code == 200 and r.json()["usage"]["cache_read_input_tokens"] == 100
        with c.stream("POST", "/v1/messages", json={**body, "stream": True}) as s:
            events = [l for l in s.iter_lines() if l.startswith("event: ")]
    assert events[0] == "event: message_start" and "event: message_delta" in events
    labels = {"route": "llm", "model": "claude-sonnet-4"}
    assert gw.wait_metric("agentgate_tokens_total", 220, kind="input", **labels) == 220
    assert gw.metric("agentgate_tokens_total", kind="cached_input", **labels) == 200
    assert gw.metric("agentgate_tokens_total", kind="output", **labels) == 40
    # $3/M input, $0.30/M cache reads, $15/M output
    assert gw.metric("agentgate_cost_total", **labels) == pytest.approx(2 * (10 * 3 + 100 * 0.3 + 20 * 15) / 1e6, abs=1e-6)


TOKEN_LIMIT = """
limits:
  - { name: per-agent, per: identity, match: { routes: [llm] }, tokens: { per: 2s, max: 100 } }
"""


def test_a_token_limit_answers_429_and_the_sdk_retry_succeeds_after_the_window(metered, mock):
    gw = metered(extra=TOKEN_LIMIT)
    headers = {"x-mock-usage": "90,10"}
    first = sdk(gw, headers=headers).chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=5)
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    upstream_calls = len(mock.state.requests)
    # The window holds 100 used tokens: the next request is refused without going upstream.
    # (Raw, to read the answer; the window may have just turned, so try until one is refused.)
    passed = 0
    with gw.client(headers=headers) as c:
        for _ in range(5):
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": PROMPT, "max_tokens": 5})
            if r.status_code == 429:
                break
            passed += 1
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "per-agent" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 2
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert r.headers["x-ratelimit-reset-tokens"].endswith(("ms", "s"))
    assert "x-should-retry" not in r.headers
    assert len(mock.state.requests) == upstream_calls + passed
    assert gw.wait_metric("agentgate_limit_refusals_total", lambda v: v >= 1, limit="per-agent", kind="tokens") >= 1
    # The SDK's own retry waits Retry-After and goes through in the next window.
    client = sdk(gw, max_retries=3, headers=headers)
    for _ in range(3):  # (a window that turns between spending it and the SDK's call: again)
        with gw.client(headers=headers) as c:
            while c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": PROMPT, "max_tokens": 5}).status_code != 429:
                pass  # spend the window
        out = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=5)
        assert out.parse().choices[0].message.content == "Hello from the mock upstream."
        if out.retries_taken:
            break
    assert out.retries_taken >= 1


def test_a_request_that_cannot_fit_is_refused_and_not_retried(metered, mock):
    gw = metered(extra=TOKEN_LIMIT)
    client = sdk(gw, max_retries=2)
    # max_tokens omitted (4096 assumed) or huge: larger than the whole quota.
    for extra in ({}, {"max_tokens": 10**12}):
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="gpt-4o", messages=PROMPT, **extra)
        assert e.value.response.headers["x-should-retry"] == "false"
        assert "lower max_tokens" in e.value.message
    assert mock.state.requests == []


def test_an_unreported_stream_is_charged_what_it_reserved(start_gateway, mock, upstream_ca_file):
    # No stream_usage on the route and the agent does not ask: the stream reports nothing, and
    # the limit keeps the reservation (prompt estimate + max_tokens) instead of charging zero.
    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       extra="limits:\n  - { name: day, per: identity, tokens: { per: day, max: 100000 } }")
    client = sdk(gw)
    list(client.chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True, max_tokens=500))
    r = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=1)
    remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    # 500 output tokens reserved for the stream stay charged; the second reserved its own share.
    assert remaining <= 100000 - 500 - 1, remaining


COST_BUDGET = """
usage:
  prices: { budget-model: { input: 1000000, output: 1000000 } }
limits:
  - { name: team-budget, per: group, groups: [agents], cost: { per: month, max: 50.00, currency: USD } }
"""


def test_a_monthly_cost_budget_survives_a_restart(tmp_path, mock, upstream_ca_file):
    state = tmp_path / "gw"
    state.mkdir()
    port, admin_port = free_port(), free_port()
    config = gateway_config(port, admin_port, route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file), extra=COST_BUDGET)
    gw = Gateway(config, state, port, admin_port)
    try:
        # $1 a token: 40 tokens cost $40 of the $50.
        client = sdk(gw, headers={"x-mock-usage": "40,0"})
        client.chat.completions.create(model="budget-model", messages=PROMPT, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="budget-model", messages=PROMPT, max_tokens=1)
        assert e.value.code == "insufficient_quota"
    finally:
        gw.stop()
    gw = Gateway(config, state, port, admin_port)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            sdk(gw, max_retries=2).chat.completions.create(model="budget-model", messages=PROMPT, max_tokens=1)
        assert e.value.code == "insufficient_quota"
        assert e.value.response.headers["x-should-retry"] == "false"
        assert e.value.response.headers["x-ratelimit-remaining-cost"] == "10.000000"
        assert len(mock.state.requests) == 1
    finally:
        gw.stop()


def test_a_concurrency_limit_refuses_the_request_over_it(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       extra="limits:\n  - { name: one-at-a-time, per: identity, concurrent: 1 }")
    mock.state.hold_after_first = True
    stream = SlowStream(gw, "one two three", 0)
    assert stream.first.wait(10)
    with pytest.raises(openai.RateLimitError) as e:
        sdk(gw).chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert e.value.code == "rate_limit_exceeded" and "one-at-a-time" in e.value.message
    mock.state.release.set()
    stream.thread.join(10)
    assert stream.done.is_set()
    # The place is free again once the stream ended.
    assert sdk(gw, max_retries=3).chat.completions.create(model="gpt-4o", messages=PROMPT).choices


def test_totals_by_cli_and_admin_api_and_usage_in_the_record(start_gateway, mock, upstream_ca_file):
    from gateway_driver import BINARY, eventually
    from gwconfig import people_identity, person_token
    import subprocess

    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       identity=people_identity({"alice": ["auditors"]}), admin={"auditors": ["auditors"]})
    sdk(gw, headers={"x-mock-usage": "100,10"}).chat.completions.create(model="gpt-4o", messages=PROMPT)
    sdk(gw, headers={"x-mock-usage": "1,2"}).chat.completions.create(model="o3", messages=PROMPT)
    ledger = gw.state_dir / "var" / "usage.json"

    def cli(*args: str) -> dict:
        out = subprocess.run([str(BINARY), "usage", "--file", str(ledger), "--json", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    rows = eventually(lambda: ledger.exists() and cli("--by", "model")["rows"], lambda r: r and sum(x["requests"] for x in r) == 2)
    assert [(r["key"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("gpt-4o", 100, 10), ("o3", 1, 2)]
    (group,) = cli("--by", "group", "--since", "1d")["rows"]
    assert (group["key"], group["requests"], group["input_tokens"]) == ("agents", 2, 101)
    assert group["cost"] == pytest.approx((100 * 2.5 + 10 * 10 + 1 * 2 + 2 * 8) / 1e6, abs=1e-6)

    api = httpx.get(f"{gw.admin_url}/v1/usage?by=identity&since=7d", headers={"Authorization": f"Bearer {person_token('alice')}"}, verify=False)
    assert api.status_code == 200, api.text
    (who,) = api.json()["rows"]
    assert (who["key"], who["requests"], who["output_tokens"]) == ("test-agent@service-account", 2, 12)
    denied = httpx.get(f"{gw.admin_url}/v1/usage", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, verify=False)
    assert denied.status_code == 403

    index = gw.state_dir / "var" / "records" / "index.jsonl"
    eventually(lambda: index.exists() and len(index.read_text().splitlines()), lambda n: n == 2)
    records = [json.loads(l) for seg in sorted(index.parent.glob("seg-*.jsonl")) for l in seg.read_text().splitlines()]
    usages = [r.get("usage") for r in records if r.get("kind") == "exchange"]
    assert {(u["model"], u["input"], u["output"]) for u in usages} == {("gpt-4o", 100, 10), ("o3", 1, 2)}


def test_a_usage_line_split_across_reads_is_counted(metered, mock):
    # The upstream writes the usage event in three pieces, each its own TCP write.
    gw = metered()
    line = 'data: {"object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":77,"completion_tokens":3}}\n\n'
    chunks = ['data: {"object":"chat.completion.chunk","model":"gpt-4o","choices":[{"delta":{"content":"x"}}]}\n\n',
              line[:20], line[20:90], line[90:], "data: [DONE]\n\n"]
    with gw.client() as c:
        r = c.post("/v1/raw", json={"content_type": "text/event-stream", "chunks": chunks})
    assert r.status_code == 200 and '"prompt_tokens":77' in r.text
    assert gw.wait_metric("agentgate_tokens_total", 77, route="llm", model="gpt-4o", kind="input") == 77


def test_requests_racing_over_http2_and_many_connections_never_pass_the_limit(start_gateway, mock, upstream_ca_file):
    from concurrent.futures import ThreadPoolExecutor

    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       extra="limits:\n  - { name: five, per: identity, requests: { per: 1h, max: 5 }, tokens: { per: 1h, max: 1000000 } }")
    body = {"model": "gpt-4o", "messages": PROMPT, "max_tokens": 5}
    with gw.client(http2=True) as h2:
        def over_h2(_):
            return h2.post("/v1/chat/completions", json=body).status_code

        def own_connection(_):
            with gw.client() as c:
                return c.post("/v1/chat/completions", json=body).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(over_h2, range(12))) + list(pool.map(own_connection, range(12)))
    assert sorted(set(codes)) == [200, 429]
    assert codes.count(200) == 5 and len(mock.state.requests) == 5


def test_every_answer_of_a_limited_request_carries_its_ratelimit_headers(start_gateway, mock, upstream_ca_file):
    gw = start_gateway([route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                        route("down", "/down/", f"https://127.0.0.1:{free_port()}", upstream_ca_file)],
                       extra="limits:\n  - { name: r, per: identity, requests: { per: 1h, max: 10 } }")
    with gw.client() as c:
        got = c.get("/v1/models")  # a GET, answered by the upstream
        failed = c.post("/down/x", json={})  # the gateway's own 502: nothing listens there
    assert got.status_code == 200 and got.headers["x-ratelimit-remaining-requests"] == "9"
    assert failed.status_code == 502 and failed.headers["x-ratelimit-remaining-requests"] == "8"


CUT_LIMIT = """
usage: { default_max_output_tokens: 50 }
limits:
  - { name: cap, per: identity, tokens: { per: 1h, max: 1000 }, cut_streams: true }
"""
LONG = "abcdefghi." * 800  # 8,000 ASCII characters: about 2,000 tokens


def test_a_stream_past_a_cut_streams_limit_ends_with_an_error_event_the_sdk_raises(metered, mock):
    """Failed before `cut_streams` existed: the config was refused (unknown field), and a
    stream ran to its end whatever the limit had left."""
    gw = metered(extra=CUT_LIMIT)
    # 40 characters per chunk (10 tokens); the limit has 1,000 tokens less the prompt's estimate.
    client = sdk(gw, headers={"x-mock-say": LONG, "x-mock-split": "40", "x-mock-usage": "20,2000"})
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True):
            got.append(c.choices[0].delta.content or "" if c.choices else "")
    text = "".join(got)
    assert LONG.startswith(text), e.value
    assert 3000 <= len(text) <= 4000, (len(text), repr(e.value))
    assert e.value.body["code"] == "rate_limit_exceeded" and "limit `cap`" in e.value.message
    assert gw.wait_metric("agentgate_limit_stream_cuts_total", 1, limit="cap", kind="tokens") == 1
    (u,) = usage_lines(gw)
    assert u["cut_by"] == "cap" and u["reported"] is False
    assert 950 <= u["output"] <= 1010, u
    # What was generated up to the cut is charged: the hour's tokens are spent.
    with pytest.raises(openai.RateLimitError):
        sdk(gw).chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=5)


def test_without_cut_streams_the_same_stream_runs_to_its_end_and_is_charged_after(metered, mock):
    gw = metered(extra=CUT_LIMIT.replace(", cut_streams: true", ""))
    client = sdk(gw, headers={"x-mock-say": LONG, "x-mock-split": "40", "x-mock-usage": "20,2000"})
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LONG
    (u,) = usage_lines(gw)
    assert "cut_by" not in u and (u["input"], u["output"]) == (20, 2000)
    assert gw.metric("agentgate_limit_stream_cuts_total", limit="cap") == 0


def test_an_anthropic_stream_is_cut_with_an_error_event_it_understands(metered, mock):
    gw = metered(extra=CUT_LIMIT)
    body = {"model": "claude-sonnet-4", "max_tokens": 64, "stream": True, "messages": PROMPT}
    # 400 characters per delta: 100 tokens each.
    with gw.client(headers={"x-mock-say": LONG, "x-mock-split": "400"}) as c:
        r = c.post("/v1/messages", json=body)
    assert r.status_code == 200
    events = r.text.split("\n\n")
    # Nine deltas fit (900 of the ~980 tokens left), the tenth is replaced by the error event.
    assert sum(e.startswith("event: content_block_delta") for e in events) == 9, r.text[-400:]
    err = [e for e in events if e.startswith("event: error")]
    assert len(err) == 1 and "message_stop" not in r.text
    data = json.loads(err[0].split("data: ", 1)[1])
    assert data["type"] == "error" and data["error"]["type"] == "rate_limit_error"


def test_a_responses_api_stream_is_cut_and_the_sdk_raises_no_parse_error(metered, mock):
    # Named events (`event: response.output_text.delta`): the cut leaves no event without data
    # behind, which the SDK would fail to parse instead of raising the limit's error.
    gw = metered(extra=CUT_LIMIT)
    client = sdk(gw, headers={"x-mock-say": LONG, "x-mock-split": "40"})
    text = ""
    with pytest.raises(openai.APIError) as e:
        with client.responses.create(model="gpt-4o", input="hi", stream=True) as stream:
            for ev in stream:
                if ev.type == "response.output_text.delta":
                    text += ev.delta
    assert e.value.body["code"] == "rate_limit_exceeded", repr(e.value)
    assert LONG.startswith(text) and 3000 <= len(text) <= 4000, len(text)


def test_a_stream_that_reports_no_usage_is_charged_what_it_generated(start_gateway, mock, upstream_ca_file):
    """Failed with remaining 931 after a 600-token stream: an unreported stream was charged its
    reservation (prompt estimate + default_max_output_tokens: 50) whatever it generated."""
    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                       extra="usage: { default_max_output_tokens: 50 }\nlimits:\n  - { name: hour, per: identity, tokens: { per: 1h, max: 100000 } }")
    client = sdk(gw, headers={"x-mock-say": "abcdefghi." * 240, "x-mock-split": "40"})  # 2,400 characters: 600 tokens
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True) if c.choices)
    assert len(text) == 2400 and "stream_options" not in json.loads(mock.state.last["body"])
    r = sdk(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=1)
    remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 100000 - 600 - 1, remaining
