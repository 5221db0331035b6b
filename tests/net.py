"""Sockets and TLS for tests: free ports, server TLS contexts from a test CA, raw HTTP/1.1
request heads and reading a raw response."""

from __future__ import annotations

import socket
import ssl

import trustme

from gwconfig import AGENT_TOKEN


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_ctx(ca: trustme.CA, *names: str, **kw) -> ssl.SSLContext:
    """A server TLS context with a certificate from `ca` for `names` (default 127.0.0.1, localhost)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost")), **kw).configure_cert(ctx)
    return ctx


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
