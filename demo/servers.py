"""The demo's stage: its temporary directory, the files conf/demo.yaml names there (a CA for the
local servers, tokens, the credentials only the gateway holds), the servers on their ports, and
their stopping. demo/run.py narrates what happens on it."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import trustme
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

from mock_upstream import MockServer  # noqa: E402
from net import server_ctx  # noqa: E402

CONFIG = ROOT / "conf" / "demo.yaml"
BINARY = pathlib.Path(os.environ.get("AGENTGATE_BIN", ROOT / "target" / "debug" / "agentgate"))
# The console client tests/oidc/provider.mjs registers (a local development provider).
CONSOLE_SECRET = "agentgate-console-secret-0123456789"
MCP_PATH = "/mcp/tools"
APPROVER = "alice"


def port_free(port: int) -> bool:
    """Whether nothing listens on `port` (a closed connection's TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        self.procs: dict[str, subprocess.Popen] = {}
        self.agent_env: dict[str, str] = {}  # what demo/agent.py was started with
        self.mock: MockServer | None = None
        self.config_text = CONFIG.read_text()
        cfg = yaml.safe_load(self.config_text)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="agentgate-demo-"))
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
                print(f"note: port(s) {', '.join(map(str, busy))} in use; the demo runs on free ports instead", flush=True)
            moved: dict[str, int] = {}
            while len(set(moved.values())) < len(self.ports):
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
