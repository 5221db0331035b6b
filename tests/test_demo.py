"""`make demo` (demo/run.py) end to end, as a newcomer runs it: the real binary, the mock model,
the FastMCP server and oidc-provider on loopback, the OpenAI Agents SDK as the agent. The held
tool call is approved from outside with the very command the demo prints (bash runs it), the
console's screenshots for the README are taken meanwhile in headless chromium, and what the demo
says is checked against the servers' own logs and the record store before it cleans up."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from gateway_driver import ROOT

sys.path.insert(0, str(ROOT / "demo"))
from agent import EMAIL, PROMPT_KEY  # noqa: E402  the values the demo's agent sends

RUN = ROOT / "demo" / "run.py"
CONSOLE_DIR = ROOT / "tests" / "console"
OUT = ROOT / "tests" / "output" / "demo"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# AGENTGATE_SCREENSHOTS=docs/img copies the screenshots there (how the README's were made).
SCREENSHOTS_TO = os.environ.get("AGENTGATE_SCREENSHOTS")


class DemoRun:
    """demo/run.py in its own process group (as a terminal runs it), its output read as it comes."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTGATE_TOKEN", "AGENTGATE_ADMIN"))}
        self.proc = subprocess.Popen([sys.executable, "-u", str(RUN), "--free-ports", *args], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.ended = False  # its output closed (it exited)
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    @property
    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        """The first match of `pattern` in the output so far, once there is one."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                m = re.search(pattern, "\n".join(self.lines))
                if m:
                    return m
                if self.ended:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(min(left, 0.5))
        raise AssertionError(f"the demo never printed {pattern!r}:\n{self.text[-6000:]}")

    def held_call(self) -> tuple[str, str, str]:
        """Step 3's held tool call: its approval id, the console's URL and the issuer to sign in at."""
        held = self.wait_for(r"HELD by the gateway: approval (apr_\w+)").group(1)
        console = self.wait_for(r"in the console: (http://\S+)").group(1)
        issuer = self.wait_for(r"sign-in\s+tests/oidc/provider.mjs on (https://\S+)").group(1)
        return held, console, issuer

    def press_enter(self) -> None:
        """Answers the demo's last prompt (it stops and cleans up)."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120) -> int:
        """Its exit code, once it exited by itself within `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not end in {timeout} s:\n{self.text[-6000:]}") from None

    def kill(self) -> None:
        """Ends the whole process group if it still runs, and removes what it left (the test
        failed half-way)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        m = re.search(r"working directory \(removed at the end\): (\S+)", self.text)
        if m and pathlib.Path(m.group(1)).name.startswith("agentgate-demo-"):
            shutil.rmtree(m.group(1), ignore_errors=True)

    @property
    def workdir(self) -> pathlib.Path:
        return pathlib.Path(self.wait_for(r"working directory \(removed at the end\): (\S+)").group(1))


def processes_using(path: pathlib.Path) -> list[str]:
    """Command lines of running processes that name `path` (the demo's servers all do)."""
    found = []
    for p in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


def assert_cleaned_up(run: DemoRun, workdir: pathlib.Path) -> None:
    assert not workdir.exists(), f"{workdir} is left behind"
    deadline = time.monotonic() + 10
    while processes_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using(workdir) == [], "processes left running"


def shots(stage: str, **ids: str) -> dict:
    if not (CONSOLE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed: run `make test` (it runs npm ci in tests/console)")
    e2e = {"stage": stage, "out": str(OUT), "email": EMAIL, **ids}
    run = subprocess.run([shutil.which("node"), str(CONSOLE_DIR / "demo_shots.mjs")], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, E2E=json.dumps(e2e), CHROMIUM=CHROMIUM))
    seen = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {}
    (OUT / f"seen-{stage}.json").write_text(json.dumps(seen, indent=1))  # what the browser read, for a failure
    assert run.returncode == 0 and seen.get("ok"), (seen.get("error"), run.stderr[-3000:])
    return seen


def check_far_sides(workdir: pathlib.Path) -> None:
    """What the servers logged and the store holds, read from the demo's directory: not what the
    demo says about them."""
    provider_key = (workdir / "provider-key").read_text().strip()
    agent_token = (workdir / "tokens" / "agent").read_text().strip()
    upstream = [json.loads(l) for l in (workdir / "upstream.jsonl").read_text().splitlines() if l]
    assert len(upstream) == 3, upstream  # step 1, and step 3's two model calls; step 2 was refused
    for u in upstream:
        assert u["authorization"] == f"Bearer {provider_key}", u["authorization"]
        assert EMAIL not in u["body"] and PROMPT_KEY not in u["body"] and agent_token not in json.dumps(u)
        assert "BEGIN PRIVATE KEY" not in u["body"]
    assert "<EMAIL_1>" in upstream[0]["body"] and "[REDACTED:OPENAI_KEY]" in upstream[0]["body"]
    tools = [json.loads(l) for l in (workdir / "tools.jsonl").read_text().splitlines() if l]
    assert [t["arguments"] for t in tools if t.get("tool") == "delete_repo"] == [{"name": "payments-prod"}]
    assert all(agent_token not in (t.get("authorization") or "") for t in tools)
    stored = b"".join(p.read_bytes() for p in (workdir / "state" / "records").glob("*.jsonl"))
    assert b"delete_repo" in stored
    for value in (EMAIL, PROMPT_KEY, provider_key):
        assert value.encode() not in stored


def test_demo_every_step_with_the_printed_approve_command_and_console_screenshots():
    assert os.path.exists(CHROMIUM), "chromium is required: `make test` installs Debian's chromium"
    if OUT.exists():
        shutil.rmtree(OUT)
    run = DemoRun("--wait")
    try:
        workdir = run.workdir
        held, console, issuer = run.held_call()
        command = run.wait_for(r"from a shell in the repository:\n\s+(\./target/debug/agentgate approvals .+)").group(1)
        assert held in command and " approve " in command
        assert "received 0 call(s) of delete_repo so far" in run.text
        shots("pending", console=console, issuer=issuer, approval_id=held)
        # Approving through the CLI: the command exactly as printed, in a shell at the repository.
        approved = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["state"] == "approved"
        run.wait_for(r"Press Enter to stop and clean up")
        check_far_sides(workdir)
        masked_id = run.wait_for(r"# step 1's exchange.*\n\$ agentgate sessions show (\w+)").group(1)
        held_id = run.wait_for(r"# step 3's tool call.*\n\$ agentgate sessions show (\w+)").group(1)
        shots("after", console=console, issuer=issuer, masked_id=masked_id, held_id=held_id)
        run.press_enter()
        assert run.finish() == 0, run.text[-6000:]
    finally:
        run.kill()
    out = run.text
    # Step 1: the upstream got a pseudonym and a redaction; the agent got its address back.
    assert "the model received:    Tell <EMAIL_1> that the staging key [REDACTED:OPENAI_KEY] was rotated this morning." in out
    [back] = re.findall(r"the agent got back:    (.*)", out)
    assert EMAIL in back and "[REDACTED:OPENAI_KEY]" in back and "<EMAIL_1>" not in back and PROMPT_KEY not in back, back
    # Step 2: the guardrail's refusal, as the SDK raised it.
    assert "HTTP 400 request_blocked: blocked by guardrail `no-private-keys` (detector `private_key`): private keys never go to a model" in out
    # Step 3: held, then approved, then run; the tool's answer reached the agent.
    assert out.index("HELD by the gateway") < out.index("approved; the tool server ran it and answered: repository payments-prod deleted")
    assert "tools the gateway shows this agent: search_issues, delete_repo, lookup_owner" in out
    # Step 4: the record of the exchange (masked), the approval in it, an intact chain.
    assert "[user] Tell <EMAIL_1> that the staging key [REDACTED:OPENAI_KEY] was rotated this morning." in out
    assert re.search(r'\[tool call \d+\] delete_repo \{"name":"payments-prod"\}', out)
    assert re.search(r'approval \[.*"subject":"alice".*"decision":"approve","reason":"change OPS-7 is planned".*"state":"approved"', out)
    assert re.search(r"intact: \d+ records in 1 segment\(s\)", out) and "checked against" in out and "(exit 0)" in out
    # Step 5 and the end: every finding holds, nothing failed.
    assert "[ok] a token the gateway did not issue is refused (401 unknown_service_account)" in out
    assert out.count("[ok]") == 15 and "FAILED" not in out and "PROBLEM" not in out, out
    assert "every step did what it promised." in out
    assert re.search(r"agentgate_approval_decisions_total\{decision=\"approved\",rule=\"destructive-tools\"\} 1", out)
    assert PROMPT_KEY in out.split("the agent sends:", 1)[1].splitlines()[0]  # the agent did send it
    assert_cleaned_up(run, workdir)
    for name in ("demo-approval-pending.png", "demo-session-masked.png", "demo-session-approved.png"):
        assert (OUT / name).stat().st_size > 5000, name
        if SCREENSHOTS_TO:
            shutil.copy(OUT / name, ROOT / SCREENSHOTS_TO / name)


def test_the_held_tool_call_is_approved_in_the_console():
    """The approver's other channel: the held MCP tools/call approved on its card in the console
    (headless chromium, signed in as alice at the demo's OpenID provider), not by the CLI."""
    run = DemoRun("--wait")
    try:
        workdir = run.workdir
        held, console, issuer = run.held_call()
        assert "received 0 call(s) of delete_repo so far" in run.text
        seen = shots("pending", console=console, issuer=issuer, approval_id=held, approve="change OPS-9 approved in the console")
        assert "delete_repo" in seen["card"]
        run.wait_for(r"Press Enter to stop and clean up")
        check_far_sides(workdir)
        run.press_enter()
        assert run.finish() == 0, run.text[-6000:]
    finally:
        run.kill()
    out = run.text
    assert "approved; the tool server ran it and answered: repository payments-prod deleted" in out
    assert re.search(r'approval \[.*"subject":"alice".*"decision":"approve","reason":"change OPS-9 approved in the console".*"state":"approved"', out), out
    assert_cleaned_up(run, workdir)


def test_demo_auto_approve_runs_unattended():
    run = DemoRun("--auto-approve", "--no-wait")
    try:
        workdir = run.workdir
        assert run.finish() == 0, run.text[-6000:]
    finally:
        run.kill()
    out = run.text
    assert re.search(r"--auto-approve: ran it as alice \(exit 0\):\n\s+approval apr_\w+: approved; approve by alice \(https://127\.0\.0\.1:\d+, "
                     r"service-account alice-cli\): 'change OPS-7 is planned'", out), out
    assert "every step did what it promised." in out
    assert_cleaned_up(run, workdir)


def test_a_denial_is_shown_and_recorded():
    run = DemoRun("--no-wait")
    try:
        workdir = run.workdir
        command = run.wait_for(r"from a shell in the repository:\n\s+(\./target/debug/agentgate approvals .+)").group(1)
        run.wait_for(r"\.\.\. waiting for a decision")
        denied = subprocess.run(["bash", "-c", command.replace(" approve ", " deny ")], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert denied.returncode == 0, denied.stderr
        assert run.finish() == 0, run.text[-6000:]
    finally:
        run.kill()
    out = run.text
    assert "the call did not run:  Error invoking MCP tool delete_repo: rule `destructive-tools` needs an approval: denied by alice" in out
    assert "[ok] the tool server never received it" in out and "approved; the tool server ran it" not in out
    # The record of the refused call names the call and the decision.
    assert re.search(r'# step 3\'s tool call.*\n.*\n(.*\n)*?\[tool call \d+\] delete_repo \{"name":"payments-prod"\}', out), out
    assert "error approval_denied" in out and '"decision":"deny"' in out
    assert "agentgate_mcp_calls_total{outcome=\"denied\",route=\"tools\",tool=\"delete_repo\"} 1" in out
    assert_cleaned_up(run, workdir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_an_interrupt_while_a_call_is_held_stops_everything_and_cleans_up(sig):
    """Ctrl-C, or the terminal going away (SIGHUP: the gateway alone would take it as "reload"
    and stay), sent to the whole process group as a terminal does."""
    run = DemoRun("--no-wait")
    try:
        workdir = run.workdir
        run.wait_for(r"\.\.\. waiting for a decision")
        assert processes_using(workdir), "the demo's servers run from its directory"
        os.killpg(run.proc.pid, sig)
        assert run.finish(60) == 130
    finally:
        run.kill()
    assert "interrupted: stopping everything and removing the working directory" in run.text
    assert_cleaned_up(run, workdir)
