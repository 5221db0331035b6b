"""Several replicas act as one gateway through a real PostgreSQL (`store.postgres`): the schema
is migrated once and versioned, TLS to the database is verified, an approval held on one
replica is decided through another, a replica killed while a request waits leaves its approval
interrupted, and while the database is down approval-gated requests answer 503 while other
traffic flows."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading

import pytest
import trustme

import pgserver
from gateway_driver import BINARY, ROOT, Gateway, eventually
from gwconfig import ROUTE_KEY, people_identity, person_token, route
from test_approvals import CHAT, PEOPLE, SAFE_BODY, TOOLS_BODY, Call, admin, decide, rules, run_sdk_async, sdk_result, wait_pending, wait_state

pytestmark = pytest.mark.skipif(not pgserver.available(), reason="PostgreSQL is not installed (make test-deps)")

_databases = itertools.count()


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    server = pgserver.PgServer(tmp_path_factory.mktemp("postgres"), trustme.CA())
    yield server
    server.close()


@pytest.fixture
def database(pg):
    """A fresh database on the shared server: its URL."""
    name = f"t{next(_databases)}"
    pg.sql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + f"/{name}", name


def store(url: str, ca_file, replica: str, **over) -> dict:
    return {"store": {"postgres": {"url": url, "ca_file": str(ca_file), "replica": replica, "lease": "2s", **over}}}


def pg_store(url, ca_file, replica, over):
    return store(url, over.pop("ca_file", ca_file), replica, **over)


@pytest.fixture
def replicas(start_gateway, mock, upstream_ca_file, pg, database):
    """Starts replicas `a`, `b`... of one gateway (the approval rule of test_approvals on the
    mock route, recording on) sharing `database`."""
    url, _ = database

    def start(*names: str, wait_ready: bool = True, rule: dict | None = None, recording: dict | None = None,
              identity: dict | None = None, **over) -> list[Gateway]:
        return [
            start_gateway(
                route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
                identity=identity or people_identity(PEOPLE),
                extra=[rules(**(rule or {})), pg_store(url, pg.ca_file, n, dict(over)), {"recording": recording or {}}],
                admin={"auditors": ["security-oncall"]},
                wait_ready=wait_ready,
            )
            for n in names
        ]

    return start


def db_sql(pg, database, query: str) -> str:
    _, name = database
    env = dict(os.environ, PGPASSWORD=pgserver.PASSWORD, PGSSLMODE="verify-full", PGSSLROOTCERT=str(pg.ca_file))
    r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "agentgate", "-d", name, "-At",
                        "-v", "ON_ERROR_STOP=1", "-c", query], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# --- connection, schema, readiness ----------------------------------------------------------

def test_replicas_starting_together_migrate_the_schema_once(replicas, pg, database):
    a, b = replicas("a", "b")
    assert a.readyz().status_code == 200 and b.readyz().status_code == 200
    assert db_sql(pg, database, "SELECT version FROM agentgate.schema_version") == "1"
    assert a.metric("agentgate_store_up") == 1, [l for l in a.metrics().splitlines() if "store_" in l]
    # The monitoring dashboard's shared-store panel queries only families a replica exports.
    dash = json.loads((ROOT / "k8s" / "overlays" / "monitoring" / "agentgate-dashboard.json").read_text())
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for p in dash["panels"] for t in p["targets"]
            for m in re.findall(r"agentgate_store_[a-z_]+", t["expr"])}
    exported = set(re.findall(r"^# TYPE (agentgate_store_[a-z_]+)", a.metrics(), re.M))
    assert used and used <= exported, used - exported


def test_a_newer_schema_is_refused_with_a_clear_error(replicas, pg, database, tmp_path):
    [a] = replicas("a")
    a.stop()
    db_sql(pg, database, "INSERT INTO agentgate.schema_version VALUES (99, 0)")
    env = dict(os.environ, ROUTE_KEY=ROUTE_KEY)
    r = subprocess.run([str(BINARY), "run", "--config", str(a.config_path)], capture_output=True, text=True, timeout=60, cwd=a.state_dir, env=env)
    assert r.returncode != 0
    assert "schema is version 99, newer than this agentgate knows (1)" in r.stderr, r.stderr
    assert pgserver.PASSWORD not in r.stderr


def test_an_unreachable_database_means_not_ready_with_the_reason(replicas, pg):
    pg.stop()
    try:
        [a] = replicas("a", wait_ready=False)
        r = a.readyz()
        assert r.status_code == 503 and "store.postgres: the database is unreachable" in r.text, r.text
        assert pgserver.PASSWORD not in r.text
    finally:
        pg.start()
    eventually(lambda: a.readyz().status_code, lambda s: s == 200, timeout=30)


def test_the_database_certificate_is_verified(replicas, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    [a] = replicas("a", wait_ready=False, ca_file=str(other))
    r = a.readyz()
    assert r.status_code == 503 and "certificate" in r.text, r.text


# --- approvals across replicas --------------------------------------------------------------

def test_a_request_held_on_a_is_approved_with_the_cli_through_b(replicas, mock):
    a, b = replicas("a", "b")
    sdk = run_sdk_async(a, "chat_tools")
    [p] = wait_pending(b)
    assert p["rule"] == "destructive-tools" and mock.state.requests == []
    env = dict(os.environ, AGENTGATE_ADMIN_URL=f"http://127.0.0.1:{b.admin_port}", AGENTGATE_TOKEN=person_token("bob"))
    out = subprocess.run([str(BINARY), "approvals", "approve", p["id"], "--reason", "checked"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert sdk_result(sdk)["status"] == 200
    # A heard the decision B committed (LISTEN/NOTIFY), not only by polling.
    assert a.metric("agentgate_store_notify_lag_seconds_count") >= 1
    assert len(mock.state.requests) == 1
    assert wait_state(a, p["id"], "approved")["decisions"][0]["by"]["subject"] == "bob"


def test_a_replica_killed_while_a_request_waits_leaves_it_interrupted_and_the_other_unaffected(replicas, mock):
    a, b = replicas("a", "b")
    call = Call(a, TOOLS_BODY)
    [p] = wait_pending(b)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    call.join(30)
    got = wait_state(b, p["id"], "interrupted")
    assert got["decisions"] == []
    # B goes on: its own held request is decided through B and served.
    on_b = Call(b, TOOLS_BODY)
    pend = eventually(lambda: admin(b, "alice", "GET", "/v1/approvals?state=pending").json(), lambda x: len(x) == 1)
    assert decide(b, "alice", pend[0]["id"], "approve").status_code == 200
    assert on_b.result().status_code == 200
    with b.client() as c:
        assert c.post(CHAT, json=SAFE_BODY).status_code == 200


def test_while_the_database_is_down_gated_requests_answer_503_and_others_flow(replicas, pg, mock):
    [a] = replicas("a")
    pg.stop()
    try:
        with a.client() as c:
            r = c.post(CHAT, json=TOOLS_BODY)
            assert mock.state.requests == [], "a gated request sends nothing upstream while the store is down"
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "approval_store_unavailable"
            assert pgserver.PASSWORD not in r.text
            assert c.post(CHAT, json=SAFE_BODY).status_code == 200
        assert admin(a, "alice", "GET", "/v1/approvals").status_code == 503
    finally:
        pg.start()
    assert len(mock.state.requests) == 1, "only the ungated request went upstream"
    call = Call(a, TOOLS_BODY)
    [p] = wait_pending(a)
    assert decide(a, "bob", p["id"], "approve").status_code == 200
    assert call.result().status_code == 200


# --- attacks --------------------------------------------------------------------------------

def test_a_spoofed_notify_wakes_nobody_only_the_database_decides(replicas, pg, database):
    a, b = replicas("a", "b")
    call = Call(a, TOOLS_BODY)
    [p] = wait_pending(b)
    heard = a.metric("agentgate_store_notify_lag_seconds_count")
    fake = json.dumps({"id": p["id"], "at_ms": 0, "state": "approved"})
    db_sql(pg, database, f"NOTIFY agentgate_approvals, '{fake}'")
    a.wait_metric("agentgate_store_notify_lag_seconds_count", lambda v: v > heard, timeout=20)
    # A heard it and read the row again: still pending, the request still waits.
    assert admin(b, "alice", "GET", f"/v1/approvals/{p['id']}").json()["state"] == "pending"
    assert call.is_alive() and call.response is None
    assert decide(b, "alice", p["id"], "approve").status_code == 200
    assert call.result().status_code == 200


def test_one_person_deciding_through_two_replicas_counts_once(replicas):
    a, b = replicas("a", "b", rule={"min": 2})
    call = Call(a, TOOLS_BODY)
    [p] = wait_pending(b)
    results = []
    threads = [threading.Thread(target=lambda gw=gw: results.append(decide(gw, "alice", p["id"], "approve").status_code)) for gw in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200, 409], results
    assert admin(b, "bob", "GET", f"/v1/approvals/{p['id']}").json()["state"] == "pending"
    assert decide(b, "bob", p["id"], "approve").status_code == 200
    assert call.result().status_code == 200


def test_a_ticket_redeemed_on_two_replicas_at_once_lets_one_request_through(replicas, mock):
    a, b = replicas("a", "b", rule={"mode": "ticket"})
    with a.client() as c:
        r = c.post(CHAT, json=TOOLS_BODY)
    assert r.status_code == 202, r.text
    aid = r.json()["approval"]["id"]
    assert decide(b, "alice", aid, "approve").status_code == 200
    statuses = []

    def retry(gw):
        with gw.client() as c:
            statuses.append(c.post(CHAT, json=TOOLS_BODY, headers={"x-agentgate-approval": aid}).status_code)

    threads = [threading.Thread(target=retry, args=(gw,)) for gw in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [200, 403], statuses
    assert len(mock.state.requests) == 1


def test_hostile_paths_and_ids_are_data_not_sql(replicas, pg, database):
    a, b = replicas("a", "b")
    hostile = CHAT + "?x=%27%3B%20DROP%20TABLE%20agentgate.approvals%3B--"
    held = []
    t = threading.Thread(target=lambda: held.append(a.client(timeout=60).post(hostile, json=TOOLS_BODY)), daemon=True)
    t.start()
    [p] = wait_pending(b)
    assert "DROP TABLE" in p["query"] or "DROP%20TABLE" in p["query"], p["query"]
    assert admin(b, "alice", "GET", "/v1/approvals?state=pending%27%20OR%20%271%27=%271").status_code == 400
    assert admin(b, "alice", "GET", "/v1/approvals/x%27%20OR%20%271%27=%271").status_code == 404
    assert decide(b, "alice", "x' OR '1'='1", "approve").status_code == 404
    assert db_sql(pg, database, "SELECT count(*) FROM agentgate.approvals") == "1"
    assert decide(b, "alice", p["id"], "deny").status_code == 200
    t.join(30)
    assert held and held[0].status_code == 403


# --- records across replicas ----------------------------------------------------------------

def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess:
    # `sessions` reads the shared store with the database's password alone, without the
    # providers' keys (ROUTE_KEY); `audit` reads the checkpoint signing key the whole file names.
    env = {k: v for k, v in os.environ.items() if k != "ROUTE_KEY"}
    if args[0] == "audit":
        env["ROUTE_KEY"] = ROUTE_KEY
    return subprocess.run([str(BINARY), *args, "--config", str(gw.config_path)], capture_output=True, text=True, env=env, timeout=60, cwd=gw.state_dir)


def rows(pg, database, where: str = "true") -> int:
    return int(db_sql(pg, database, f"SELECT count(*) FROM agentgate.records WHERE {where}"))


def chat(gw: Gateway, stream: bool = False) -> str:
    """One recorded exchange through `gw`: its request id."""
    with gw.client() as c:
        r = c.post(CHAT, json={**SAFE_BODY, "stream": stream}, headers={"x-mock-say": "one two three"})
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"]


def test_a_request_recorded_on_a_is_found_shown_and_replayed_through_b(replicas, pg, database):
    a, b = replicas("a", "b")
    rid = chat(a, stream=True)
    listed = eventually(lambda: admin(b, "alice", "GET", "/v1/sessions").json(), lambda l: any(e["id"] == rid for e in l), timeout=30)
    [e] = [e for e in listed if e["id"] == rid]
    assert e["replica"] == "a" and e["status"] == 200 and e["route"] == "mock"
    got = admin(b, "alice", "GET", f"/v1/sessions/{rid[:12]}").json()
    assert got["id"] == rid and got["replica"] == "a"
    # LIKE's wildcards in an id are taken literally: `____________` is no prefix of every id.
    assert admin(b, "alice", "GET", "/v1/sessions/" + "_" * 12).status_code == 404
    shown = cli(b, "sessions", "show", rid, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == rid
    replayed = cli(b, "sessions", "replay", rid, "--speed", "100")
    assert replayed.returncode == 0, replayed.stderr
    assert "data: " in replayed.stdout
    listed = cli(b, "sessions", "list")
    assert rid in listed.stdout and "[replica a]" in listed.stdout, listed.stdout


def test_audit_verify_reports_every_replica_and_catches_an_edited_row(replicas, pg, database):
    a, b = replicas("a", "b")
    for gw in (a, b, a):
        chat(gw)
    a.stop(), b.stop()  # each flushes: its records and a last checkpoint reach the database
    assert rows(pg, database, "replica = 'a'") == 2 and rows(pg, database, "replica = 'b'") == 1
    ok = cli(a, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "replica a (chain" in ok.stdout and "replica b (chain" in ok.stdout
    assert ok.stdout.count(": intact:") == 2, ok.stdout
    assert "the chain reaches it" in ok.stdout
    db_sql(pg, database, "UPDATE agentgate.records SET line = replace(line, '\"status\":200', '\"status\":201') WHERE replica = 'a' AND seq = 0")
    bad = cli(a, "audit", "verify")
    assert bad.returncode == 1, bad.stdout
    assert "replica a" in bad.stdout and "seq 0" in bad.stdout and "modified" in bad.stdout, bad.stdout
    assert "replica b (chain" in bad.stdout and ": intact: 1 records" in bad.stdout


def test_audit_verify_catches_rows_cut_from_the_end(replicas, pg, database):
    [a] = replicas("a")
    chat(a), chat(a)
    a.stop()
    db_sql(pg, database, "DELETE FROM agentgate.records WHERE seq = 1")
    bad = cli(a, "audit", "verify")
    assert bad.returncode == 1 and "no longer holds" in bad.stdout, bad.stdout


def test_a_row_forged_for_another_replicas_chain_is_a_conflict_not_a_silent_loss(replicas, pg, database):
    a, b = replicas("a", "b")
    chat(a)
    eventually(lambda: rows(pg, database, "replica = 'a'"), lambda n: n == 1, timeout=30)
    chain = db_sql(pg, database, "SELECT chain FROM agentgate.records WHERE replica = 'a'")
    # Someone with the database's password writes A's next record before A does.
    db_sql(pg, database, "INSERT INTO agentgate.records SELECT chain, 1, replica, 'forged', hash, hash, ts_ms, route, subject, "
                         f"conversation, status, method, path, line FROM agentgate.records WHERE chain = '{chain}' AND seq = 0")
    chat(a)
    a.wait_metric("agentgate_store_records_total", 1, outcome="conflict", timeout=30)
    a.stop(), b.stop()
    bad = cli(b, "audit", "verify")
    assert bad.returncode == 1 and "seq 1 (forged)" in bad.stdout, bad.stdout


def test_records_made_while_the_database_is_down_reach_it_exactly_once(replicas, pg, database):
    [a] = replicas("a")
    chat(a)
    eventually(lambda: rows(pg, database), lambda n: n == 1, timeout=30)
    pg.stop()
    try:
        for _ in range(5):
            chat(a)  # recorded traffic flows while the database is away
        with a.client() as c:
            assert c.post(CHAT, json=TOOLS_BODY).status_code == 503
    finally:
        pg.start()
    eventually(lambda: rows(pg, database), lambda n: n >= 7, timeout=60)
    a.stop()
    local = sum(1 for line in (a.state_dir / "var" / "records" / "index.jsonl").read_text().splitlines() if line.strip())
    assert rows(pg, database) == local == 7
    assert db_sql(pg, database, "SELECT count(DISTINCT seq), min(seq), max(seq) FROM agentgate.records") == "7|0|6"
    assert cli(a, "audit", "verify").returncode == 0


def test_the_console_on_b_decides_requests_held_on_a(start_gateway, mock, upstream_ca, upstream_ca_file, tmp_path, pg, database):
    """The console's walk-through (test_console.py) with its requests held on replica `a` and
    people signed in to the console of replica `b`."""
    from test_console import console_e2e

    url, _ = database
    console_e2e(start_gateway, mock, upstream_ca, upstream_ca_file, tmp_path, extra=[store(url, pg.ca_file, "b")], on=[store(url, pg.ca_file, "a")])


def test_audit_verify_catches_rows_cut_from_the_start(replicas, pg, database):
    [a] = replicas("a")
    chat(a), chat(a)
    a.stop()
    db_sql(pg, database, "DELETE FROM agentgate.records WHERE seq = 0")
    bad = cli(a, "audit", "verify")
    assert bad.returncode == 1 and "records 0..0 are missing before it" in bad.stdout, bad.stdout


def test_retention_removes_rows_too_and_verify_accepts_the_signed_new_start(replicas, pg, database):
    [a] = replicas("a", recording={"segment_size": "2KiB", "max_size": "6KiB"})
    for _ in range(12):
        chat(a)
    eventually(lambda: db_sql(pg, database, "SELECT coalesce(min(seq), 0) FROM agentgate.records"), lambda m: int(m) > 0, timeout=60)
    a.stop()
    first = int(db_sql(pg, database, "SELECT min(seq) FROM agentgate.records"))
    assert int(db_sql(pg, database, "SELECT count(*) FROM agentgate.records")) == 12 - first
    ok = cli(a, "audit", "verify")
    assert ok.returncode == 0, ok.stdout
    assert f"the chain starts at seq {first}: retention removed the records before it" in ok.stdout, ok.stdout


def test_past_the_queue_bound_on_failure_reject_refuses_until_the_database_caught_up(replicas, pg, database):
    [a] = replicas("a", queue=2)  # recording.on_failure defaults to reject
    chat(a)
    eventually(lambda: rows(pg, database), lambda n: n == 1, timeout=30)
    pg.stop()
    try:
        for _ in range(3):
            chat(a)  # the third record does not fit in the queue: it waits on disk
        with a.client() as c:
            r = c.post(CHAT, json=SAFE_BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "recording_unavailable", r.text
        assert a.metric("agentgate_store_records_total", outcome="dropped") >= 1
    finally:
        pg.start()
    # Once the database has every record (read back from disk), recorded traffic flows again.
    eventually(lambda: a.client().post(CHAT, json=SAFE_BODY).status_code, lambda s: s == 200, timeout=60)
    a.stop()
    n = int(db_sql(pg, database, "SELECT count(*) FROM agentgate.records"))
    assert db_sql(pg, database, "SELECT count(DISTINCT seq), min(seq), max(seq) FROM agentgate.records") == f"{n}|0|{n - 1}"
    local = sum(1 for line in (a.state_dir / "var" / "records" / "index.jsonl").read_text().splitlines() if line.strip())
    assert n == local


def test_a_window_grant_decided_through_b_lets_the_callers_next_requests_through_on_either(replicas, mock):
    a, b = replicas("a", "b", rule={"grant": {"scope": "window", "duration": "1h"}})
    call = Call(a, TOOLS_BODY)
    [p] = wait_pending(b)
    assert decide(b, "alice", p["id"], "approve").status_code == 200
    assert call.result().status_code == 200
    for gw in (b, a):
        with gw.client() as c:
            assert c.post(CHAT, json=TOOLS_BODY).status_code == 200, "inside the window, no new approval"
    assert admin(b, "alice", "GET", "/v1/approvals?state=pending").json() == []
    assert len(mock.state.requests) == 3


def test_a_window_grant_holds_for_a_service_account_mapped_to_a_person_on_either_replica(replicas, mock):
    """The shared store keeps a grant under the requester as a person (`carol-cli` mapped to
    `carol`) and looked it up under the account's own name: on the old code the second request
    was held again and answered 403 when its approval expired (`assert 403 == 200`)."""
    from gwconfig import service_account
    identity = people_identity(PEOPLE)
    identity["service_accounts"].append(
        {**service_account("carol-cli", person_token("carol-cli"), ["agents"]), "person": {"subject": "carol"}})
    a, b = replicas("a", "b", rule={"grant": {"scope": "window", "duration": "1h"}, "timeout": "6s"}, identity=identity)
    carol = person_token("carol-cli")
    call = Call(a, TOOLS_BODY, token=carol)
    [p] = wait_pending(b)
    assert p["requester"]["subject"] == "carol", p
    assert decide(b, "alice", p["id"], "approve").status_code == 200
    assert call.result().status_code == 200
    for gw in (b, a):
        with gw.client(carol) as c:
            r = c.post(CHAT, json=TOOLS_BODY)
            assert r.status_code == 200, f"inside carol's window the request was held again: {r.text}"
    assert admin(b, "alice", "GET", "/v1/approvals?state=pending").json() == []
    assert len(mock.state.requests) == 3
