"""The agentgate binary as a process under test: `Gateway` starts it on a configuration, waits
until it is ready, and gives tests verifying clients, raw TLS connections, its metrics and its
session lines; plus the few client-side helpers that drive a running gateway."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import socket
import ssl
import subprocess
import threading
import time
from typing import Callable

import httpx

from gwconfig import AGENT_TOKEN, ROUTE_KEY, admin_is_tls, parse, render
from net import read_until_closed

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = pathlib.Path(os.environ.get("AGENTGATE_BIN", ROOT / "target" / "debug" / "agentgate"))
# A chat completion request body.
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def eventually(read: Callable, ok: Callable, timeout: float = 10, interval: float = 0.05):
    """Calls `read` until `ok` holds for its value or `timeout` passed; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def limit_file_size(nbytes: int):
    """A `preexec` for the gateway: files may not grow past `nbytes` (writes fail with EFBIG,
    as on a full disk). The hard limit stays unlimited so a test can lift the soft one later."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return apply


class Gateway:
    """One gateway process on `config` (a dict, or YAML text) in `state_dir`."""

    def __init__(self, config: dict | str, state_dir: pathlib.Path, port: int, admin_port: int, wait_ready: bool = True, preexec=None) -> None:
        text = config if isinstance(config, str) else render(config)
        self.state_dir = state_dir
        self.port = port
        self.admin_port = admin_port
        self.config_path = state_dir / "agentgate.yaml"
        self.config_path.write_text(text)
        self.admin_url = f"{'https' if admin_is_tls(parse(text)) else 'http'}://127.0.0.1:{admin_port}"
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

    # --- configuration ----------------------------------------------------
    def config(self) -> dict:
        """The configuration file as it is now, parsed."""
        return parse(self.config_path.read_text())

    def write_config(self, config: dict) -> None:
        """Rewrites the configuration file (the gateway notices the change, or a SIGHUP)."""
        self.config_path.write_text(render(config))

    # --- start-up ---------------------------------------------------------
    def _probe_listener(self) -> None:
        """One connection to the agent listener with a whole TLS handshake, closed cleanly after
        reading what the gateway sent: the probe is not itself a failed handshake on the
        gateway's count (a bare TCP connect would be one, counted a moment later). Raises
        OSError while nothing listens."""
        if self.ca_file.exists():
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        try:
            tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        except ssl.SSLError:
            sock.close()
            return  # it listens (and wants what a probe lacks, a client certificate say)
        with tls:
            tls.shutdown(socket.SHUT_WR)  # no request; read until the gateway closes
            tls.settimeout(5)
            try:
                while tls.recv(65536):
                    pass
            except OSError:
                pass

    def _wait_listening(self) -> None:
        """Waits until the agent listener accepts connections and the admin listener answers
        (readiness may still be false)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentgate exited with {self.proc.returncode}: {self.stderr_path.read_text()}")
            try:
                self._probe_listener()
                self.readyz()
                return
            except (httpx.HTTPError, OSError):
                time.sleep(0.05)
        raise RuntimeError("agentgate did not listen in 30 s: " + self.stderr_path.read_text())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentgate exited with {self.proc.returncode}: {self.stderr_path.read_text()}")
            try:
                r = httpx.get(f"{self.admin_url}/readyz", timeout=1, verify=False)
                if r.status_code == 200:
                    self._probe_listener()
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError("agentgate did not become ready in 30 s: " + self.stderr_path.read_text())

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.admin_url}/readyz", timeout=5, verify=False)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.state_dir / "var" / "tls" / "ca.pem"

    # --- clients ----------------------------------------------------------
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

    # --- what it reports --------------------------------------------------
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

    def wait_metric(self, name: str, want: float | Callable[[float], bool], timeout: float = 10, **labels: str) -> float:
        """`metric(name, **labels)` once it equals `want` (or `want(value)` holds), else its value
        after `timeout`. The gateway counts an exchange when it logs it, just after the agent got
        the last byte of the answer, and a few things (handshake failures, records written,
        approvals that expire) off the request path: read straight away, the count can be early."""
        ok = want if callable(want) else (lambda v: v == want)
        return eventually(lambda: self.metric(name, **labels), ok, timeout)

    def session_lines(self) -> list[dict]:
        """The session lines on stdout (the record writer's signed checkpoints share it)."""
        out = []
        for line in self.stdout_path.read_text().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc.get("kind") != "checkpoint":
                    out.append(doc)
        return out

    def wait_session_lines(self, match: Callable[[dict], bool], n: int = 1, timeout: float = 10) -> list[dict]:
        """The session lines `match` accepts, once there are at least `n` of them (lines are
        written off the request path, after the agent got its answer), else after `timeout`."""
        return eventually(lambda: [l for l in self.session_lines() if match(l)], lambda ls: len(ls) >= n, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def assert_chat_served(gw: Gateway) -> None:
    """A plain chat completion goes through and gets the mock upstream's answer."""
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock upstream."


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
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-mock-say": say, "x-mock-delay-ms": str(delay_ms)}
        with gw.client() as c:
            with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        self.got.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
                        self.first.set()
        self.done.set()
