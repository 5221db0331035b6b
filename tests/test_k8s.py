"""The Kubernetes manifests stay true to the code: every file parses, the ConfigMap's
agentgate.yaml passes `agentgate check`, and the dashboard only queries metrics the gateway
exports (and the README lists)."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from conftest import BINARY, DEFAULT_IDENTITY, ROOT, route_yaml

K8S = ROOT / "k8s"


def test_manifests_parse():
    files = sorted(K8S.rglob("*.yaml"))
    assert files
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert docs, f
        for d in docs:
            assert "apiVersion" in d and "kind" in d, f


def test_configmap_config_is_valid(tmp_path):
    cm = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())
    conf = tmp_path / "agentgate.yaml"
    conf.write_text(cm["data"]["agentgate.yaml"])
    out = subprocess.run([str(BINARY), "check", "--skip-secrets", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_dashboard_uses_real_metric_names(start_gateway, mock, upstream_ca_file):
    dash = json.loads((K8S / "overlays" / "monitoring" / "agentgate-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"agentgate_[a-z_]+", e)}
    policy = (
        "masking:\n  policies:\n    default:\n      request: { pii: pseudonymize }\n"
        "guardrails:\n  - { name: g, direction: request, detectors: [private_key] }\n"
    )
    gw = start_gateway(route_yaml("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file) + "    masking: default\n    guardrails: [g]\n",
                       identity=DEFAULT_IDENTITY + policy)
    with gw.client() as c:
        c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "a@b.example.com"}]})
        c.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        c.get("/nowhere")  # an error the gateway answers itself
    import socket
    import time

    with socket.create_connection(("127.0.0.1", gw.port)) as s:  # a failed TLS handshake
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        s.recv(100)
    time.sleep(0.3)
    exported = set(re.findall(r"^# TYPE (agentgate_[a-z_]+)", gw.metrics(), re.M))
    readme = (ROOT / "README.md").read_text()
    for m in sorted(used):
        assert m in readme, f"{m} is not documented"
        if m != "agentgate_jwks_refresh_total":  # exported once an OIDC issuer is configured
            assert m in exported, f"{m} is not exported"
