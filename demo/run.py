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
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

import httpx  # noqa: E402
import trustme  # noqa: E402
import yaml  # noqa: E402

from mock_upstream import MockServer  # noqa: E402
from net import server_ctx  # noqa: E402

CONFIG = ROOT / "conf" / "demo.yaml"
BINARY = pathlib.Path(os.environ.get("AGENTGATE_BIN", ROOT / "target" / "debug" / "agentgate"))
# The console client tests/oidc/provider.mjs registers (a local development provider).
CONSOLE_SECRET = "agentgate-console-secret-0123456789"
MCP_PATH = "/mcp/tools"
APPROVER = "alice"

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


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/", 1)[0])


class Demo:
    """The demo's directory, its processes and their ports."""

    def __init__(self, free_ports: bool, check_only: bool = False) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="agentgate-demo-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.mock: MockServer | None = None
        self.config_text = CONFIG.read_text()
        cfg = yaml.safe_load(self.config_text)
        routes = {r["name"]: r for r in cfg["routes"]}
        self.ports = {
            "agents": port_of(cfg["listeners"][0]["address"]),
            "admin": port_of(cfg["admin"]["address"]),
            "model": port_of(routes["model"]["upstream"]["url"]),
            "idp": port_of(cfg["admin"]["console"]["issuer"]),
            "tools": port_of(routes["tools"]["upstream"]["url"]),
        }
        busy = [] if check_only else [p for p in self.ports.values() if not port_free(p)]
        if free_ports or busy:
            if busy and not free_ports:
                say(f"note: port(s) {', '.join(map(str, busy))} in use; the demo runs on free ports instead")
            moved = {name: free_port() for name in self.ports}
            for name, new in moved.items():
                self.config_text = self.config_text.replace(f"127.0.0.1:{self.ports[name]}", f"127.0.0.1:{new}")
            self.ports = moved
            self.config = self.dir / "demo.yaml"
            self.config.write_text(self.config_text)
        else:
            self.config = CONFIG
        self.agent_url = f"https://127.0.0.1:{self.ports['agents']}"
        self.admin_url = f"http://127.0.0.1:{self.ports['admin']}"
        self.console_url = f"{self.admin_url}/console/"
        self.issuer = f"https://127.0.0.1:{self.ports['idp']}"
        self.records = self.dir / "state" / "records"
        self.upstream_log = self.dir / "upstream.jsonl"
        self.tools_log = self.dir / "tools.jsonl"
        self.gateway_out = self.dir / "gateway.stdout"

    # --- the files the configuration names -------------------------------------
    def prepare(self) -> None:
        """The CA of the local servers, the tokens (with `agentgate token create`) and the
        credentials only the gateway holds."""
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(self.dir / "demo-ca.pem"))
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.dir / "server-key.pem"))
        with open(self.dir / "server-cert.pem", "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        (self.dir / "tokens").mkdir()
        for name, groups in (("agent", "agents"), (APPROVER, "security-oncall")):
            subprocess.run([str(BINARY), "token", "create", "--name", name, "--groups", groups, "--write", str(self.dir / "tokens" / name)],
                           check=True, capture_output=True, text=True, timeout=30)
        self.agent_token = (self.dir / "tokens" / "agent").read_text().strip()
        self.approver_token = (self.dir / "tokens" / APPROVER).read_text().strip()
        # What a real provider would issue: random for this run, so it is findable anywhere it leaks.
        self.provider_key = "sk-proj-" + secrets.token_urlsafe(36).replace("-", "x").replace("_", "y")
        (self.dir / "provider-key").write_text(self.provider_key + "\n")
        self.tools_key = "mcp-" + secrets.token_hex(24)
        (self.dir / "tools-key").write_text(self.tools_key + "\n")
        (self.dir / "console-client-secret").write_text(CONSOLE_SECRET + "\n")
        for p in self.dir.rglob("*"):
            if p.is_file():
                p.chmod(0o600)

    def check(self) -> int:
        """`agentgate check` of the configuration with every file it names in place."""
        out = subprocess.run([str(BINARY), "check", "--config", str(self.config)], cwd=self.dir, capture_output=True, text=True, timeout=60)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        return out.returncode

    # --- the servers -----------------------------------------------------------
    def start_model(self) -> None:
        self.mock = MockServer(server_ctx(self.ca), port=self.ports["model"]).start()
        record, log = self.mock.state.record, self.upstream_log

        def record_and_log(handler, body: bytes) -> None:
            record(handler, body)
            auth = handler.headers.get("authorization", "")
            entry = {"path": handler.path, "authorization": auth, "body": body.decode(errors="replace")}
            with open(log, "a") as f:
                f.write(json.dumps(entry) + "\n")

        self.mock.state.record = record_and_log

    def spawn(self, args: list[str], name: str, **kw) -> subprocess.Popen:
        err = open(self.dir / f"{name}.stderr", "wb")
        p = subprocess.Popen(args, stderr=err, **kw)
        self.procs[name] = p
        return p

    def start_tools(self) -> None:
        self.tools_log.write_text("")
        self.spawn([sys.executable, str(TESTS / "mcp_server.py"), str(self.ports["tools"]), str(self.dir / "server-cert.pem"),
                    str(self.dir / "server-key.pem"), str(self.tools_log), MCP_PATH], "tools", stdout=subprocess.DEVNULL)

    def start_idp(self) -> None:
        node = shutil.which("node")
        if not node or not (TESTS / "oidc" / "node_modules" / "oidc-provider").is_dir():
            raise SystemExit("the console's sign-in needs node and tests/oidc/node_modules: run `make demo`")
        env = dict(os.environ, CONSOLE_REDIRECT=f"{self.admin_url}/console/callback", CONSOLE_ACCOUNTS=json.dumps({APPROVER: ["security-oncall"]}))
        self.idp = self.spawn([node, str(TESTS / "oidc" / "provider.mjs"), str(self.ports["idp"]), str(self.dir / "server-cert.pem"),
                               str(self.dir / "server-key.pem")], "idp", stdout=subprocess.PIPE, text=True, env=env)

    def start_gateway(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENTGATE_"))}
        env["AGENTGATE_LOG"] = "warn"
        self.gateway = self.spawn([str(BINARY), "run", "--config", str(self.config)], "gateway", cwd=self.dir, env=env,
                                  stdout=open(self.gateway_out, "wb"))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        line = self.idp.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"the OpenID provider did not start: {line}{(self.dir / 'idp.stderr').read_text()}")
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"{name} exited with {p.returncode}: {(self.dir / f'{name}.stderr').read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200
                socket.create_connection(("127.0.0.1", self.ports["tools"]), timeout=1).close()
                if ready:
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise SystemExit("the demo's servers did not start in 60 s: " + (self.dir / "gateway.stderr").read_text()[-3000:])

    def stop(self) -> None:
        for p in reversed(self.procs.values()):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs.values()):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.mock is not None:
            self.mock.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what the demo reads back ---------------------------------------------
    def agentgate(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BINARY), *args], cwd=self.dir, capture_output=True, text=True, timeout=60)

    def approvals(self, state: str) -> list[dict]:
        r = httpx.get(f"{self.admin_url}/v1/approvals", params={"state": state},
                      headers={"Authorization": f"Bearer {self.approver_token}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    def tool_calls(self, tool: str) -> int:
        return sum(1 for l in self.tools_log.read_text().splitlines() if l and json.loads(l).get("tool") == tool)

    def approve_command(self, approval_id: str) -> list[str]:
        return [str(BINARY), "approvals", "--admin", self.admin_url, "--token", f"$(cat {self.dir}/tokens/{APPROVER})",
                "approve", approval_id, "--reason", "change OPS-7 is planned"]


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
        try:
            while not self.stop.is_set():
                pending = self.demo.approvals("pending")
                if pending:
                    self.held(pending[0])
                    return
                time.sleep(0.2)
        except Exception as e:  # reported by the narrator; the agent's own output says what happened
            self.error = repr(e)

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
            for d in decided["decisions"]:
                by = d["by"]
                say(f"    approval {decided['id']}: {decided['state']}; {d['decision']} by {by['subject']} ({by['issuer']}, "
                    f"{by.get('via', 'console')}): {d['reason']!r}")
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
    upstream = [json.loads(l) for l in demo.upstream_log.read_text().splitlines() if l]
    tools = [json.loads(l) for l in demo.tools_log.read_text().splitlines() if l]
    stored = b"".join(p.read_bytes() for p in (demo.dir / "state").rglob("*") if p.is_file())
    rows = [
        (f"the provider key was injected by the gateway on every model request ({len(upstream)})",
         bool(upstream) and all(u["authorization"] == f"Bearer {demo.provider_key}" for u in upstream)),
        ("the provider key appears nowhere the agent could see it (its environment, everything it received and printed)",
         demo.provider_key not in agent_output and demo.provider_key not in json.dumps(dict(os.environ))),
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
    # Ctrl-C and SIGTERM both end in the `finally` below, which stops everything and cleans up.
    signal.signal(signal.SIGTERM, interrupted)
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
        say(f"  Next: `make run` puts the same gateway in front of api.openai.com with your OPENAI_API_KEY (conf/agentgate.yaml).")
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
