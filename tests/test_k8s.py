"""The Kubernetes manifests stay true to the code: every file parses, the ConfigMap's
agentgate.yaml passes `agentgate check`, and the dashboard only queries metrics the gateway
exports (and the README lists)."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from gateway_driver import BINARY, ROOT, eventually
from gwconfig import route

K8S = ROOT / "k8s"


def merge(base, patch):
    """Strategic merge as kustomize applies it to our patches: maps merge, lists of named items
    merge by name (new ones first, in the patch's order), anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        by_name = {i["name"]: i for i in base}
        out = [merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch]
        return out + [i for i in base if i["name"] not in {p["name"] for p in patch}]
    return patch


def render(d) -> list[dict]:
    """A small kustomize: resources (files and directories), configMapGenerator, patches."""
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for r in k.get("resources", []):
        p = (d / r).resolve()
        docs += render(p) if p.is_dir() else [x for x in yaml.safe_load_all(p.read_text()) if x]
    for g in k.get("configMapGenerator", []):
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"], "labels": g.get("options", {}).get("labels", {})},
                     "data": {f: (d / f).read_text() for f in g.get("files", [])}})
    for p in k.get("patches", []):
        patch = yaml.safe_load((d / p["path"]).read_text())
        for i, doc in enumerate(docs):
            if doc["kind"] == patch["kind"] and doc["metadata"]["name"] == patch["metadata"]["name"]:
                docs[i] = merge(doc, patch)
    return docs


KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(tmp_path):
    import kubernetes_validate

    assert {p.name for p in KUSTOMIZATIONS} >= {"base", "egress-lock", "egress-gateway", "monitoring", "cert-manager"}
    for d in KUSTOMIZATIONS:
        docs = render(d)
        assert docs, d
        for doc in docs:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                # A Prometheus Operator CRD: no schema in the Kubernetes set.
                assert doc["kind"] == "PodMonitor" and doc["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
                continue
            if doc["apiVersion"] == "cert-manager.io/v1":
                # cert-manager CRDs: no schema in the Kubernetes set; checked for shape below.
                assert doc["kind"] in ("Issuer", "Certificate") and doc["spec"], doc
                continue
            kubernetes_validate.validate(doc, "1.31", strict=True)
            if doc["kind"] == "ConfigMap" and "agentgate.yaml" in doc.get("data", {}):
                conf = tmp_path / f"{d.name}-{doc['metadata']['name']}.yaml"
                conf.write_text(doc["data"]["agentgate.yaml"])
                out = subprocess.run([str(BINARY), "check", "--skip-secrets", "--config", str(conf)], capture_output=True, text=True, timeout=30)
                assert out.returncode == 0, (d, out.stderr)


def test_sidecar_shape():
    [dep] = [x for x in render(K8S / "overlays" / "egress-lock") if x["kind"] == "Deployment"]
    spec = dep["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    assert inits["agentgate"]["restartPolicy"] == "Always", "agentgate must be a native sidecar"
    assert "--uid-owner 10001" in inits["egress-lock"]["args"][0] and spec["securityContext"]["runAsUser"] == 10001
    assert inits["agentgate"]["securityContext"]["readOnlyRootFilesystem"] is True
    agent = spec["containers"][0]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"} in agent["env"]
    mounts = {m["name"] for m in agent.get("volumeMounts", [])}
    assert "gateway-secrets" not in mounts, "the agent must not see the provider key"


def test_dashboard_uses_real_metric_names(start_gateway, mock, upstream_ca_file):
    dash = json.loads((K8S / "overlays" / "monitoring" / "agentgate-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"agentgate_[a-z_]+", e)}
    policy = {
        "masking": {"policies": {"default": {"request": {"pii": "pseudonymize"}}}},
        "guardrails": [{"name": "g", "direction": "request", "detectors": ["private_key"]}],
        "approvals": [{"name": "hold", "when": {"headers": {"x-hold": {"exists": True}}}, "approvers": {"groups": ["sec"]}, "timeout": "1s"}],
        "limits": [{"name": "l", "per": "identity", "requests": {"per": "1h", "max": 1000}, "tokens": {"per": "1h", "max": 10**9}, "cut_streams": True}],
    }
    gw = start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, masking="default", guardrails=["g"], approvals=["hold"]),
                       extra=policy)
    with gw.client() as c:
        c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "a@b.example.com"}]})
        c.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        c.get("/nowhere")  # an error the gateway answers itself
        assert c.post("/v1/chat/completions", json={}, headers={"x-hold": "1"}).status_code == 403  # an approval expires
    import socket

    with socket.create_connection(("127.0.0.1", gw.port)) as s:  # a failed TLS handshake
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        s.recv(100)
    # Some families appear only once the gateway has logged the exchanges or the handshake; the
    # shared store's only with store.postgres (test_shared_store.py checks those).
    expected = {m for m in used if not m.startswith("agentgate_store_")} - {"agentgate_jwks_refresh_total"}
    exported = eventually(lambda: set(re.findall(r"^# TYPE (agentgate_[a-z_]+)", gw.metrics(), re.M)), lambda e: e >= expected)
    readme = (ROOT / "README.md").read_text()
    for m in sorted(used):
        assert m in readme, f"{m} is not documented"
        if m in expected:  # jwks: exported once an OIDC issuer is configured
            assert m in exported, f"{m} is not exported"


def test_egress_gateway_replicas_share_a_mounted_certificate_cert_manager_can_issue():
    docs = render(K8S / "overlays" / "cert-manager")
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and "agentgate.yaml" in d.get("data", {})]
    conf = yaml.safe_load(cm["data"]["agentgate.yaml"])
    tls = conf["listeners"][0]["tls"]
    # Two replicas each generating a certificate could not be trusted as one: the listener uses
    # the mounted Secret, and that Secret is what the Certificate writes.
    assert dep["spec"]["replicas"] >= 2 and "names" not in tls
    assert tls["cert"].startswith(mounts["tls"] + "/") and tls["key"].startswith(mounts["tls"] + "/")
    certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    serving = certs["agentgate-tls"]["spec"]
    assert serving["secretName"] == secrets["tls"] == "agentgate-tls"
    [svc] = [d for d in docs if d["kind"] == "Service"]
    assert svc["metadata"]["name"] in serving["dnsNames"]
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    assert serving["issuerRef"]["name"] in issuers and certs["agentgate-ca"]["spec"]["issuerRef"]["name"] in issuers
