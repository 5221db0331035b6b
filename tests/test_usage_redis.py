"""Limits shared through a real redis-server (Debian's, started here on loopback with TLS): two
gateway processes enforce one limit together; Redis down answers as documented (refuse with 503
by default, or let requests through uncounted with `on_unavailable: allow`), counted either way."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time

import openai
import pytest
import trustme

from gwconfig import route
from net import free_port
from test_usage import PROMPT, sdk

if shutil.which("redis-server") is None:
    raise RuntimeError("redis-server is not installed: `make test-deps` installs it")


class RedisServer:
    """redis-server with TLS only, on 127.0.0.1, its certificate from `ca`."""

    def __init__(self, ca: trustme.CA, tmp) -> None:
        self.port = free_port()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cert, self.key, self.ca_file = tmp / "redis.pem", tmp / "redis.key", tmp / "redis-ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        cert.private_key_pem.write_to_path(str(self.key))
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.ctx = ssl.create_default_context(cafile=str(self.ca_file))
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
             "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self.command("PING") != b"+PONG\r\n":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def command(self, *args: str) -> bytes:
        """One command over TLS (RESP), its raw reply (b'' when it cannot connect)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                with self.ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                    t.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
                    return t.recv(65536)
        except OSError:
            return b""

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    d = tmp_path / "redis"
    d.mkdir()
    r = RedisServer(trustme.CA(), d)
    yield r
    r.stop()


def shared(redis_url: str, ca_file, on_unavailable: str = "refuse", timeout: str = "1s") -> str:
    return f"""
limits_store:
  redis: {{ url: "{redis_url}", ca_file: "{ca_file}", on_unavailable: {on_unavailable}, timeout: {timeout} }}
limits:
  - {{ name: per-agent, per: identity, requests: {{ per: 1h, max: 4 }}, tokens: {{ per: 1h, max: 100000 }} }}
"""


def test_two_gateways_enforce_one_limit_through_redis(start_gateway, mock, upstream_ca_file, redis):
    extra = shared(redis.url, redis.ca_file)
    url = f"https://127.0.0.1:{mock.port}"
    gws = [start_gateway(route("llm", "/v1/", url, upstream_ca_file), extra=extra) for _ in range(2)]
    clients = [sdk(gw, headers={"x-mock-usage": "10,5"}) for gw in gws]
    # Four requests in the hour between both gateways, alternating: all pass; the fifth is refused
    # by whichever gateway gets it.
    for i in range(4):
        r = clients[i % 2].chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=20)
        assert r.headers["x-ratelimit-remaining-requests"] == str(3 - i)
    for c in clients:
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=20)
        assert e.value.code == "rate_limit_exceeded" and "per-agent" in e.value.message
    assert len(mock.state.requests) == 4
    # Settled with the reported usage (15 tokens each), not the reservations, across both.
    keys = redis.command("KEYS", "*tokens*").decode()
    key = next(l for l in keys.split("\r\n") if "tokens" in l)
    assert redis.command("GET", key).split(b"\r\n")[1] == b"60"


def test_redis_down_refuses_by_default_and_lets_through_when_configured(start_gateway, mock, upstream_ca_file, redis):
    url = f"https://127.0.0.1:{mock.port}"
    closed = start_gateway(route("llm", "/v1/", url, upstream_ca_file), extra=shared(redis.url, redis.ca_file))
    opened = start_gateway(route("llm", "/v1/", url, upstream_ca_file), extra=shared(redis.url, redis.ca_file, "allow"))
    for gw in (closed, opened):
        assert sdk(gw).chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=5).choices
    redis.stop()
    with closed.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": PROMPT, "max_tokens": 5})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "limits_unavailable" and r.headers["retry-after"] == "1"
    assert closed.wait_metric("agentgate_limits_store_errors_total", lambda v: v >= 1, outcome="refused") >= 1
    assert sdk(opened).chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=5).choices
    assert opened.wait_metric("agentgate_limits_store_errors_total", lambda v: v >= 1, outcome="allowed") >= 1
    assert len(mock.state.requests) == 3
