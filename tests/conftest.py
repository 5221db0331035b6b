"""Fixtures: a TLS mock upstream with its own CA (trustme) and the real agentgate binary
started on loopback with ephemeral ports and a temporary state directory."""

from __future__ import annotations

import hashlib
import os
import pathlib
import resource
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import httpx
import pytest
import trustme

from mock_upstream import MockServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = pathlib.Path(os.environ.get("AGENTGATE_BIN", ROOT / "target" / "debug" / "agentgate"))
ROUTE_KEY = "sk-route-secret-0123456789abcdef"
# The service-account token tests use as the agent's API key, and its group.
AGENT_TOKEN = "agt_test-agent-token-0123456789abcdefghijklmnopq"
AGENT_TOKEN_SHA256 = hashlib.sha256(AGENT_TOKEN.encode()).hexdigest()
DEFAULT_IDENTITY = (
    "identity:\n  service_accounts:\n"
    f"    - {{ name: test-agent, token_sha256: {AGENT_TOKEN_SHA256}, groups: [agents] }}\n"
)


# A masking policy `default` that redacts secrets and personal data in both directions.
REDACT_POLICY = (
    "masking:\n  policies:\n    default:\n"
    "      request: { secrets: redact, pii: redact }\n"
    "      response: { secrets: redact, pii: redact }\n"
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def request_head(method: str, path: str, *extra: str) -> bytes:
    """An HTTP/1.1 request head with the agent's credentials and `extra` header lines."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {AGENT_TOKEN}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until_closed(tls: ssl.SSLSocket, whole_response: bool = False) -> bytes:
    """Every byte until the server closes; with `whole_response`, stops once one response with
    a Content-Length (and no `connection: close`) is complete."""
    out = b""
    while True:
        try:
            data = tls.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not data:
            break
        out += data
        if whole_response and b"\r\n\r\n" in out and b"connection: close" not in out.lower():
            head, _, body = out.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    return out
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_chat_served(gw: "Gateway") -> None:
    """A plain chat completion goes through and gets the mock upstream's answer."""
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."


def people_identity(people: dict[str, list[str]]) -> str:
    """DEFAULT_IDENTITY plus one service account per person (token `agt_person-<name>-...`)."""
    lines = [DEFAULT_IDENTITY]
    for name, groups in people.items():
        lines.append(f"    - {{ name: {name}, token_sha256: {hashlib.sha256(person_token(name).encode()).hexdigest()}, groups: [{', '.join(groups)}] }}\n")
    return "".join(lines)


def limit_file_size(nbytes: int):
    """A `preexec` for the gateway: files may not grow past `nbytes` (writes fail with EFBIG,
    as on a full disk). The hard limit stays unlimited so a test can lift the soft one later."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return apply


def person_token(name: str) -> str:
    return f"agt_person-{name}-0123456789abcdefghijklmnopqrstuv"


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def upstream_ca_file(upstream_ca, tmp_path_factory) -> pathlib.Path:
    p = tmp_path_factory.mktemp("upstream-ca") / "ca.pem"
    upstream_ca.cert_pem.write_to_path(str(p))
    return p


def server_ctx(ca: trustme.CA, *names: str, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost")), **kw).configure_cert(ctx)
    return ctx


@pytest.fixture
def mock(upstream_ca):
    srv = MockServer(server_ctx(upstream_ca)).start()
    yield srv
    srv.state.release.set()
    srv.stop()


class Gateway:
    def __init__(self, config: str, state_dir: pathlib.Path, port: int, admin_port: int, wait_ready: bool = True, preexec=None) -> None:
        self.state_dir = state_dir
        self.port = port
        self.admin_port = admin_port
        self.config_path = state_dir / "agentgate.yaml"
        self.config_path.write_text(config)
        admin_line = next((l for l in config.splitlines() if l.startswith("admin:")), "")
        self.admin_url = f"{'https' if 'tls:' in admin_line else 'http'}://127.0.0.1:{admin_port}"
        self.stdout_path = state_dir / "stdout.log"
        self.stderr_path = state_dir / "stderr.log"
        env = dict(os.environ, ROUTE_KEY=ROUTE_KEY, AGENTGATE_LOG=os.environ.get("AGENTGATE_TEST_LOG", "info"))
        self.proc = subprocess.Popen(
            [str(BINARY), "run", "--config", str(self.config_path)],
            stdout=open(self.stdout_path, "wb"),
            stderr=open(self.stderr_path, "wb"),
            env=env,
            cwd=state_dir,
            preexec_fn=preexec,
        )
        if wait_ready:
            self._wait_ready()
        else:
            self._wait_listening()

    def _wait_listening(self) -> None:
        """Waits until the agent listener accepts connections (readiness may still be false)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentgate exited with {self.proc.returncode}: {self.stderr_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("agentgate did not listen in 30 s: " + self.stderr_path.read_text())

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.admin_url}/readyz", timeout=5, verify=False)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.state_dir / "var" / "tls" / "ca.pem"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentgate exited with {self.proc.returncode}: {self.stderr_path.read_text()}")
            try:
                r = httpx.get(f"{self.admin_url}/readyz", timeout=1, verify=False)
                if r.status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError("agentgate did not become ready in 30 s: " + self.stderr_path.read_text())

    def client(self, token: str | None = AGENT_TOKEN, **kw) -> httpx.Client:
        """A verifying client that sends `token` as its API key (None: no credentials)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        headers = kw.pop("headers", {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        kw.setdefault("timeout", 20)
        return httpx.Client(base_url=self.base_url, verify=ctx, headers=headers, **kw)

    def connect(self, timeout: float = 10) -> ssl.SSLSocket:
        """A TLS connection to the agent listener, verifying the gateway's certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")

    def raw(self, request: bytes, timeout: float = 10) -> bytes:
        """Sends bytes as they are over verified TLS and returns the response: all bytes until
        the server closes, or one whole response with a Content-Length."""
        with self.connect(timeout) as tls:
            tls.sendall(request)
            return read_until_closed(tls, whole_response=True)

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=5, verify=False).text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def session_lines(self) -> list[dict]:
        import json

        out = []
        for line in self.stdout_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def route_yaml(
    name: str,
    prefix: str,
    url: str,
    ca_file: pathlib.Path | None,
    extra: str = "",
    key_header: bool = True,
    access: str = "{ groups: [agents] }",
) -> str:
    lines = [
        f"  - name: {name}",
        f"    match: {{ path_prefix: {prefix} }}",
        f"    access: {access}",
        "    upstream:",
        f"      url: {url}",
    ]
    if ca_file:
        lines.append(f"      ca_file: {ca_file}")
    lines += [f"      {l}" for l in extra.splitlines() if l.strip()]
    if key_header:
        lines += ["    credentials:", "      set_headers:", '        Authorization: "Bearer ${env:ROUTE_KEY}"']
    return "\n".join(lines) + "\n"


def masked_chat_routes(mock_port: int, ca_file: pathlib.Path) -> str:
    """Two routes to the mock: `masked` (/v1/chat/, bodies read whole and masked with the
    `default` policy) and `plain` (the rest of /v1/, streamed through)."""
    url = f"https://127.0.0.1:{mock_port}"
    return route_yaml("masked", "/v1/chat/", url, ca_file) + "    masking: default\n" + route_yaml("plain", "/v1/", url, ca_file)


def plain_and_masked(start_gateway, mock_port: int, ca_file: pathlib.Path, route_extra: str = "") -> tuple["Gateway", "Gateway"]:
    """Two gateways with one route `up` (/v1/ -> the mock): one streams bodies through, the
    other masks them with REDACT_POLICY."""
    route = route_yaml("up", "/v1/", f"https://127.0.0.1:{mock_port}", ca_file)
    plain = start_gateway(route + route_extra)
    masked = start_gateway(route + "    masking: default\n" + route_extra, identity=DEFAULT_IDENTITY + REDACT_POLICY)
    return plain, masked


@pytest.fixture
def start_gateway(tmp_path):
    started: list[Gateway] = []

    def start(
        routes: str,
        server_extra: str = "",
        identity: str = DEFAULT_IDENTITY,
        listener_tls: str = "{}",
        wait_ready: bool = True,
        extra: str = "",
        preexec=None,
        admin_extra: str = "",
        admin_port: int | None = None,
    ) -> Gateway:
        port, admin_port = free_port(), admin_port or free_port()
        state = tmp_path / f"gw{len(started)}"
        state.mkdir()
        config = (
            f"server: {{ state_dir: ./var, threads: 2, grace_period: 5s{server_extra} }}\n"
            f"listeners:\n  - {{ name: agents, address: \"127.0.0.1:{port}\", tls: {listener_tls} }}\n"
            f"admin: {{ address: \"127.0.0.1:{admin_port}\"{admin_extra} }}\n"
            f"{identity}"
            f"{extra}"
            f"routes:\n{routes}"
        )
        gw = Gateway(config, state, port, admin_port, wait_ready=wait_ready, preexec=preexec)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(start_gateway, mock, upstream_ca_file) -> Gateway:
    """A gateway with one route, `/v1/` -> the mock, injecting ROUTE_KEY."""
    return start_gateway(route_yaml("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))


class SlowStream:
    """A streaming chat completion read in a thread: the mock sends `say` word by word,
    `delay_ms` apart. `got` holds the deltas, `first` is set at the first one, `done` once the
    stream ended normally."""

    def __init__(self, gw: Gateway, say: str, delay_ms: int) -> None:
        self.got: list[str] = []
        self.first = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gw, say, delay_ms))
        self.thread.start()

    def _run(self, gw: Gateway, say: str, delay_ms: int) -> None:
        import json

        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-mock-say": say, "x-mock-delay-ms": str(delay_ms)}
        with gw.client() as c:
            with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        self.got.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
                        self.first.set()
        self.done.set()
