"""The binary's command line: `check` and `run` refuse unsafe configurations with the file,
line and column; `check` accepts every bundled config; `--version` answers."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

from gateway_driver import BINARY, ROOT
from net import free_port

GOOD = """\
server: { state_dir: ./var }
listeners:
  - { name: agents, address: "127.0.0.1:PORT", tls: {} }
admin: { address: "127.0.0.1:ADMIN" }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    upstream:
      url: https://api.openai.com
    access: { groups: [agents] }
identity:
  service_accounts:
    - { name: ci, token_sha256: 52429752765c16a4897560e0f4b0a373ee9dfab7da0c8ca37a09c9e62cccd576, groups: [agents] }
"""


def good() -> str:
    return GOOD.replace("PORT", str(free_port())).replace("ADMIN", str(free_port()))

# (replace this, with that, expected message fragment, expected line)
REFUSALS = [
    ("url: https://api.openai.com", "url: http://api.openai.com", "plaintext http://", 9),
    ("url: https://api.openai.com", "url: http://192.168.1.10\n      allow_plaintext_loopback: true", "only to 127.0.0.0/8 or ::1", 9),
    ("url: https://api.openai.com", "url: https://api.openai.com\n      verify: false", "cannot be disabled", 10),
    ("url: https://api.openai.com", 'url: https://api.openai.com\n      min_tls_version: "1.0"', "minimum is 1.2", 10),
    ('tls: {} }', "tls: { min_tls_version: 1.1 } }", "minimum is 1.2", 3),
    ('address: "127.0.0.1:PORT", tls: {} }', 'address: "0.0.0.0:PORT" }', "plaintext is allowed only on loopback", 3),
    ('url: https://api.openai.com', "url: https://api.openai.com\n      pins: []", "unknown field `pins`", 10),
    ("match: { path_prefix: /v1/ }", "match: { path_prefix: /v1/, hots: x }", "unknown field `hots`", 7),
    ("routes:", "routez:", "unknown field `routez`", 5),
    ("    access: { groups: [agents] }\n", "", "has no `access` rule", 6),
    ("token_sha256: 5242", "token_sha256: x5242", "64 hex digits", 13),
    ("access: { groups: [agents] }", "access: { groups: [agents], any_authenticated: true }", "exactly one of", 10),
    ("url: https://api.openai.com", "url: https://api.openai.com\n    credentials:\n      set_headers: { Authorization: \"Bearer ${env:AGENTGATE_SURELY_UNSET}\" }", "AGENTGATE_SURELY_UNSET", 11),
]


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    p = tmp_path / "agentgate.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("old,new,fragment,line", REFUSALS, ids=[r[2] for r in REFUSALS])
def test_check_and_run_refuse(tmp_path, old, new, fragment, line):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1).replace("PORT", str(free_port())).replace("ADMIN", str(free_port())))
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert fragment in out.stderr, out.stderr
    m = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): ", out.stderr)
    assert m, f"no file:line:col in {out.stderr!r}"
    assert int(m.group(1)) == line, out.stderr
    run = subprocess.run([str(BINARY), "run", "--config", str(path)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert run.returncode != 0
    assert fragment in run.stderr


def test_check_accepts_the_good_config(tmp_path):
    path = write(tmp_path, good())
    out = subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ok (1 listener(s), 1 route(s))" in out.stdout


@pytest.mark.parametrize("conf", sorted((ROOT / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_configs_check(conf):
    if conf.name == "demo.yaml":
        # It names files `make demo` makes (a CA, tokens): checked whole, with them in place.
        import sys

        out = subprocess.run([sys.executable, str(ROOT / "demo" / "run.py"), "--check-config"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "conf/demo.yaml: ok" in out.stdout, out.stderr
        return
    out = subprocess.run([str(BINARY), "check", "--skip-secrets", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_version():
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("agentgate ")


def test_config_from_environment(tmp_path):
    import os

    path = write(tmp_path, good())
    out = subprocess.run([str(BINARY), "check"], capture_output=True, text=True, timeout=30, env=dict(os.environ, AGENTGATE_CONFIG=str(path)))
    assert out.returncode == 0, out.stderr
