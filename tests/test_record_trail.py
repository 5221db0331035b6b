"""The record trail against an insider with disk access (issue 29): each attack is done on a
stopped gateway's store the way the issue's reviewer did it, and `audit verify` with the
checkpoints the gateway printed on stdout (what the cluster's log pipeline keeps) must name it.

On da8353c (before signed checkpoints) every one of these stores verified "intact"; there the
`--checkpoints` flag and `recording.checkpoints` do not exist (run with
AGENTGATE_BIN=<that binary> to see the tests fail)."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess

import httpx

from gateway_driver import BINARY, Gateway
from gwconfig import people_identity, person_token, route
from test_recording import cli, records


def start(start_gateway, mock, ca, every_records=4, **recording):
    extra = {"recording": {"checkpoints": {"every_records": every_records}, **recording}}
    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", ca), extra=extra,
                         identity=people_identity({"audrey": ["auditors"]}), admin={"auditors": ["auditors"]})


def traffic(gw, n: int) -> None:
    before = gw.metric("agentgate_records_written_total")
    with gw.client() as c:
        for i in range(n):
            assert c.get("/v1/models", headers={"x-n": str(i)}).status_code == 200
    gw.wait_metric("agentgate_records_written_total", lambda v: v >= before + n)


def stop(gw) -> None:
    """SIGTERM: queued records and a last checkpoint are written before exit. What the process
    printed goes to the log pipeline (a file beside the state directories, kept across restarts
    in the same state directory, which overwrite stdout.log)."""
    gw.stop()
    assert gw.proc.returncode == 0, gw.stderr_path.read_text()
    lines = [l for l in gw.stdout_path.read_text().splitlines() if '"kind":"checkpoint"' in l]
    with open(pipeline(gw), "a") as f:
        f.write("".join(f"2026-12-05T00:00:00Z stdout F {l}\n" for l in lines))


def restart(gw) -> Gateway:
    return Gateway(gw.config_path.read_text(), gw.state_dir, gw.port, gw.admin_port)


def pipeline(gw) -> pathlib.Path:
    return gw.state_dir.parent / "log-pipeline.txt"


def exported(gw) -> pathlib.Path:
    """What the log pipeline kept of every gateway of the test (stopped ones), with its prefixes."""
    assert '"kind":"checkpoint"' in pipeline(gw).read_text(), "no checkpoint on stdout"
    return pipeline(gw)


def pubkey(gw) -> str:
    out = subprocess.run([str(BINARY), "audit", "pubkey", "--config", str(gw.config_path)], cwd=gw.state_dir,
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, ROUTE_KEY="x"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ed25519:"), out.stdout
    return out.stdout.strip()


def verify(store, checkpoints=None, key=None) -> subprocess.CompletedProcess:
    args = ["audit", "verify", "--dir", str(store)]
    if checkpoints:
        args += ["--checkpoints", str(checkpoints)]
    if key:
        args += ["--pubkey", key]
    return cli(*args, check=False)


def seg_files(store) -> list[pathlib.Path]:
    return sorted(store.glob("seg-*.jsonl"))


def cut_tail(store, n: int) -> None:
    """Removes the last `n` records from the newest segment and from the index, at line
    boundaries, recomputing nothing."""
    seg = [s for s in seg_files(store) if s.stat().st_size > 0][-1]
    lines = seg.read_bytes().splitlines(keepends=True)
    assert len(lines) > n
    seg.write_bytes(b"".join(lines[:-n]))
    idx = store / "index.jsonl"
    idx.write_bytes(b"".join(idx.read_bytes().splitlines(keepends=True)[:-n]))


def drop_local_checkpoints_past(store, last_seq: int) -> None:
    """The thorough insider also removes the store's own checkpoints that name the cut records."""
    cp = store / "checkpoints.jsonl"
    keep = [l for l in cp.read_text().splitlines() if (json.loads(l)["seq"] or 0) <= last_seq]
    cp.write_text("".join(l + "\n" for l in keep))


def last_seq(store) -> int:
    return json.loads((store / "index.jsonl").read_text().splitlines()[-1])["seq"]


def test_without_outside_checkpoints_verify_states_its_limit(start_gateway, mock, upstream_ca_file):
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 5)
    stop(gw)
    out = verify(records(gw))
    assert out.returncode == 0, out.stdout
    assert "intact: 5 records" in out.stdout
    assert "records cut from the end, a deleted newest segment or a rollback to an older copy of the store cannot be ruled out" in out.stdout
    # With them, the same store checks out against its newest signed head.
    key = pubkey(gw)
    ok = verify(records(gw), exported(gw), key)
    assert ok.returncode == 0 and "checked against" in ok.stdout and "records up to seq 4" in ok.stdout, ok.stdout


def test_a_records_cut_from_the_end_and_the_index_are_caught_and_their_numbers_not_reused(start_gateway, mock, upstream_ca_file, tmp_path):
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 6)
    stop(gw)
    key, store = pubkey(gw), records(gw)
    cut_tail(store, 2)
    # The chain alone cannot tell; the store's own signed checkpoints still do, and the gateway
    # refuses to go on from the cut chain.
    assert verify(store).returncode == 0
    own = verify(store, key=key)
    assert own.returncode == 1 and "records were cut from the end" in own.stdout, own.stdout
    refused = subprocess.run([str(BINARY), "run", "--config", str(gw.config_path)], cwd=gw.state_dir, capture_output=True, text=True, timeout=60, env=dict(os.environ, ROUTE_KEY="x"))
    assert refused.returncode != 0 and "are not issued again" in refused.stderr, refused.stderr
    # The thorough insider cuts the store's checkpoints too: restarted, the gateway issues seq 4
    # and 5 again, to other records, and the chain looks whole.
    drop_local_checkpoints_past(store, 3)
    again = restart(gw)
    traffic(again, 3)
    stop(again)
    assert last_seq(store) == 6
    plain = verify(store)
    assert plain.returncode == 0, plain.stdout  # the chain and the index agree: only outside checkpoints tell
    out = verify(store, exported(gw), key)
    assert out.returncode == 1, out.stdout
    assert "record seq 5 is not the record checkpoint" in out.stdout or "two different checkpoints" in out.stdout, out.stdout
    # Before the restart, the cut alone.
    tmp = tmp_path / "cut-only"
    gw2 = start(start_gateway, mock, upstream_ca_file)
    traffic(gw2, 6)
    stop(gw2)
    shutil.copytree(records(gw2), tmp)
    cut_tail(tmp, 2)
    drop_local_checkpoints_past(tmp, 3)
    out = verify(tmp, exported(gw2), pubkey(gw2))
    assert out.returncode == 1 and "records were cut from the end" in out.stdout and "now ends at seq 3" in out.stdout, out.stdout


def test_b_the_newest_segment_deleted_with_its_index_entries_is_caught(start_gateway, mock, upstream_ca_file, tmp_path):
    gw = start(start_gateway, mock, upstream_ca_file, segment_size="2KiB")
    traffic(gw, 12)
    stop(gw)
    store = records(gw)
    segs = [s for s in seg_files(store) if s.stat().st_size > 0]
    assert len(segs) >= 3, segs
    newest = segs[-1]
    n = int(newest.name[4:12])
    newest.unlink()
    for empty in seg_files(store):
        if int(empty.name[4:12]) > n:
            empty.unlink()
    idx = store / "index.jsonl"
    idx.write_text("".join(l + "\n" for l in idx.read_text().splitlines() if json.loads(l)["segment"] < n))
    drop_local_checkpoints_past(store, last_seq(store))
    assert verify(store).returncode == 0  # on its own, a shorter chain is a valid chain
    out = verify(store, exported(gw), pubkey(gw))
    assert out.returncode == 1 and "records were cut from the end" in out.stdout and "records up to seq 11" in out.stdout, out.stdout


def test_c_the_tail_cut_and_the_index_deleted_is_caught(start_gateway, mock, upstream_ca_file, tmp_path):
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 6)
    stop(gw)
    store = records(gw)
    cut_tail(store, 3)
    (store / "index.jsonl").unlink()
    drop_local_checkpoints_past(store, 2)
    out = verify(store, exported(gw), pubkey(gw))
    assert out.returncode == 1, out.stdout
    assert "records were cut from the end" in out.stdout and "index.jsonl is missing" in out.stdout, out.stdout


def test_d_the_oldest_segments_deleted_under_a_forged_anchor_are_caught(start_gateway, mock, upstream_ca_file, tmp_path):
    # Retention by size runs for real first: its anchor is signed, and verify accepts it.
    gw = start(start_gateway, mock, upstream_ca_file, segment_size="2KiB", max_size="12KiB")
    traffic(gw, 30)
    store = records(gw)
    gw.wait_metric("agentgate_record_checkpoints_total", lambda v: v >= 1, sink="stdout", result="ok")
    assert (store / "retention.jsonl").exists()
    stop(gw)
    key = pubkey(gw)
    legit = verify(store, exported(gw), key)
    assert legit.returncode == 0, legit.stdout
    # The insider deletes two more of the oldest segments and writes the anchor retention would have.
    segs = [s for s in seg_files(store) if s.stat().st_size > 0]
    assert len(segs) >= 4, segs
    for s in segs[:2]:
        s.unlink()
    first = segs[2]
    head = json.loads(first.read_text().splitlines()[0])
    anchor = {"first_segment": int(first.name[4:12]), "seq": head["seq"] - 1, "hash": head["prev"], "ts": "2026-12-05T00:00:00.000Z"}
    with open(store / "retention.jsonl", "a") as f:
        f.write(json.dumps(anchor) + "\n")
    idx = store / "index.jsonl"
    idx.write_text("".join(l + "\n" for l in idx.read_text().splitlines() if json.loads(l)["seq"] >= head["seq"]))
    assert verify(store).returncode == 0  # the anchor is not authenticated by the store itself
    out = verify(store, exported(gw), key)
    assert out.returncode == 1, out.stdout
    assert f"the chain starts at seq {head['seq']}" in out.stdout and "no signed checkpoint records a retention run" in out.stdout, out.stdout


def test_e_an_index_edited_alone_is_caught_and_never_serves_another_record(start_gateway, mock, upstream_ca_file, tmp_path):
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 5)
    store = records(gw)
    gw.wait_metric("agentgate_record_checkpoints_total", lambda v: v >= 2, sink="store", result="ok")
    idx = store / "index.jsonl"
    entries = [json.loads(l) for l in idx.read_text().splitlines()]
    # Entry 1 pointed at record 3's place; entry 2 dropped.
    forged = dict(entries[1], segment=entries[3]["segment"], offset=entries[3]["offset"], len=entries[3]["len"])
    forged.pop("hash", None)
    edited = [entries[0], forged] + entries[3:]
    idx.write_text("".join(json.dumps(e) + "\n" for e in edited))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    auditor = {"Authorization": f"Bearer {person_token('audrey')}"}
    r = httpx.get(f"{admin}/v1/sessions/{entries[1]['id']}", headers=auditor, timeout=5)
    assert r.status_code == 500 and "does not match the record chain" in r.text, r.text
    assert set(r.json()) == {"error"}  # an error, never the other record
    shown = cli("sessions", "show", entries[1]["id"], "--dir", str(store), check=False)
    assert shown.returncode != 0 and "does not match the record chain" in shown.stderr, shown.stdout + shown.stderr
    assert shown.stdout == ""
    # The records the index still names right are served.
    assert httpx.get(f"{admin}/v1/sessions/{entries[3]['id']}", headers=auditor, timeout=5).status_code == 200
    stop(gw)
    out = verify(store, exported(gw), pubkey(gw))
    assert out.returncode == 1 and "index disagrees with the chain" in out.stdout, out.stdout
    assert f"the index entry for seq 1 names {entries[1]['id']}" in out.stdout, out.stdout
    # Dropped alone, an entry is named too.
    idx.write_text("".join(json.dumps(e) + "\n" for e in entries[:2] + entries[3:]))
    out = verify(store, exported(gw), pubkey(gw))
    assert out.returncode == 1 and f"record seq 2 (id {entries[2]['id']}) is not in the index" in out.stdout, out.stdout


def test_f_a_rollback_to_an_older_copy_of_the_store_is_caught(start_gateway, mock, upstream_ca_file, tmp_path):
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 4)
    stop(gw)
    store = records(gw)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(store, snapshot)
    again = restart(gw)
    traffic(again, 5)
    stop(again)
    key, checkpoints = pubkey(gw), exported(gw)
    assert verify(store, checkpoints, key).returncode == 0
    shutil.rmtree(store)
    shutil.copytree(snapshot, store)
    assert verify(store).returncode == 0  # an older store is a valid store
    out = verify(store, checkpoints, key)
    assert out.returncode == 1, out.stdout
    assert "rollback: the store's own checkpoints end at" in out.stdout and "records were cut from the end" in out.stdout, out.stdout
    # Rolled back and running again: it issues the numbers of the records it lost to new ones.
    third = restart(gw)
    traffic(third, 6)
    stop(third)
    out = verify(store, exported(gw), key)
    assert out.returncode == 1, out.stdout
    assert "two different checkpoints" in out.stdout and "is not the record checkpoint" in out.stdout, out.stdout


def test_an_index_behind_the_chain_at_start_up_is_repaired_and_no_number_reused(start_gateway, mock, upstream_ca_file):
    """A crash after a batch's segment write and before its index write leaves the index's last
    entries missing. On the session's start binary the gateway started with a warning and those
    exchanges stayed unlisted (`GET /v1/sessions/{id}` 404, `assert 404 == 200`) and verify
    reported them missing from the index; now their entries are made again from the chain at
    start-up, and new records follow the chain's numbers."""
    gw = start(start_gateway, mock, upstream_ca_file)
    traffic(gw, 6)
    stop(gw)
    store = records(gw)
    idx = store / "index.jsonl"
    lines = idx.read_text().splitlines(keepends=True)
    lost = [json.loads(l) for l in lines[-2:]]
    idx.write_text("".join(lines[:-2]) + lines[-2][:15])  # the last two entries lost, one torn
    again = restart(gw)
    auditor = {"Authorization": f"Bearer {person_token('audrey')}"}
    for e in lost:
        r = httpx.get(f"http://127.0.0.1:{again.admin_port}/v1/sessions/{e['id']}", headers=auditor, timeout=5)
        assert r.status_code == 200 and r.json()["seq"] == e["seq"], r.text
    traffic(again, 2)
    stop(again)
    entries = [json.loads(l) for l in idx.read_text().splitlines() if l.startswith("{") and l.endswith("}")]
    assert [e["seq"] for e in entries] == list(range(8)), entries
    assert entries[4:6] == lost
    out = verify(store, exported(gw), pubkey(gw))
    assert out.returncode == 0, out.stdout


def test_checkpoints_are_signed_with_the_configured_key_and_posted(start_gateway, mock, upstream_ca_file, tmp_path):
    seed = os.urandom(32)
    keyfile = tmp_path / "checkpoint.key"
    keyfile.write_text(base64.b64encode(seed).decode() + "\n")
    gw = start(start_gateway, mock, upstream_ca_file, signing_key=f"${{file:{keyfile}}}")
    cfg = gw.config()
    cfg["recording"]["checkpoints"].update({"url": f"https://127.0.0.1:{mock.port}/checkpoints", "ca_file": str(upstream_ca_file)})
    gw.stop()
    gw = Gateway(cfg, gw.state_dir, gw.port, gw.admin_port)
    traffic(gw, 4)
    gw.wait_metric("agentgate_record_checkpoints_total", lambda v: v >= 2, sink="https", result="ok")
    posted = [r for r in mock.state.requests if r["path"] == "/checkpoints"]
    assert posted and json.loads(posted[-1]["body"])["kind"] == "checkpoint"
    stop(gw)
    assert not (gw.state_dir / "var" / "checkpoint-signing-key.pem").exists()
    key = pubkey(gw)
    out = verify(records(gw), exported(gw), key)
    assert out.returncode == 0, out.stdout
    # The POSTed copies are checkpoints the same key verifies; another key verifies none.
    (tmp_path / "posted.jsonl").write_text("".join(r["body"].decode() + "\n" for r in posted))
    assert verify(records(gw), tmp_path / "posted.jsonl", key).returncode == 0
    other = "ed25519:" + base64.b64encode(b"\x01" * 32).decode()
    forged = verify(records(gw), tmp_path / "posted.jsonl", other)
    assert forged.returncode in (1, 2) and "not signed by the given key" in forged.stdout + forged.stderr
