"""Just-in-time approvals end to end: a request that matches a rule waits inside the gateway
(nothing reaches the upstream, not even a TLS handshake) until people in the approver group
decide through the admin API; denials, expiry, self-approval, outsiders, min_approvals, window
grants, tickets, an agent that goes away, restarts, the webhook and the evidence."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gateway_driver import BINARY, Gateway
from gwconfig import AGENT_TOKEN, people_identity, person_token, route
from net import server_ctx
from test_sdk import HERE, sdk_env

PEOPLE = {"alice": ["security-oncall"], "bob": ["security-oncall"], "eve": ["dev"], "olga": ["agents", "security-oncall"]}
CHAT = "/v1/chat/completions"
TOOLS_BODY = {"model": "m", "tools": [{"type": "function", "function": {"name": "delete_records"}}],
              "messages": [{"role": "user", "content": "drop it; key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"}]}
SAFE_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def rules(timeout: str = "30s", grant: dict | None = None, mode: str = "wait", min: int = 1, **rule_fields) -> dict:
    """The `approvals:` section with one rule, `destructive-tools` (POSTs to CHAT whose tools
    include delete_records or transfer_funds); `rule_fields` add to the rule (notify...)."""
    rule = {
        "name": "destructive-tools",
        "when": {"method": ["POST"], "path": CHAT,
                 "json": {"tools[*].function.name": {"any_of": ["delete_records", "transfer_funds"]}}},
        "approvers": {"groups": ["security-oncall"], "min_approvals": min},
        "timeout": timeout,
        "grant": grant if grant is not None else {"scope": "once"},
        "mode": mode,
        **rule_fields,
    }
    return {"approvals": [rule]}


@pytest.fixture
def approval_gw(start_gateway, mock, upstream_ca_file):
    def start(**over) -> Gateway:
        return start_gateway(
            route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
            identity=people_identity(PEOPLE),
            extra=rules(**over),
            admin={"auditors": ["security-oncall"]},
        )
    return start


def admin(gw: Gateway, who: str | None, method: str, path: str, body: dict | None = None) -> httpx.Response:
    headers = {} if who is None else {"Authorization": f"Bearer {AGENT_TOKEN if who == 'agent' else person_token(who)}"}
    return httpx.request(method, f"{gw.admin_url}{path}", headers=headers, json=body, timeout=10, verify=False)


def decide(gw: Gateway, who: str, aid: str, action: str, reason: str = "checked the ticket") -> httpx.Response:
    return admin(gw, who, "POST", f"/v1/approvals/{aid}/{action}", {"reason": reason})


def wait_pending(gw: Gateway, n: int = 1, who: str = "alice") -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pending = admin(gw, who, "GET", "/v1/approvals?state=pending").json()
        if len(pending) >= n:
            return pending
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} pending approvals")


def wait_state(gw: Gateway, aid: str, state: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        a = admin(gw, "alice", "GET", f"/v1/approvals/{aid}").json()
        if a["state"] == state:
            return a
        time.sleep(0.05)
    raise AssertionError(f"approval {aid} never became {state}: {a}")


class Call(threading.Thread):
    """One agent request in the background (the agent's HTTP call simply takes longer)."""

    def __init__(self, gw: Gateway, body: dict, token: str = AGENT_TOKEN, headers: dict | None = None) -> None:
        super().__init__(daemon=True)
        self.gw, self.body, self.token, self.headers = gw, body, token, headers or {}
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            with self.gw.client(self.token, timeout=60) as c:
                self.response = c.post(CHAT, json=self.body, headers=self.headers)
        except httpx.HTTPError as e:  # the gateway went away (the restart test kills it)
            self.error = e

    def result(self) -> httpx.Response:
        self.join(60)
        assert self.response is not None, self.error
        return self.response


def run_sdk_async(gw: Gateway, scenario: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = sdk_env(gw, env_extra=env_extra)
    return subprocess.Popen([sys.executable, str(HERE / "sdk_client.py"), scenario], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def sdk_result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sdk_call_waits_for_an_approver_and_nothing_reaches_the_upstream_before(approval_gw, mock):
    gw = approval_gw()
    sdk = run_sdk_async(gw, "chat_tools")
    [a] = wait_pending(gw)
    time.sleep(0.3)  # the held request has had every chance to leak upstream
    assert mock.state.handshakes == 0 and mock.state.requests == [], "nothing may reach the upstream before the decision"
    assert sdk.poll() is None, "the SDK call is still waiting"
    # The approver sees a masked summary: who, what, the rule, tool names; no personal data.
    assert (a["rule"], a["route"], a["method"], a["path"]) == ("destructive-tools", "mock", "POST", CHAT)
    assert a["requester"]["subject"] == "test-agent" and a["can_decide"] is True
    assert a["summary"]["tools"] == ["delete_records"]
    assert "ann.lee@example.com" not in json.dumps(a) and "clean up the users table" in a["summary"]["last_user_message"]
    assert a["reasons"] == ["tools[0].function.name = delete_records"]
    assert gw.metric("agentgate_approvals_pending") == 1
    # The agent cannot see others' approvals; it can see its own, read-only.
    mine = admin(gw, "agent", "GET", f"/v1/approvals/{a['id']}").json()
    assert mine["can_decide"] is False

    r = decide(gw, "alice", a["id"], "approve", "the cleanup is planned (CHG-42)")
    assert r.status_code == 200 and r.json()["state"] == "approved", r.text
    assert sdk_result(sdk) == {"status": 200, "text": None, "tool_calls": ["delete_records"]}, "the upstream's answer"
    assert len(mock.state.requests) == 1 and mock.state.last["headers"]["authorization"].startswith("Bearer sk-route")
    # Evidence: the session line and the metrics.
    [line] = gw.wait_session_lines(lambda l: l.get("approval"))
    [ev] = line["approval"]
    assert (ev["id"], ev["state"], ev["how"], line["status"]) == (a["id"], "approved", "wait", 200)
    assert ev["decisions"][0]["by"]["subject"] == "alice" and ev["decisions"][0]["reason"] == "the cleanup is planned (CHG-42)"
    # ...and the exchange's record, which auditors read.
    deadline = time.monotonic() + 10
    while not (listed := admin(gw, "alice", "GET", "/v1/sessions").json()) and time.monotonic() < deadline:
        time.sleep(0.05)
    rec = admin(gw, "alice", "GET", f"/v1/sessions/{listed[0]['id']}").json()
    [rev] = rec["decisions"]["approval"]
    assert json.loads(rec["request"]["body"])["tools"][0]["function"]["name"] == "delete_records", "the body, once"
    assert rec["request"]["bytes"] == len(mock.state.last["body"]), "the agent's bytes, counted once"
    assert (rev["id"], rev["state"], rev["decisions"][0]["by"]["subject"]) == (a["id"], "approved", "alice")
    assert gw.metric("agentgate_approvals_pending") == 0
    assert gw.metric("agentgate_approval_decisions_total", rule="destructive-tools", decision="approved") == 1
    assert gw.metric("agentgate_approval_wait_seconds_count", rule="destructive-tools") == 1
    # Requests that match no rule are not held.
    with gw.client() as c:
        assert c.post(CHAT, json=SAFE_BODY).status_code == 200
        assert c.get("/v1/models").status_code == 200  # a GET cannot match: its body is not even read
    assert admin(gw, "alice", "GET", "/v1/approvals?state=pending").json() == []


def test_cli_lists_and_decides(approval_gw, mock):
    gw = approval_gw()
    call = Call(gw, TOOLS_BODY)
    [a] = wait_pending(gw)
    env = dict(os.environ, AGENTGATE_ADMIN_URL=f"http://127.0.0.1:{gw.admin_port}", AGENTGATE_TOKEN=person_token("bob"))
    cli = lambda *args: subprocess.run([str(BINARY), "approvals", *args], capture_output=True, text=True, env=env, timeout=30)
    listed = cli("list")
    assert listed.returncode == 0 and a["id"] in listed.stdout and "(you may decide)" in listed.stdout, listed
    shown = cli("show", a["id"])
    assert json.loads(shown.stdout)["summary"]["tools"] == ["delete_records"]
    assert cli("deny", a["id"], "--reason", "not during the freeze").returncode == 0
    r = call.result()
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "approval_denied" and err["type"] == "permission_error"
    assert "destructive-tools" in err["message"] and "denied by bob: not during the freeze" in err["message"]
    assert err["approval"]["id"] == a["id"] and err["approval"]["decision"] == "denied"
    assert mock.state.requests == []
    again = cli("deny", a["id"], "--reason", "twice")
    assert again.returncode == 1 and "already denied" in again.stderr


def test_expiry(approval_gw, mock):
    gw = approval_gw(timeout="1s")
    r = Call(gw, TOOLS_BODY).result()
    assert r.status_code == 403 and r.json()["error"]["code"] == "approval_expired", r.text
    assert "no decision within 1s" in r.json()["error"]["message"]
    assert mock.state.requests == []
    # Counted once the expiry is on disk, which may be just after the agent got its answer.
    assert gw.wait_metric("agentgate_approval_decisions_total", 1, rule="destructive-tools", decision="expired") == 1


def test_who_may_decide(approval_gw, mock):
    gw = approval_gw()
    # olga is an agent *and* an approver: her own request waits like anyone's, and she cannot approve it.
    call = Call(gw, TOOLS_BODY, token=person_token("olga"))
    [a] = wait_pending(gw)
    r = decide(gw, "olga", a["id"], "approve")
    assert r.status_code == 403 and "own request" in r.text
    r = decide(gw, "eve", a["id"], "approve")
    assert r.status_code == 403 and "not in an approver group" in r.text
    assert admin(gw, "eve", "GET", f"/v1/approvals/{a['id']}").status_code == 404, "outsiders do not see it"
    assert admin(gw, None, "GET", "/v1/approvals").status_code == 401
    assert decide(gw, "bob", a["id"], "approve", "").status_code == 400, "a reason is required"
    assert wait_state(gw, a["id"], "pending")["decisions"] == []
    assert decide(gw, "bob", a["id"], "approve").status_code == 200
    assert call.result().status_code == 200


def test_two_approvers_needed(approval_gw, mock):
    gw = approval_gw(min=2)
    call = Call(gw, TOOLS_BODY)
    [a] = wait_pending(gw)
    assert decide(gw, "alice", a["id"], "approve").json()["state"] == "pending"
    assert decide(gw, "alice", a["id"], "approve").status_code == 409, "the same approver twice does not count"
    time.sleep(0.2)
    assert call.response is None and mock.state.requests == []
    assert decide(gw, "bob", a["id"], "approve").json()["state"] == "approved"
    assert call.result().status_code == 200
    assert len(mock.state.requests) == 1


def test_one_person_is_one_approver_across_channels(start_gateway, mock, upstream_ca, upstream_ca_file):
    """Issue 29: with `min_approvals: 2`, alice approved with her own access token (named by the
    issuer's `sub`, as the console names her) and again with her service-account token (named
    `alice-cli`): two approvers, one person. A service account now decides only as the person it
    is mapped to (`person:`), and a machine (an unmapped account, a client acting for itself)
    not at all."""
    from gwconfig import service_account
    from idp import ControlledIdP

    idp = ControlledIdP(server_ctx(upstream_ca)).start()
    try:
        idp.add_key("rsa-1", "RS256")
        alice = "alice@example.com"
        identity = people_identity({"bob": ["security-oncall"]})
        identity["oidc"] = [{"issuer": idp.issuer, "audiences": [idp.audience], "ca_file": str(upstream_ca_file)}]
        identity["service_accounts"] += [
            {**service_account("alice-cli", person_token("alice-cli"), ["security-oncall"]),
             "person": {"issuer": idp.issuer, "subject": alice}},
            service_account("deploy-bot", person_token("deploy-bot"), ["security-oncall"]),
        ]
        gw = start_gateway(
            route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
            identity=identity, extra=rules(min=2), admin={"auditors": ["security-oncall"]},
        )
        call = Call(gw, TOOLS_BODY)
        [a] = wait_pending(gw, who="bob")

        def approve(token: str) -> httpx.Response:
            return httpx.post(f"{gw.admin_url}/v1/approvals/{a['id']}/approve", json={"reason": "looks fine"},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10, verify=False)

        her_token = idp.token("rsa-1", sub=alice, groups=["security-oncall"])
        r = approve(her_token)
        assert r.status_code == 200 and r.json()["state"] == "pending", r.text
        r = approve(person_token("alice-cli"))
        assert r.status_code == 409 and alice in r.json()["error"]["message"], r.text
        for machine in (person_token("deploy-bot"),
                        idp.token("rsa-1", sub="ci-client", client_id="ci-client", groups=["security-oncall"])):
            r = approve(machine)
            assert r.status_code == 403 and "not a person" in r.json()["error"]["message"], r.text
        listed = httpx.get(f"{gw.admin_url}/v1/approvals/{a['id']}", headers={"Authorization": f"Bearer {person_token('alice-cli')}"},
                           timeout=10, verify=False).json()
        assert listed["state"] == "pending" and listed["can_decide"] is False, listed
        assert call.response is None and mock.state.requests == [], "one person's two approvals let it through"
        assert decide(gw, "bob", a["id"], "approve").json()["state"] == "approved"
        assert call.result().status_code == 200
        by = [(d["by"]["issuer"], d["by"]["subject"]) for d in
              httpx.get(f"{gw.admin_url}/v1/approvals/{a['id']}", headers={"Authorization": f"Bearer {person_token('bob')}"},
                        timeout=10, verify=False).json()["decisions"]]
        assert by == [(idp.issuer, alice), ("service-account", "bob")], by
    finally:
        idp.stop()


def test_window_grant_is_reused_then_expires(approval_gw, mock):
    gw = approval_gw(grant={"scope": "window", "duration": "3s"})
    first = Call(gw, TOOLS_BODY)
    [a] = wait_pending(gw)
    decide(gw, "alice", a["id"], "approve", "migration window")
    assert first.result().status_code == 200
    with gw.client() as c:
        granted = c.post(CHAT, json=TOOLS_BODY)
        assert granted.status_code == 200, "within the window: no new approval"
    # Another identity does not share the grant.
    other = Call(gw, TOOLS_BODY, token=person_token("olga"))
    [b] = wait_pending(gw)
    assert b["requester"]["subject"] == "olga"
    decide(gw, "bob", b["id"], "deny", "no")
    assert other.result().status_code == 403
    [line] = gw.wait_session_lines(lambda l: l.get("request_id") == granted.headers["x-request-id"])
    assert line["approval"][0]["how"] == "window_grant" and line["approval"][0]["id"] == a["id"]
    time.sleep(3.2)
    late = Call(gw, TOOLS_BODY)
    [c] = wait_pending(gw)
    assert c["id"] != a["id"]
    decide(gw, "alice", c["id"], "deny", "window is over")
    assert late.result().status_code == 403


def test_a_window_grant_holds_for_a_service_account_mapped_to_a_person(start_gateway, mock, upstream_ca_file):
    """A window grant for a request made with a service account mapped to a person (`carol-cli`,
    `person: {subject: carol}`) lets that account's next matching requests through. The grant
    was kept under the person (the approval's requester) and looked up under the account, so it
    never applied: on the old code the second request was held again and answered 403 when its
    approval expired (`assert 403 == 200`, and a second pending approval)."""
    from gwconfig import service_account
    identity = people_identity(PEOPLE)
    identity["service_accounts"].append(
        {**service_account("carol-cli", person_token("carol-cli"), ["agents"]), "person": {"subject": "carol"}})
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
        identity=identity, extra=rules(timeout="6s", grant={"scope": "window", "duration": "1h"}),
        admin={"auditors": ["security-oncall"]},
    )
    carol = person_token("carol-cli")
    first = Call(gw, TOOLS_BODY, token=carol)
    [a] = wait_pending(gw)
    assert (a["requester"]["subject"], a["requester"]["via"]) == ("carol", "service-account carol-cli"), a
    assert decide(gw, "alice", a["id"], "approve", "carol's migration").json()["state"] == "approved"
    assert first.result().status_code == 200
    with gw.client(carol) as c:
        again = c.post(CHAT, json=TOOLS_BODY)
    assert again.status_code == 200, f"inside carol's window the request was held again: {again.text}"
    assert admin(gw, "alice", "GET", "/v1/approvals").json()[0]["id"] == a["id"], "no second approval"
    [line] = gw.wait_session_lines(lambda l: l.get("request_id") == again.headers["x-request-id"])
    assert line["approval"][0]["how"] == "window_grant" and line["approval"][0]["id"] == a["id"]
    assert len(mock.state.requests) == 2


def test_ticket_mode(approval_gw, mock):
    gw = approval_gw(mode="ticket")
    with gw.client() as c:
        r = c.post(CHAT, json=TOOLS_BODY)
        assert r.status_code == 202 and int(r.headers["retry-after"]) >= 1
        aid = r.json()["approval"]["id"]
        assert r.headers["x-agentgate-approval"] == aid and r.json()["approval"]["state"] == "pending"
        ticket = {"x-agentgate-approval": aid}
        assert c.post(CHAT, json=TOOLS_BODY, headers=ticket).status_code == 202, "still pending"
        assert mock.state.requests == []
        decide(gw, "alice", aid, "approve")
        changed = c.post(CHAT, json={**TOOLS_BODY, "model": "other"}, headers=ticket)
        assert changed.status_code == 403 and "different request body" in changed.text
        ok = c.post(CHAT, json=TOOLS_BODY, headers=ticket)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "delete_records"
        used = c.post(CHAT, json=TOOLS_BODY, headers=ticket)
        assert used.status_code == 403 and "already used" in used.text
    assert len(mock.state.requests) == 1
    # A ticket nobody decides on expires by itself.
    gw2 = approval_gw(mode="ticket", timeout="1s")
    with gw2.client() as c:
        aid = c.post(CHAT, json=TOOLS_BODY).json()["approval"]["id"]
    assert wait_state(gw2, aid, "expired")["decided_ms"] is not None
    assert gw2.wait_metric("agentgate_approvals_pending", 0) == 0  # counted once the expiry is on disk


def test_agent_disconnect_abandons_the_approval(approval_gw, mock):
    gw = approval_gw()
    body = json.dumps(TOOLS_BODY).encode()
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname="localhost")
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    [a] = wait_pending(gw)
    s.close()
    done = wait_state(gw, a["id"], "abandoned")
    assert done["decided_ms"] is not None
    assert decide(gw, "alice", a["id"], "approve").status_code == 409
    assert mock.state.requests == []
    assert gw.wait_metric("agentgate_approval_decisions_total", 1, rule="destructive-tools", decision="abandoned") == 1
    # The request it held is over too (no task left waiting on the gate).
    deadline = time.monotonic() + 5
    while gw.metric("agentgate_requests_in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.metric("agentgate_requests_in_flight") == 0


def test_restart_with_a_pending_approval(approval_gw, mock):
    gw = approval_gw()
    call = Call(gw, TOOLS_BODY)
    [a] = wait_pending(gw)
    done = Call(gw, TOOLS_BODY)
    b = next(x for x in wait_pending(gw, 2) if x["id"] != a["id"])
    assert decide(gw, "alice", b["id"], "approve", "decided before the restart").status_code == 200
    assert done.result().status_code == 200
    # SIGTERM: the waiting request is answered 503 at once, and its approval is interrupted.
    gw.proc.send_signal(signal.SIGTERM)
    r = call.result()
    assert r.status_code == 503 and r.json()["error"]["code"] == "approval_interrupted", r.text
    assert gw.proc.wait(timeout=10) == 0
    # Same state directory, new process: the decision survived; nothing is pending.
    again = Gateway(gw.config_path.read_text(), gw.state_dir, gw.port, gw.admin_port)
    try:
        assert admin(again, "alice", "GET", f"/v1/approvals/{a['id']}").json()["state"] == "interrupted"
        kept = admin(again, "alice", "GET", f"/v1/approvals/{b['id']}").json()
        assert kept["state"] == "approved" and kept["decisions"][0]["reason"] == "decided before the restart"
        # A crash (SIGKILL) while pending: the next start marks it interrupted.
        lost = Call(again, TOOLS_BODY)
        [c] = wait_pending(again)
        again.proc.kill()
        again.proc.wait()
        lost.join(10)
        assert lost.response is None and lost.error is not None
    finally:
        again.stop()
    third = Gateway(gw.config_path.read_text(), gw.state_dir, gw.port, gw.admin_port)
    try:
        assert admin(third, "alice", "GET", f"/v1/approvals/{c['id']}").json()["state"] == "interrupted"
        assert third.metric("agentgate_approvals_pending") == 0
    finally:
        third.stop()


class Hook(BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.posts.append(json.loads(body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


def hook_server(upstream_ca, statuses: list[int]) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    srv.posts, srv.statuses = [], statuses
    srv.socket = server_ctx(upstream_ca).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_webhook_is_slack_shaped_retried_and_never_decides(approval_gw, mock, upstream_ca, upstream_ca_file):
    hook = hook_server(upstream_ca, [500, 503])
    notify = {"webhook": {"url": f"https://127.0.0.1:{hook.server_address[1]}/hooks/x", "format": "slack", "ca_file": str(upstream_ca_file)}}
    gw = approval_gw(notify=notify, timeout="4s")
    r = Call(gw, TOOLS_BODY)
    [a] = wait_pending(gw)
    deadline = time.monotonic() + 15
    while len(hook.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(hook.posts) == 3, "two failures, then delivered"
    msg = hook.posts[-1]
    assert a["id"] in msg["text"] and "destructive-tools" in msg["text"] and msg["blocks"][0]["type"] == "header"
    assert "sk-proj-" not in json.dumps(msg), "the notification is masked"
    # The hook has the third post before the gateway has its answer (and counts it sent).
    assert gw.wait_metric("agentgate_approval_webhooks_total", 1, result="sent") == 1
    assert gw.metric("agentgate_approval_webhooks_total", result="retry") == 2
    # Notified, not approved: the request still expires.
    assert r.result().json()["error"]["code"] == "approval_expired"
    hook.shutdown()
