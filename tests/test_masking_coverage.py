"""Masking that misses nothing (issue 23), through the real gateway over TLS both legs: every
string of every event whatever its schema, every stream format, common encodings both ways, and
bodies that cannot be read as text refused rather than passed. The upstream is the mock's
`/v1/raw`, which answers exactly the chunks a test gives it (a chatty or hostile model server).
Each test's docstring says what reached the agent on da8353c (before the change)."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from gwconfig import route, section

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 2671"

MASKING = section("""
masking:
  policies:
    default:
      request:  { secrets: redact, pii: redact }
      response: { secrets: redact, pii: redact }
    binary_ok:
      request:  { secrets: redact, pii: redact }
      response: { secrets: redact, pii: redact }
      on_binary_response: pass
    pii_only:
      request:  { pii: redact }
      response: { secrets: allow, pii: redact }
""")


# A key no detector recognises, base64 with `/` and `+` (as storage account keys are): only the
# route's credential scrubber knows it, and the masker holds back only the word after a `/`.
HEX_KEY = "q7Lk2/Vn9+Xc4Wp8/Tz1Rb6Hs3Qa5=="


@pytest.fixture
def gw(start_gateway, mock, upstream_ca_file, tmp_path):
    up = f"https://127.0.0.1:{mock.port}"
    key_file = tmp_path / "hex-key"
    key_file.write_text(HEX_KEY)
    return start_gateway([route("bin", "/v1/raw/binary-ok", up, upstream_ca_file, masking="binary_ok"),
                          route("pii", "/v1/raw/pii-only", up, upstream_ca_file, key_header=False, masking="pii_only",
                                credentials={"set_headers": {"api-key": f"${{file:{key_file}}}"}}),
                          route("masked", "/v1/", up, upstream_ca_file, masking="default")], extra=MASKING)


def answer(gw, content_type: str, chunks: list, path: str = "/v1/raw") -> tuple[int, str, bytes]:
    """The mock answers `chunks` with `content_type`; they travel hex-encoded so that the route's
    request masking leaves them as the test wrote them."""
    chunks = [c if isinstance(c, dict) else {"hex": c.encode().hex()} for c in chunks]
    with gw.client() as c:
        r = c.post(path, json={"content_type": content_type, "chunks": chunks})
        return r.status_code, r.headers.get("content-type", ""), r.content


def events(body: bytes) -> list[tuple[str, dict | str]]:
    out = []
    for ev in body.decode().split("\n\n"):
        if not ev.strip():
            continue
        kind = next((l[7:] for l in ev.split("\n") if l.startswith("event: ")), "")
        data = "\n".join(l[6:] for l in ev.split("\n") if l.startswith("data: "))
        out.append((kind, data if data == "[DONE]" else json.loads(data)))
    return out


def sse(*docs, kind: str | None = None) -> list[str]:
    return [(f"event: {kind}\n" if kind else "") + f"data: {json.dumps(d)}\n\n" for d in docs] + ["data: [DONE]\n\n"]


def test_an_unknown_sibling_of_a_delta_is_masked_whole_and_split(gw):
    """On da8353c `choices[0].delta.note` passed raw: the e-mail reached the agent whole and in two
    halves."""
    def chunk(note):
        return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "", "note": note}, "finish_reason": None}]}
    for pieces in (["write to " + EMAIL], ["write to jane.do", "e@example.com now"]):
        status, _, body = answer(gw, "text/event-stream", sse(*[chunk(p) for p in pieces]))
        assert status == 200
        assert EMAIL not in body.decode() and "jane.do" not in body.decode(), body
        notes = "".join(d["choices"][0]["delta"].get("note", "") for _, d in events(body) if isinstance(d, dict))
        assert notes.startswith("write to [REDACTED:EMAIL]"), notes


def test_content_in_the_finish_chunk_and_reasoning_summaries_are_masked(gw):
    """On da8353c the finish chunk's content and `response.reasoning_summary_text.delta` events
    passed raw."""
    fin = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "mail " + EMAIL}, "finish_reason": "stop"}]}
    status, _, body = answer(gw, "text/event-stream", sse(fin))
    assert status == 200 and EMAIL not in body.decode(), body
    assert [d["choices"][0]["delta"]["content"] for _, d in events(body)[:1]] == ["mail [REDACTED:EMAIL]"]
    kind = "response.reasoning_summary_text.delta"
    docs = [{"type": kind, "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": d} for d in ["The user is jane", ".doe@exam", "ple.com."]]
    status, _, body = answer(gw, "text/event-stream", sse(*docs, kind=kind))
    assert status == 200 and "jane" not in body.decode(), body
    assert "".join(d["delta"] for k, d in events(body) if k == kind) == "The user is [REDACTED:EMAIL]."


@pytest.mark.parametrize("content_type,rs", [("application/x-ndjson", ""), ("application/jsonl", ""), ("application/json-seq", "\x1e")])
def test_line_delimited_json_streams_are_masked_split_safe(gw, content_type, rs):
    """On da8353c an `application/x-ndjson` answer was masked as one JSON document at the end, or
    (not JSON as a whole) as text; JSON text sequences the same."""
    pieces = ["call ", PHONE[:6], PHONE[6:] + " or ", EMAIL[:9], EMAIL[9:], "."]
    lines = [rs + json.dumps({"model": "llama3", "message": {"role": "assistant", "content": p}, "done": False}) + "\n" for p in pieces]
    status, ct, body = answer(gw, content_type, lines)
    assert status == 200 and ct.startswith(content_type)
    text = body.decode()
    assert EMAIL not in text and "jane.doe" not in text and "415 555" not in text, text
    lines = [l for l in text.split("\n") if l.strip()]  # (splitlines would cut at RS too)
    assert lines and all(l.startswith(rs) for l in lines), text
    docs = [json.loads(l.lstrip("\x1e")) for l in lines]
    assert "".join(d["message"]["content"] for d in docs) == "call [REDACTED:PHONE] or [REDACTED:EMAIL]."


def test_percent_encoded_and_escaped_values_are_masked_both_ways(gw, mock):
    """On da8353c `jane.doe%40example.com` reached the upstream in a prompt and the agent in an
    answer, as did `\\u0040` and `&#64;` forms in text."""
    encoded = urllib.parse.quote(EMAIL)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": f"link https://x.example/?to={encoded}&tel={urllib.parse.quote_plus(PHONE)}"}]})
        assert r.status_code == 200, r.text
    sent = mock.state.last["body"].decode()
    assert encoded not in sent and "415" not in sent, sent
    assert "to=%5BREDACTED%3AEMAIL%5D" in sent, sent
    text = f"see jane.doe&#64;example.com, jane.doe\\u0040example.com and {encoded}&x=1"
    status, _, body = answer(gw, "text/plain; charset=utf-8", [text[:14], text[14:40], text[40:]])
    assert status == 200
    out = body.decode()
    assert "jane.doe" not in out, out
    assert out.endswith("&x=1") and out.startswith("see "), out


def test_bodies_that_cannot_be_read_as_text_are_refused_unless_the_policy_lets_them_pass(gw):
    """On da8353c an `application/octet-stream` (or image, audio) answer on a masking route passed
    unread, e-mail and all."""
    blob = {"hex": (b"\x89PNG\r\n\x1a\n" + EMAIL.encode()).hex()}
    for ct in ["application/octet-stream", "image/png", "audio/mpeg"]:
        status, _, body = answer(gw, ct, [blob])
        assert status == 502, (ct, body[:200])
        err = json.loads(body)["error"]
        assert err["code"] == "response_not_maskable" and ct in err["message"] and "on_binary_response" in err["message"], err
        assert EMAIL.encode() not in body
    status, _, body = answer(gw, "image/png", [blob], path="/v1/raw/binary-ok")
    assert status == 200 and body == bytes.fromhex(blob["hex"])


def test_a_character_split_across_chunks_of_a_text_answer_arrives_whole(gw):
    """On da8353c a multi-byte character cut by a chunk boundary of a text answer reached the
    agent as two U+FFFD."""
    raw = "café — naïve ✓ ".encode() * 3
    chunks = [{"hex": raw[i:i + 5].hex()} for i in range(0, len(raw), 5)]
    status, _, body = answer(gw, "text/plain; charset=utf-8", chunks)
    assert status == 200 and body == raw, body


def test_the_route_key_split_across_events_never_reaches_the_agent(gw, mock):
    """On da8353c the route's own key, echoed by the upstream in two content deltas, reached the
    agent in two halves when no detector recognises it (base64 with `/`): the byte scrubber after
    masking saw the halves apart, each inside its own JSON string, and the masker held nothing
    back for it."""
    for cut in range(1, len(HEX_KEY)):
        docs = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": p}}]} for p in ["key: " + HEX_KEY[:cut], HEX_KEY[cut:] + " ok"]]
        status, _, body = answer(gw, "text/event-stream", sse(*docs), path="/v1/raw/pii-only")
        assert status == 200
        assert mock.state.last["headers"].get("api-key") == HEX_KEY  # the key the scrubber knows
        text = "".join(d["choices"][0]["delta"]["content"] for _, d in events(body) if isinstance(d, dict))
        assert text == "key: " + "*" * len(HEX_KEY) + " ok", (cut, text)
        for n in range(6, len(HEX_KEY) + 1):
            assert HEX_KEY[:n] not in body.decode() and HEX_KEY[-n:] not in body.decode(), (cut, body)


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/x-ndjson"])
def test_the_route_key_split_across_events_is_caught_on_a_route_without_masking(start_gateway, mock, upstream_ca_file,
                                                                               tmp_path, content_type):
    """Issue 22: the key is caught split across stream events on every route. On the session's
    start binary a route with credentials and no masking policy streamed SSE and NDJSON through
    the byte scrubber only, which saw the key's halves apart, each inside its own JSON string
    (an SDK joins them)."""
    key_file = tmp_path / "hex-key"
    key_file.write_text(HEX_KEY)
    gw = start_gateway(route("plain", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, key_header=False,
                             credentials={"set_headers": {"api-key": f"${{file:{key_file}}}"}}))
    for cut in (1, 5, len(HEX_KEY) // 2, len(HEX_KEY) - 1):
        docs = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": p}}]} for p in ["key: " + HEX_KEY[:cut], HEX_KEY[cut:] + " ok"]]
        chunks = sse(*docs) if content_type == "text/event-stream" else [json.dumps(d) + "\n" for d in docs]
        status, _, body = answer(gw, content_type, chunks)
        assert status == 200
        assert mock.state.last["headers"].get("api-key") == HEX_KEY
        got = events(body) if content_type == "text/event-stream" else [("", json.loads(l)) for l in body.decode().splitlines() if l]
        text = "".join(d["choices"][0]["delta"]["content"] for _, d in got if isinstance(d, dict))
        assert text == "key: " + "*" * len(HEX_KEY) + " ok", (cut, text)


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "application/x-ndjson", "text/x-unknown"])
def test_an_sse_body_under_another_label_is_masked_as_sse(gw, content_type):
    """An SDK asked to stream parses the body as SSE whatever its content type. On da8353c (text)
    and on a58933b (NDJSON) such a body was masked as text or lines, and a key split across two
    events reached the agent in halves, which the SDK joined."""
    a, b = "sk-ant-api03-AbCd", "EfGhIjKlMnOpQrStUvWxYz0123456789"
    docs = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": p}}]} for p in ["key " + a, b + " end"]]
    status, _, body = answer(gw, content_type, sse(*docs))
    assert status == 200
    text = body.decode()
    assert a not in text and b not in text, text
    joined = "".join(d["choices"][0]["delta"]["content"] for _, d in events(body) if isinstance(d, dict))
    assert joined == "key [REDACTED:ANTHROPIC_KEY] end", joined
