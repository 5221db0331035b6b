"""`make demo`: every promise of agentgate on one machine, with no provider key and no network.

Starts, in a temporary directory that is removed at the end (also on Ctrl-C):
  - a stand-in model: tests/mock_upstream.py (OpenAI's API, JSON and SSE) over TLS,
  - an MCP tool server: tests/mcp_server.py (FastMCP) over TLS,
  - a local OpenID provider for the console's sign-in: tests/oidc/provider.mjs (oidc-provider),
  - agentgate on conf/demo.yaml, in front of the first two,
then runs demo/agent.py — an agent built with the OpenAI Agents SDK that knows only the gateway's
URL, its CA and its own token — and shows what the upstream received, what the agent got back,
the held tool call and how to approve it, the record, the audit chain and the metrics.

    python demo/run.py [--auto-approve] [--free-ports] [--wait | --no-wait]
    python demo/run.py --check-config      # `agentgate check` on conf/demo.yaml, with its files

--auto-approve approves the held call itself with the `agentgate approvals approve` command it
prints (for runs nobody watches); otherwise it waits for a person (console or CLI). --wait keeps
everything running at the end until Enter (the default when stdin is a terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time

import httpx

from servers import APPROVER, BINARY, MCP_PATH, ROOT, Demo

PRINT = threading.Lock()


def say(*lines: str) -> None:
    with PRINT:
        for line in lines:
            print(line, flush=True)


def heading(title: str) -> None:
    say("", "=" * 78, title, "=" * 78)


def shown_command(args: list[str]) -> str:
    """A command as a person would type it from the repository (the binary by its relative path)."""
    words = [str(a) for a in args]
    try:
        words[0] = "./" + str(pathlib.Path(words[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return " ".join(shlex.quote(w) for w in words)


class ApprovalWatch(threading.Thread):
    """Waits for the agent's held tool call, says how to approve it, and with --auto-approve
    approves it with the very command it printed."""

    def __init__(self, demo: Demo, auto: bool) -> None:
        super().__init__(daemon=True)
        self.demo, self.auto = demo, auto
        self.stop = threading.Event()
        self.seen: dict | None = None
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pending = self.demo.approvals("pending")
            except httpx.HTTPError as e:  # a slow answer on a busy machine: ask again
                self.error = repr(e)
                pending = []
            if pending:
                self.held(pending[0])
                return
            time.sleep(0.2)

    def held(self, a: dict) -> None:
        self.seen = a
        d = self.demo
        cmd = d.approve_command(a["id"])
        printed = shown_command(cmd).replace(shlex.quote(cmd[5]), f'"{cmd[5]}"')
        calls = d.tool_calls("delete_repo")
        say("",
            f"  HELD by the gateway: approval {a['id']} (rule {a['rule']}; {', '.join(a.get('reasons', []))})",
            f"  the tool server has received {calls} call(s) of delete_repo so far: nothing left the gateway",
            "  To let it run, approve it as alice, either",
            f"    in the console: {d.console_url}  (sign in as 'alice', any password), or",
            "    from a shell in the repository:",
            f"      {printed}",
            "  (or deny it: the same command with `deny`)")
        if not self.auto:
            say("  ... waiting for a decision", "")
            return
        token = (d.dir / "tokens" / APPROVER).read_text().strip()
        real = cmd[:5] + [token] + cmd[6:]
        out = subprocess.run(real, capture_output=True, text=True, timeout=60)
        say("", "  --auto-approve: ran it as alice" + f" (exit {out.returncode}):")
        try:
            decided = json.loads(out.stdout)
            for decision in decided["decisions"]:
                by = decision["by"]
                say(f"    approval {decided['id']}: {decided['state']}; {decision['decision']} by {by['subject']} ({by['issuer']}, "
                    f"{by.get('via', 'console')}): {decision['reason']!r}")
        except (ValueError, KeyError):
            say(*("    " + l for l in (out.stdout + out.stderr).strip().splitlines()))
        say("")


def run_agent(demo: Demo, auto: bool) -> tuple[int, str, ApprovalWatch]:
    """demo/agent.py with only what an agent gets: the gateway's URL and CA, its own token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTGATE_", "SSL_CERT", "REQUESTS_CA", "HTTP", "ALL_PROXY"))}
    env.update(
        OPENAI_BASE_URL=f"{demo.agent_url}/v1",
        OPENAI_API_KEY=demo.agent_token,
        SSL_CERT_FILE=str(demo.dir / "state" / "tls" / "ca.pem"),
        OPENAI_AGENTS_DISABLE_TRACING="1",
        NO_PROXY="*",
        MCP_URL=f"{demo.agent_url}{MCP_PATH}",
        DEMO_UPSTREAM_LOG=str(demo.upstream_log),
        DEMO_TOOLS_LOG=str(demo.tools_log),
        PYTHONUNBUFFERED="1",
    )
    demo.agent_env = env
    watch = ApprovalWatch(demo, auto)
    p = subprocess.Popen([sys.executable, str(ROOT / "demo" / "agent.py")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=demo.dir)
    demo.procs["agent"] = p
    seen = []
    for line in p.stdout:
        seen.append(line)
        say(line.rstrip("\n"))
    p.wait()
    watch.stop.set()
    return p.returncode, "".join(seen), watch


def wait_for_checkpoint(demo: Demo, seq: int, timeout: float = 20) -> bool:
    """Whether a signed checkpoint naming record `seq` (or later) reached the gateway's stdout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in demo.gateway_out.read_text().splitlines():
            if '"kind":"checkpoint"' in line:
                covered = json.loads(line).get("seq")
                if covered is not None and covered >= seq:
                    return True
        time.sleep(0.2)
    return False


def metric(demo: Demo, name: str) -> float:
    text = httpx.get(f"{demo.admin_url}/metrics", timeout=5).text
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.split("{")[0].split(" ")[0] == name)


def all_recorded(demo: Demo, timeout: float = 20) -> int:
    """Waits until every exchange the gateway answered is in the store (records are written off
    the request path); the number of records."""
    deadline = time.monotonic() + timeout
    while True:
        written = metric(demo, "agentgate_records_written_total")
        if written >= metric(demo, "agentgate_requests_total") or time.monotonic() > deadline:
            return int(written)
        time.sleep(0.1)


def show(demo: Demo, title: str, record_id: str) -> subprocess.CompletedProcess:
    shown = demo.agentgate("sessions", "show", record_id, "--dir", str(demo.records))
    say("", f"# {title}", f"$ agentgate sessions show {record_id} --dir {demo.records}", shown.stdout.rstrip() or shown.stderr.rstrip())
    return shown


def the_record(demo: Demo) -> list[str]:
    heading("Step 4. The record: what happened, who decided, and a chain that verifies")
    problems = []
    n = all_recorded(demo)
    index = demo.records / "index.jsonl"
    entries = [json.loads(l) for l in index.read_text().splitlines()] if index.exists() else []
    listed = demo.agentgate("sessions", "list", "--dir", str(demo.records))
    say(f"$ agentgate sessions list --dir {demo.records}", listed.stdout.rstrip())
    model = [e for e in entries if e.get("route") == "model"]
    if not model:
        problems.append("no record of the masked exchange of step 1")
    elif show(demo, "step 1's exchange: what the model got; what the agent got back is stored redacted, never restored",
              model[0]["id"]).returncode != 0:
        problems.append("sessions show failed")
    for e in (e for e in entries if e.get("route") == "tools"):
        shown = demo.agentgate("sessions", "show", e["id"], "--dir", str(demo.records))
        if "delete_repo" in shown.stdout and "approval" in shown.stdout:
            show(demo, "step 3's tool call, with who decided and why", e["id"])
            break
    else:
        problems.append("no record of the held delete_repo call")
    if not wait_for_checkpoint(demo, n - 1):
        problems.append("no signed checkpoint covering the last record")
    pubkey = demo.agentgate("audit", "pubkey", "--config", str(demo.config)).stdout.strip()
    verify = demo.agentgate("audit", "verify", "--dir", str(demo.records), "--checkpoints", str(demo.gateway_out), "--pubkey", pubkey)
    say("", "# the hash chain, the index, and the signed checkpoints the gateway printed on its stdout (what a log pipeline keeps)",
        f"$ agentgate audit verify --dir {demo.records} --checkpoints {demo.gateway_out} --pubkey {pubkey}",
        (verify.stdout + verify.stderr).rstrip(), f"(exit {verify.returncode})")
    if verify.returncode != 0:
        problems.append("audit verify did not say intact")
    return problems


def findings(demo: Demo, agent_output: str) -> list[str]:
    """What a skeptical reader would check, checked: where the provider key, the agent's token,
    the e-mail address and the key in the prompt went."""
    from agent import EMAIL, PROMPT_KEY  # the values demo/agent.py sends

    heading("Step 5. Checked, not claimed")
    # A caller the gateway does not know: refused before anything goes upstream.
    before = len(demo.upstream_log.read_text().splitlines())
    stranger = httpx.post(f"{demo.agent_url}/v1/responses", json={"model": "mock-model", "input": "hi"}, timeout=10,
                          headers={"Authorization": "Bearer agt_not-a-token-this-gateway-issued"},
                          verify=str(demo.dir / "state" / "tls" / "ca.pem"))
    try:
        refusal = stranger.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        refusal = stranger.text[:80]
    upstream = [json.loads(l) for l in demo.upstream_log.read_text().splitlines() if l]
    tools = [json.loads(l) for l in demo.tools_log.read_text().splitlines() if l]
    stored = b"".join(p.read_bytes() for p in (demo.dir / "state").rglob("*") if p.is_file())
    rows = [
        (f"a token the gateway did not issue is refused ({stranger.status_code} {refusal}) and nothing goes upstream",
         stranger.status_code == 401 and len(upstream) == before),
        (f"the provider key was injected by the gateway on every model request ({len(upstream)})",
         bool(upstream) and all(u["authorization"] == f"Bearer {demo.provider_key}" for u in upstream)),
        ("the provider key is neither in the agent's environment nor in anything it printed of what came back",
         demo.provider_key not in agent_output and demo.provider_key not in json.dumps(demo.agent_env)),
        ("the agent's own token never reached the model or the tool server",
         all(demo.agent_token not in json.dumps(u) for u in upstream) and demo.agent_token not in demo.tools_log.read_text()),
        ("the tool server got the gateway's credential, not the agent's",
         any(t.get("authorization") == f"Bearer {demo.tools_key}" for t in tools)),
        ("the model never received the e-mail address or the key from the prompt",
         all(EMAIL not in u["body"] and PROMPT_KEY not in u["body"] for u in upstream)),
        ("the record store holds neither the e-mail address, the prompt's key, nor the provider key",
         not any(v.encode() in stored for v in (EMAIL, PROMPT_KEY, demo.provider_key))),
    ]
    problems = []
    for text, ok in rows:
        say(f"  [{'ok' if ok else 'FAILED'}] {text}")
        if not ok:
            problems.append(text)
    metrics = httpx.get(f"{demo.admin_url}/metrics", timeout=5).text
    families = {l.split()[2] for l in metrics.splitlines() if l.startswith("# TYPE ")}
    samples = [l for l in metrics.splitlines() if l and not l.startswith("#")]
    say("", f"# {demo.admin_url}/metrics: {len(samples)} samples of {len(families)} metric families; the non-zero ones of a few:")
    wanted = ("agentgate_requests_total", "agentgate_masked_values_total", "agentgate_guardrail_blocks_total",
              "agentgate_approval_decisions_total", "agentgate_mcp_calls_total", "agentgate_records_written_total")
    say(*("  " + l for l in samples if l.split("{")[0].split(" ")[0] in wanted and float(l.rsplit(" ", 1)[1]) != 0))
    return problems


def interrupted(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auto-approve", action="store_true", help="approve the held call with the printed CLI command")
    ap.add_argument("--free-ports", action="store_true", help="run on free ports instead of conf/demo.yaml's")
    ap.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                    help="keep everything running at the end until Enter (default: when stdin is a terminal)")
    ap.add_argument("--check-config", action="store_true", help="only `agentgate check` conf/demo.yaml with its files in place")
    args = ap.parse_args()
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is missing: run `make demo` (it builds it)")
    # Everything here is on loopback: never through a proxy the environment names.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
    # Ctrl-C, SIGTERM and a closed terminal (SIGHUP, which the gateway itself takes as "reload")
    # all end in the `finally` below, which stops everything and cleans up.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    demo = Demo(free_ports=args.free_ports, check_only=args.check_config)
    try:
        demo.prepare()
        if args.check_config:
            return demo.check()
        heading("agentgate demo: a model, a tool server and a sign-in page on this machine, behind the gateway")
        say(f"  working directory (removed at the end): {demo.dir}",
            f"  agentgate      {shown_command([BINARY, 'run', '--config', demo.config])}",
            f"                 agents: {demo.agent_url}/v1 and {demo.agent_url}{MCP_PATH} (TLS; CA {demo.dir}/state/tls/ca.pem)",
            f"                 admin, metrics and console: {demo.admin_url}",
            f"  model          tests/mock_upstream.py on https://127.0.0.1:{demo.ports['model']} (OpenAI API, JSON and SSE)",
            f"  tool server    tests/mcp_server.py on https://127.0.0.1:{demo.ports['tools']}{MCP_PATH} (MCP, FastMCP)",
            f"  sign-in        tests/oidc/provider.mjs on {demo.issuer} (oidc-provider; any password)",
            "  the provider key lives in the gateway's directory only; the agent gets its own token "
            f"({demo.agent_token[:8]}...), the gateway's URL and its CA")
        demo.start_model()
        demo.start_tools()
        demo.start_idp()
        demo.start_gateway()
        demo.wait_ready()
        code, agent_output, watch = run_agent(demo, args.auto_approve)
        problems = [] if code == 0 else [f"the agent exited with {code}"]
        if watch.seen is None:
            problems.append("the destructive tool call was never held for approval" + (f" ({watch.error})" if watch.error else ""))
        problems += the_record(demo)
        problems += findings(demo, agent_output)
        heading("Done" if not problems else "Done, with problems")
        for p in problems:
            say(f"  PROBLEM: {p}")
        if not problems:
            say("  every step did what it promised.")
        say("  Next: `make run` puts the same gateway in front of api.openai.com with your OPENAI_API_KEY (conf/agentgate.yaml).")
        wait = args.wait if args.wait is not None else sys.stdin.isatty()
        if wait:
            say("", f"  Everything is still running: the console is at {demo.console_url} (sign in as alice, any password).",
                "  Press Enter to stop and clean up.")
            sys.stdin.readline()
        return 0 if not problems else 1
    except KeyboardInterrupt:
        say("", "interrupted: stopping everything and removing the working directory")
        return 130
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
