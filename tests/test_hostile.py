"""Hostile input from an agent: request smuggling attempts must never desynchronise the pooled
upstream connection, oversized or malformed headers get a clear refusal, bodies the gateway must
inspect are never passed through unread (compressed, not UTF-8, nested too deep), and after each
attempt the gateway keeps serving everyone else."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from gateway_driver import CHAT, assert_chat_served
from gwconfig import AGENT_TOKEN, REDACT_POLICY, masked_chat_routes, route
from net import request_head as head


@pytest.fixture
def gw(start_gateway, mock, upstream_ca_file):
    # Chat bodies are inspected (read whole, masked); everything else streams through.
    return start_gateway(masked_chat_routes(mock.port, upstream_ca_file), extra=REDACT_POLICY)


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else 0


def still_serving(gw, mock) -> None:
    assert_chat_served(gw)
    with gw.client() as c:
        r = c.post("/v1/responses", json={"model": "m", "input": "hi"})
        assert r.status_code == 200, r.text
    paths = [q["path"] for q in mock.state.requests]
    assert not any("smuggled" in p for p in paths), paths


SMUGGLING = {
    # CL.TE: a front end that believes Content-Length would forward the trailing request.
    "cl-te": head("POST", "/v1/responses", "Content-Type: application/json", "Content-Length: 6",
                  "Transfer-Encoding: chunked") + b"0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    # TE.CL: a back end that believes Content-Length would see the chunk body as a new request.
    "te-cl": head("POST", "/v1/responses", "Content-Type: application/json", "Content-Length: 4",
                  "Transfer-Encoding: chunked") + b"2b\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\nX: \r\n0\r\n\r\n",
    "te-obfuscated": head("POST", "/v1/responses", "Content-Length: 4", "Transfer-Encoding: xchunked")
    + b"2b\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\nX: \r\n0\r\n\r\n",
    "te-list": head("POST", "/v1/responses", "Content-Length: 4", "Transfer-Encoding: chunked, identity")
    + b"2b\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\nX: \r\n0\r\n\r\n",
    "te-space-before-colon": head("POST", "/v1/responses", "Content-Length: 4", "Transfer-Encoding : chunked")
    + b"2b\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\nX: \r\n0\r\n\r\n",
    "double-cl": head("POST", "/v1/responses", "Content-Length: 4", "Content-Length: 50")
    + b"{}\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_attempts_never_reach_the_upstream_as_requests(gw, mock, name):
    # Warm the pool so a desync would hit a reused upstream connection.
    still_serving(gw, mock)
    resp = gw.raw(SMUGGLING[name], timeout=10)
    # Refused outright, or handled as one request whose body is the rest; never two requests.
    assert status_of(resp) in (0, 200, 400, 413, 501), resp[:300]
    still_serving(gw, mock)
    still_serving(gw, mock)


def test_oversized_headers_are_refused_and_others_served(gw, mock):
    # Refused by the gateway itself whatever the upstream's own limit (before, a 200 KB field was
    # forwarded and the mock cut the connection while the gateway wrote: a 502 under load).
    before = len(mock.state.requests)
    resp = gw.raw(head("GET", "/v1/models", "X-Big: " + "a" * 200_000), timeout=10)
    assert status_of(resp) == 431 and b"headers_too_large" in resp, resp[:300]
    assert len(mock.state.requests) == before
    # Just under the bound in several fields (a large token): served.
    resp = gw.raw(head("GET", "/v1/models", *[f"X-T{i}: " + "t" * 6000 for i in range(10)]), timeout=10)
    assert status_of(resp) == 200, resp[:300]
    # Too many header fields: refused by the gateway itself, nothing upstream. (Before, they were
    # forwarded and the mock's own limit of 100 answered 431, or cut the connection while the
    # gateway was still writing: a 502 under load.)
    before = len(mock.state.requests)
    resp = gw.raw(head("GET", "/v1/models", *[f"X-H{i}: v" for i in range(101)]), timeout=10)
    assert status_of(resp) == 431 and b"too_many_headers" in resp, resp[:300]
    # Past Pingora's own parser limit it answers 400 before the gateway sees the request.
    resp = gw.raw(head("GET", "/v1/models", *[f"X-H{i}: v" for i in range(2000)]), timeout=10)
    assert status_of(resp) in (400, 431), resp[:200]
    assert len(mock.state.requests) == before
    still_serving(gw, mock)


def test_malformed_header_lines_never_reach_the_upstream_malformed(gw, mock):
    # A bare LF line end and an obs-fold continuation line: refused, or parsed into well-formed
    # headers; the upstream never receives a control character in a header, nor a second request.
    before = len(mock.state.requests)
    for raw in (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + AGENT_TOKEN.encode() + b"\r\nX-A: one\nX-Injected: yes\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + AGENT_TOKEN.encode() + b"\r\nX-A: one\r\n X-Injected: yes\r\n\r\n",
    ):
        gw.raw(raw, timeout=10)
    assert len(mock.state.requests) <= before + 2
    for q in mock.state.requests:
        for k, v in q["header_list"]:
            assert not any(ch in k + v for ch in "\r\n\0"), (k, v)
    still_serving(gw, mock)


def test_compressed_bodies_are_refused_on_inspected_routes_never_passed_unread(gw, mock):
    secret = "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5"
    body = gzip.compress(json.dumps({"model": "m", "messages": [{"role": "user", "content": secret}]}).encode())
    with gw.client() as c:
        r = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "compressed_body_refused"
    # A decompression bomb is refused the same way, before anything is inflated.
    bomb = gzip.compress(b"\0" * 50_000_000)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415
    assert mock.state.requests == []
    still_serving(gw, mock)


def test_bodies_that_cannot_be_inspected_are_refused(gw, mock):
    with gw.client() as c:
        bad_utf8 = c.post("/v1/chat/completions", content=b"\xff\xfe prompt \xc3\x28", headers={"content-type": "text/plain"})
        assert bad_utf8.status_code == 415 and bad_utf8.json()["error"]["code"] == "uninspectable_body"
        deep = "[" * 100_000 + "]" * 100_000
        r = c.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
        # Too deep to parse as JSON: masked as text (nothing to find) and forwarded, or refused;
        # never a crash (the mock upstream's own JSON parser gives up on it: 502 is the mock).
        assert r.status_code in (200, 400, 502), r.text
    still_serving(gw, mock)


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_huge_sse_event_is_bounded_on_masked_routes_and_intact_on_plain_ones(plain_and_masked):
    plain, masked = plain_and_masked(recording="full")
    big = 3 << 20  # one 3 MiB event: over the masker's 1 MiB bound for one event
    body = dict(CHAT, stream=True)
    for gw in (masked, plain):
        rss0 = rss_kib(gw.proc.pid)
        for _ in range(3):
            with gw.client(timeout=30) as c:
                with c.stream("POST", "/v1/chat/completions", json=body, headers={"x-mock-big-event": str(big)}) as r:
                    assert r.status_code == 200
                    text = b"".join(r.iter_bytes()).decode()
            if gw is masked:
                # The stream ends with an error event; not one byte of the oversized event leaks
                # (it is held until it ends, and it never ends within the bound).
                assert "event: error" in text and "larger than 1048576 bytes" in text, text[-300:]
                assert "AAAAAAAAAA" not in text
                assert "[DONE]" not in text
            else:
                # Nothing to inspect: the event goes through whole and the stream completes.
                assert text.count("A" * 1000) >= big // 1000 - 1 and "[DONE]" in text
        # Memory stays bounded (no copy per event kept around): well under the 9 MiB sent.
        assert rss_kib(gw.proc.pid) - rss0 < 24 * 1024, (rss0, rss_kib(gw.proc.pid))
        assert_chat_served(gw)
    # Each record keeps at most recording.max_body (1 MiB) of events and says it was truncated;
    # the masked route's record holds none of the event either.
    for gw in (masked, plain):
        seg = gw.state_dir / "var" / "records" / "seg-00000001.jsonl"
        deadline = time.monotonic() + 10
        while (not seg.exists() or seg.read_text().count('"/v1/chat/completions"') < 4) and time.monotonic() < deadline:
            time.sleep(0.1)
        recs = [json.loads(l) for l in seg.read_text().splitlines()]
        streamed = [r for r in recs if r["path"] == "/v1/chat/completions" and r["response"]["events"] is not None]
        assert len(streamed) == 3, [r["path"] for r in recs]
        for r in streamed:
            kept = sum(len(json.dumps(e["data"])) for e in r["response"]["events"])
            assert kept < (1 << 20) + 4096, kept
            if gw is plain:
                assert r["response"]["truncated"] is True
            else:
                assert "AAAAAAAAAA" not in json.dumps(r)


def test_compressed_upstream_responses_are_refused_where_they_would_be_inspected(start_gateway, plain_and_masked, mock, upstream_ca_file):
    # `keyed` injects a key (answers are scrubbed for it); `bare` neither masks nor injects.
    keyed, masked = plain_and_masked()
    bare = start_gateway(route("up", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, key_header=False))
    for gw in (masked, keyed):
        seen = len(mock.state.requests)
        with gw.client() as c:
            r = c.post("/v1/chat/completions", json=CHAT, headers={"x-mock-gzip": "1"})
        # The gateway asked for an uncompressed answer; the upstream compressed it anyway: it
        # cannot be masked or checked for the route's key, so it is refused, never passed on.
        assert mock.state.requests[seen]["headers"].get("accept-encoding") == "identity"
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_encoding_refused" and "gzip" in err["message"], err
        assert r.headers.get("content-encoding") is None
        assert gw.wait_metric("agentgate_errors_total", 1, route="up", kind="upstream_encoding_refused") == 1
        assert_chat_served(gw)
    # A route that neither masks nor injects a key has nothing to inspect: the answer passes as sent.
    with bare.client() as c:
        r = c.post("/v1/chat/completions", json=CHAT, headers={"x-mock-gzip": "1"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."


def test_expect_continue_on_a_decided_body_is_not_passed_upstream(gw, mock):
    """The body of an inspected request is read whole before anything goes upstream, so its
    `Expect: 100-continue` has been answered by the time it leaves. Forwarded, the upstream's
    `100 Continue` reached the agent after its body, as a second response head (with a
    `Transfer-Encoding` header) in front of the real one."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = gw.raw(head("POST", "/v1/chat/completions", "Content-Type: application/json",
                       f"Content-Length: {len(body)}", "Expect: 100-continue", "Connection: close") + body, timeout=10)
    assert resp.startswith(b"HTTP/1.1 200 "), resp[:300]
    assert b"100 Continue" not in resp, resp[:300]
    assert "expect" not in mock.state.last["headers"]

