"""Recording: exchanges through the real OpenAI SDK are recorded (masked) and `sessions show`
reconstructs them; `replay` keeps the timing; `audit verify` passes on an intact store and
catches an edited byte, a deleted record, a swapped pair and a truncated segment; a crash
mid-write leaves a store that opens and keeps recording; retention by age and size;
`recording: off` writes nothing; no secret or personal value ever lands in the state
directory; a full disk follows `on_failure`."""

from __future__ import annotations

import json
import resource
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time

import httpx
import pytest

from gateway_driver import BINARY, eventually, limit_file_size
from gwconfig import AGENT_TOKEN, people_identity, person_token, route
from test_sdk import run_sdk

SECRET = "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5"
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


def records(gw) -> pathlib.Path:
    return gw.state_dir / "var" / "records"


def segments(gw) -> list[tuple[str, int]]:
    """(name, size) of each record segment, oldest first (one deleted meanwhile is left out)."""
    out = []
    for p in sorted(records(gw).glob("seg-*.jsonl")):
        try:
            out.append((p.name, p.stat().st_size))
        except FileNotFoundError:
            pass
    return out


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr + out.stdout
    return out


def wait_records(gw, n: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idx = records(gw) / "index.jsonl"
        lines = idx.read_text().splitlines() if idx.exists() else []
        if len(lines) >= n:
            return [json.loads(l) for l in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} records after {timeout} s")


@pytest.fixture
def gw(start_gateway, mock, upstream_ca_file):
    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                         identity=people_identity({"audrey": ["auditors"]}), admin={"auditors": ["auditors"]})


def test_sdk_exchanges_recorded_and_shown(gw, mock):
    assert run_sdk(gw, "chat")["text"] == "Hello from the mock upstream."
    assert run_sdk(gw, "chat_stream")["chunks"] == 5
    entries = wait_records(gw, 2)
    listing = cli("sessions", "list", "--dir", str(records(gw))).stdout
    for e in entries:
        assert e["id"] in listing and e["subject"] == "test-agent" and e["route"] == "mock"
        shown = cli("sessions", "show", e["id"], "--dir", str(records(gw))).stdout
        assert "[user] hi" in shown, shown
        assert "[assistant] Hello from the mock upstream." in shown, shown
        assert "identity test-agent (service_account" in shown and "TLSv1." in shown
    assert "SSE events" in cli("sessions", "show", entries[1]["id"], "--dir", str(records(gw))).stdout
    # The admin API lists and returns them too, to auditors only.
    admin = f"http://127.0.0.1:{gw.admin_port}"
    auditor = {"Authorization": f"Bearer {person_token('audrey')}"}
    assert httpx.get(f"{admin}/v1/sessions", timeout=5).status_code == 401
    denied = httpx.get(f"{admin}/v1/sessions", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=5)
    assert denied.status_code == 403 and "not in an auditor group" in denied.text
    listed = httpx.get(f"{admin}/v1/sessions?route=mock", headers=auditor, timeout=5).json()
    assert [x["id"] for x in listed] == [entries[1]["id"], entries[0]["id"]]
    # Parameters are percent-decoded (the console's URLSearchParams encodes them).
    encoded = httpx.get(f"{admin}/v1/sessions?identity=test%2Dagent&route=m%6Fck", headers=auditor, timeout=5).json()
    assert [x["id"] for x in encoded] == [x["id"] for x in listed]
    rec = httpx.get(f"{admin}/v1/sessions/{entries[0]['id']}", headers=auditor, timeout=5).json()
    assert rec["response"]["status"] == 200 and rec["identity"]["subject"] == "test-agent"
    assert "authorization" not in rec["request"]["headers"]
    assert httpx.get(f"{admin}/v1/sessions/nope", headers=auditor, timeout=5).status_code == 404
    assert gw.wait_metric("agentgate_records_written_total", 2) == 2
    assert cli("audit", "verify", "--dir", str(records(gw))).stdout.count("intact") == 1


def test_replay_keeps_the_original_timing(gw, mock):
    r = run_sdk(gw, "masked_chat", env_extra={"SDK_STREAM": "1", "SDK_EXTRA_HEADERS": json.dumps({"x-mock-say": "one two three four five six", "x-mock-delay-ms": "150"})})
    assert r["status"] == 200
    entry = wait_records(gw, 1)[0]
    rec = json.loads(cli("sessions", "show", entry["id"], "--dir", str(records(gw)), "--json").stdout)
    ts = [e["t_ms"] for e in rec["response"]["events"]]
    recorded = ts[-1] - ts[0]
    assert recorded > 700, ts
    for speed, expect in ((1.0, recorded), (2.0, recorded / 2)):
        proc = subprocess.Popen([str(BINARY), "sessions", "replay", entry["id"], "--dir", str(records(gw)), "--speed", str(speed)], stdout=subprocess.PIPE, text=True)
        stamps = []
        for line in proc.stdout:
            if line.startswith("data: "):
                stamps.append(time.monotonic())
        assert proc.wait(timeout=30) == 0
        played = (stamps[-1] - stamps[0]) * 1000
        assert abs(played - expect) <= 0.1 * expect, (speed, played, expect)
        assert len(stamps) == len(ts)


def test_recording_off_writes_nothing(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, recording="off"))
    with gw.client() as c:
        assert c.get("/v1/models").status_code == 200
    time.sleep(0.3)
    assert not records(gw).exists() or not any(records(gw).iterdir())


def test_no_secret_or_personal_value_lands_in_the_state_dir(start_gateway, mock, upstream_ca_file):
    masked = route("masked", "/v1/chat/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, masking="default")
    plain = route("plain", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file)
    policy = {"masking": {"policies": {"default": {"request": {"secrets": "redact", "pii": "pseudonymize"}}}}}
    gw = start_gateway([masked, plain], extra=policy)
    prompt = f"my key {SECRET}, mail {EMAIL}, card {CARD}"
    for path in ("/v1/chat/completions", "/v1/responses"):
        for stream in (False, True):
            body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}], "input": prompt}
            with gw.client() as c:
                r = c.post(path, json=body, headers={"x-mock-echo": "1", "x-note": f"from {EMAIL}"})
            assert r.status_code == 200, r.text
    wait_records(gw, 4)
    gw.wait_metric("agentgate_records_written_total", 4)  # committed: segment and index written whole
    for f in gw.state_dir.rglob("*"):
        if f.is_file() and f.name not in ("stdout.log", "stderr.log", "agentgate.yaml"):
            data = f.read_bytes()
            for value in (SECRET[:20], EMAIL, CARD, "4111111111111111"):
                assert value.encode() not in data, f"{value} found in {f}"
    # The plain route (no masking policy; the agent got its values back) still records the
    # redacted forms.
    assert prompt in r.text
    text = (records(gw) / "seg-00000001.jsonl").read_text()
    assert "[REDACTED:OPENAI_KEY]" in text and "[REDACTED:EMAIL]" in text


def _make_store(gw, n: int) -> pathlib.Path:
    with gw.client() as c:
        for i in range(n):
            assert c.get("/v1/models", headers={"x-n": str(i)}).status_code == 200
    wait_records(gw, n)
    gw.wait_metric("agentgate_records_written_total", n)  # committed: segment and index written whole
    return records(gw)


def test_audit_verify_catches_tampering(gw, mock, tmp_path):
    store = _make_store(gw, 6)
    ok = cli("audit", "verify", "--dir", str(store))
    assert "intact: 6 records" in ok.stdout

    def variant(name, edit):
        d = tmp_path / name
        shutil.copytree(store, d)
        seg = d / "seg-00000001.jsonl"
        lines = seg.read_bytes().split(b"\n")[:-1]
        seg.write_bytes(edit(lines))
        out = cli("audit", "verify", "--dir", str(d), check=False)
        assert out.returncode == 1, (name, out.stdout)
        return out.stdout

    def flip(lines):
        l = bytearray(lines[2])
        i = l.index(b'"method":"GET"') + len(b'"method":"')
        l[i] = ord("P")
        return b"\n".join(lines[:2] + [bytes(l)] + lines[3:]) + b"\n"

    assert "record seq 2 was modified" in variant("edited", flip)
    assert "expected record seq 2, found seq 3" in variant("deleted", lambda ls: b"\n".join(ls[:2] + ls[3:]) + b"\n")
    assert "expected record seq 2, found seq 3" in variant("swapped", lambda ls: b"\n".join(ls[:2] + [ls[3], ls[2]] + ls[4:]) + b"\n")
    torn = variant("truncated", lambda ls: (b"\n".join(ls) + b"\n")[:-40])
    assert "ends inside a record" in torn and "up to seq 4" in torn
    assert "removed from the end" in variant("tail-cut", lambda ls: b"\n".join(ls[:-1]) + b"\n")


def test_crash_mid_write_leaves_a_store_that_opens_and_keeps_recording(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    stop = threading.Event()

    def load():
        with gw.client() as c:
            while not stop.is_set():
                try:
                    c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]})
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_records(gw, 20, timeout=30)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    seg = sorted(records(gw).glob("seg-*.jsonl"))[-1]
    with open(seg, "ab") as f:  # a torn write, whatever the kill left
        f.write(b'{"seq":999999,"kind":"exchange","id":"torn')
    before = len(wait_records(gw, 20))
    # The same state directory, started again: it opens and records on.
    again = type(gw)(gw.config_path.read_text(), gw.state_dir, gw.port, gw.admin_port)
    try:
        with again.client() as c:
            assert c.get("/v1/models").status_code == 200
        assert len(wait_records(again, before + 1)) == before + 1
        out = cli("audit", "verify", "--dir", str(records(gw)), check=False)
        assert out.returncode == 1 and "ends inside a record" in out.stdout, out.stdout
        assert len(list(records(gw).glob("seg-*.jsonl"))) >= 2, "recording went on in a new segment"
    finally:
        again.stop()


def test_retention_by_size_and_age(start_gateway, mock, upstream_ca_file):
    extra = {"recording": {"segment_size": "2KiB", "max_size": "12KiB", "max_age": "2s"}}
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file), extra=extra)
    with gw.client() as c:
        for _ in range(30):
            assert c.get("/v1/models").status_code == 200
    gw.wait_metric("agentgate_records_written_total", lambda v: v >= 30)
    # Old segments are deleted off the request path: wait (boundedly) for the store to shrink.
    bound = 12 * 1024 + 4096
    segs = eventually(lambda: segments(gw), lambda ss: ss and ss[0][0] != "seg-00000001.jsonl" and sum(n for _, n in ss) <= bound)
    total = sum(n for _, n in segs)
    assert segs[0][0] != "seg-00000001.jsonl", "the oldest segments were not deleted"
    assert total <= bound, total
    assert "intact" in cli("audit", "verify", "--dir", str(records(gw))).stdout
    first = segs[0][0]
    time.sleep(2.5)  # the segments so far grow older than max_age
    with gw.client() as c:
        for _ in range(12):
            assert c.get("/v1/models").status_code == 200
    gw.wait_metric("agentgate_records_written_total", lambda v: v >= 42)
    left = eventually(lambda: segments(gw), lambda ss: all(name > first for name, _ in ss))
    assert all(name > first for name, _ in left), "segments older than max_age remain"
    assert "intact" in cli("audit", "verify", "--dir", str(records(gw))).stdout


@pytest.mark.parametrize("policy", ["reject", "continue"])
def test_disk_full_follows_on_failure(start_gateway, mock, upstream_ca_file, policy):
    extra = {"recording": {"on_failure": policy}}
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file), extra=extra, preexec=limit_file_size(96 * 1024))
    statuses = []
    with gw.client() as c:
        for _ in range(120):
            r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "y" * 1500}]})
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "recording_unavailable"
                break
            time.sleep(0.01)
    assert gw.wait_metric("agentgate_record_failures_total", lambda v: v >= 1, reason="disk_full") >= 1
    if policy == "reject":
        assert statuses[-1] == 503, statuses
    else:
        assert set(statuses) == {200}, statuses
    # Space comes back: recording resumes, and the store holds no torn line where a write
    # failed half way (the chain verifies, every index entry points at its own record).
    resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    deadline = time.monotonic() + 10
    with gw.client() as c:
        while True:
            r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "after"}]})
            if r.status_code == 200:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.1)
        for _ in range(3):
            assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "after"}]}).status_code == 200
    before = len(statuses) - (1 if policy == "reject" else 0)
    entries = wait_records(gw, 4)
    out = cli("audit", "verify", "--dir", str(records(gw)), check=False)
    assert out.returncode == 0 and "intact" in out.stdout, out.stdout + out.stderr
    for e in entries:
        shown = cli("sessions", "show", e["id"], "--dir", str(records(gw))).stdout
        assert e["id"] in shown, shown
    if policy == "reject":
        # Nothing was lost: every answered request before the limit, and the four after, are on record.
        wait_records(gw, before + 4)


def test_resend_sends_the_recorded_request_again_and_compares(gw, mock):
    assert run_sdk(gw, "chat_stream")["chunks"] == 5
    entry = wait_records(gw, 1)[0]
    out = cli("sessions", "replay", entry["id"], "--dir", str(records(gw)), "--resend", gw.base_url, "--token", AGENT_TOKEN, "--ca", str(gw.ca_file)).stdout
    assert "--- new answer ---\nHello from the mock upstream." in out, out
    assert "=== identical ===" in out, out
    assert len(mock.state.requests) == 2, "the request was sent again"
    sent = json.loads(mock.state.last["body"])
    assert sent["messages"][0]["content"] == "hi" and sent["stream"] is True


def test_records_streamed_to_stdout_masked(start_gateway, mock, upstream_ca_file):
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file), extra={"recording": {"stdout": True}})
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}, headers={"x-mock-echo": "1"})
    assert r.status_code == 200 and EMAIL in r.text
    wait_records(gw, 1)
    deadline = time.monotonic() + 5
    records_out = []
    while time.monotonic() < deadline and not records_out:
        records_out = [l for l in gw.session_lines() if l.get("kind") == "exchange" and "prev" in l]
        time.sleep(0.1)
    assert records_out, "no record on stdout"
    rec = records_out[-1]
    assert rec["response"]["status"] == 200 and rec["identity"]["subject"] == "test-agent"
    line = json.dumps(rec)
    assert EMAIL not in line and "[REDACTED:EMAIL]" in line
