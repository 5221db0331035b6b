"""A reload builds everything a configuration needs the way start-up does (src/server/runtime.rs):
the recorder and the approval gate mask with the reloaded configuration's engine, `hash`
outputs keep the process's key, and an issuer the reload removed is no longer fetched.

Each test failed on main before the runtime was built in one place (4b02e9d), with what its
docstring says."""

from __future__ import annotations

import json
import re
import signal
import time

from gwconfig import AGENT_TOKEN, DEFAULT_IDENTITY, people_identity, route
from idp import ControlledIdP
from net import server_ctx
from test_approvals import PEOPLE, admin, rules, wait_pending
from test_identity import oidc_identity
from test_recording import records, wait_records

EMPLOYEE = "EMP-482913"
CODENAME = "bluebird"
# What the reload adds: a custom detector, and a guardrail's deny word (used by no route: every
# detector redacts in records and in what approvers see).
ADDED_BY_RELOAD = {
    "masking": {"custom_detectors": [{"name": "employee_id", "regex": "EMP-[0-9]{6}"}]},
    "guardrails": [{"name": "no-codenames", "direction": "response", "deny_words": [CODENAME]}],
}


def reload(gw, config: dict, n: int) -> None:
    """Writes the config, sends SIGHUP and waits until the `n`th reload is counted as applied."""
    gw.write_config(config)
    gw.proc.send_signal(signal.SIGHUP)
    got = gw.wait_metric("agentgate_config_reloads_total", lambda v: v >= n, result="ok")
    assert got >= n, f"reload {n} not applied: {gw.stderr_path.read_text()[-2000:]}"


def reloaded_gateway(start_gateway, mock, upstream_ca_file):
    """A gateway with an approval rule and recording; a reload then adds a custom detector and
    a guardrail's deny word (used by no route: every detector redacts in records and summaries)."""
    gw = start_gateway(
        route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, approvals=["destructive-tools"]),
        identity=people_identity(PEOPLE),
        extra=rules(),
        admin={"auditors": ["security-oncall"]},
    )
    reload(gw, {**gw.config(), **ADDED_BY_RELOAD}, 1)
    return gw


SAID = f"my id is {EMPLOYEE}, project {CODENAME}"


def test_a_reloaded_detector_and_deny_word_mask_records(start_gateway, mock, upstream_ca_file):
    """On main, the recorder kept the start-up engine: the record held EMP-482913 and
    `bluebird`."""
    gw = reloaded_gateway(start_gateway, mock, upstream_ca_file)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": SAID}]})
        assert r.status_code == 200, r.text
    wait_records(gw, 1)
    stored = "".join(p.read_text() for p in records(gw).glob("seg-*.jsonl"))
    assert "my id is" in stored, "the request body was not recorded"
    assert EMPLOYEE not in stored and CODENAME not in stored, stored[-1500:]


def test_a_reloaded_detector_and_deny_word_mask_approval_summaries(start_gateway, mock, upstream_ca_file):
    """On main, the approval gate kept the start-up engine: the pending approval's summary
    showed EMP-482913 and `bluebird` to approvers."""
    import threading

    gw = reloaded_gateway(start_gateway, mock, upstream_ca_file)
    body = {"model": "m", "tools": [{"type": "function", "function": {"name": "delete_records"}}],
            "messages": [{"role": "user", "content": SAID}]}
    with gw.client(timeout=60) as c:
        t = threading.Thread(target=lambda: c.post("/v1/chat/completions", json=body), daemon=True)
        t.start()
        a = wait_pending(gw)[0]
        admin(gw, "alice", "POST", f"/v1/approvals/{a['id']}/deny", {"reason": "test"})
        t.join(30)
    shown = json.dumps(a)
    assert "my id is" in shown, shown
    assert EMPLOYEE not in shown and CODENAME not in shown, shown


def test_hash_outputs_are_the_same_before_and_after_a_reload(start_gateway, mock, upstream_ca_file):
    """On main, every reload without `masking.hash_key` drew a new random key: the upstream saw
    [EMAIL:…] with one value before the reload and another after it."""
    policy = {"masking": {"policies": {"hashed": {"request": {"pii": "hash"}, "response": {"pii": "allow"}}}}}
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, masking="hashed"), extra=policy)

    def hashed() -> str:
        with gw.client() as c:
            r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "mail jane.doe@example.com"}]})
            assert r.status_code == 200, r.text
        sent = mock.state.last["body"].decode()
        assert "jane.doe@example.com" not in sent, sent
        found = re.findall(r"\[EMAIL:[0-9a-f]+\]", sent)
        assert found, sent
        return found[0]

    before = hashed()
    # Any change that reloads: a second route.
    config = gw.config()
    config["routes"].append(route("other", "/other/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))
    reload(gw, config, 1)
    assert hashed() == before


def test_an_issuer_removed_by_reload_is_no_longer_fetched(start_gateway, mock, upstream_ca, upstream_ca_file):
    """On main, the start-up key refresher held the first configuration's issuers for the
    process's life: the removed issuer's JWKS was still fetched every second."""
    idp = ControlledIdP(server_ctx(upstream_ca)).start()
    idp.add_key("rsa-1", "RS256")
    try:
        gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file),
                           identity=oidc_identity(idp, ca_file=upstream_ca_file, extra={"jwks_refresh_interval": "1s"}))
        deadline = time.monotonic() + 10
        while idp.jwks_fetches < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert idp.jwks_fetches >= 2, "the issuer's keys were not refreshed at all"
        reload(gw, {**gw.config(), "identity": DEFAULT_IDENTITY}, 1)
        with gw.client(AGENT_TOKEN) as c:
            assert c.get("/v1/models").status_code == 200  # the new configuration serves
        # A fetch already under way may still finish; after that, none.
        time.sleep(1.5)
        after = idp.jwks_fetches
        time.sleep(3)
        assert idp.jwks_fetches == after, f"{idp.jwks_fetches - after} fetches after the issuer was removed"
    finally:
        idp.stop()
