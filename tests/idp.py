"""A test-controlled OpenID issuer over TLS: discovery, a JWKS whose keys the test rotates, and
a switch that takes it down. Tokens are signed here with PyJWT, so every claim and header can
be bent the way an attacker or a misconfigured IdP would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ControlledIdP:
    def __init__(self, ssl_ctx: ssl.SSLContext, audience: str = "agentgate") -> None:
        self.audience = audience
        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.down = False
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if idp.down:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    idp.discovery_fetches += 1
                    body = idp.discovery()
                elif self.path == "/jwks":
                    idp.jwks_fetches += 1
                    body = idp.jwks()
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ssl_ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "ControlledIdP":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
        }

    def add_key(self, kid: str, alg: str = "RS256", publish: bool = True) -> None:
        if alg.startswith(("RS", "PS")):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = (alg, key)
        if publish:
            self.published.append(kid)

    def jwk(self, kid: str) -> dict:
        alg, key = self.keys[kid]
        algo = jwt.get_algorithm_by_name(alg)
        d = algo.to_jwk(key.public_key(), as_dict=True)
        d.update(kid=kid, use="sig", alg=alg)
        return d

    def jwks(self) -> dict:
        return {"keys": [self.jwk(k) for k in self.published]}

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, **over) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "aud": self.audience, "sub": "agent-1", "iat": now, "exp": now + 300, "groups": ["agents"]}
        for k, v in over.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    def token(self, kid: str, headers: dict | None = None, signer: str | None = None, **over) -> str:
        """An access token (RFC 9068: `typ: at+jwt`) signed with key `kid` (or with `signer`'s key
        while claiming `kid`). `headers={"typ": "JWT"}` makes it look like an ID token's header,
        `headers={"typ": None}` leaves `typ` out."""
        alg, key = self.keys[signer or kid]
        headers = {"kid": kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(self.claims(**over), key, algorithm=alg, headers=headers)

    def id_token(self, kid: str, **over) -> str:
        """An ID token as an OpenID provider hands a client at sign-in: `typ: JWT`, a `nonce`,
        `at_hash`, and the same issuer, audience, subject and groups as an access token."""
        over = {"nonce": "n-0S6_WzA2Mj", "at_hash": "77QmUPtjPfzWtF2AnpK9RQ", "auth_time": int(time.time()), **over}
        return self.token(kid, headers={"typ": "JWT"}, **over)

    def unsigned_token(self, **over) -> str:
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(self.claims(**over)).encode())}."

    def hs256_with_public_key(self, kid: str, **over) -> str:
        """The algorithm-confusion attack: HMAC keyed with the issuer's published RSA key."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = b64url(json.dumps(self.claims(**over)).encode())
        mac = hmac.new(self.public_pem(kid), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(mac)}"
