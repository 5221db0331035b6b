"""The sidecar pod, played with network namespaces: a "pod" namespace holds the gateway (as the
UID the manifests give it) and an agent process (as the agent container's UID); a second
namespace plays the internet with the upstream on it, joined by a veth pair. Addresses are all in
the loopback range (127.77.0.0/24, with route_localnet). The egress rules are the ones the
egress-lock overlay's init container runs, taken from the rendered manifest. Needs root."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import httpx
import pytest

from gateway_driver import BINARY
from gwconfig import AGENT_TOKEN, gateway_config, route
from gwconfig import render as render_config
from net import free_port, server_ctx
from mock_upstream import MockServer
from test_k8s import K8S, render

POD_ADDR, NET_ADDR = "127.77.0.1", "127.77.0.2"
CLONE_NEWNET = 0x40000000

if os.geteuid() != 0 and not os.environ.get("CI"):
    pytest.skip("network namespaces need root (CI runs this test as root)", allow_module_level=True)


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30, **kw)


@contextlib.contextmanager
def netns(name: str):
    """Runs the block in network namespace `name` (this thread only): sockets made inside stay
    there."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)
        os.close(target)


def owned_dir(uid: int) -> pathlib.Path:
    """A working directory the gateway's UID owns, outside paths only root may enter."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentgate-netns-"))
    os.chmod(d, 0o755)
    os.chown(d, uid, uid)
    return d


def uid_of(container: dict, pod: dict) -> int:
    return container.get("securityContext", {}).get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))


@pytest.fixture
def pod():
    """Two namespaces joined by a veth pair; deleted (with the pair) afterwards."""
    tag = f"{os.getpid() % 100000}"
    pod_ns, net_ns = f"agpod{tag}", f"agnet{tag}"
    sh("ip", "netns", "add", pod_ns)
    sh("ip", "netns", "add", net_ns)
    try:
        sh("ip", "link", "add", f"vp{tag}", "type", "veth", "peer", "name", f"vn{tag}")
        sh("ip", "link", "set", f"vp{tag}", "netns", pod_ns)
        sh("ip", "link", "set", f"vn{tag}", "netns", net_ns)
        for ns, dev, addr in ((pod_ns, f"vp{tag}", POD_ADDR), (net_ns, f"vn{tag}", NET_ADDR)):
            # 127.0.0.1 alone on lo, so the rest of 127/8 can be routed over the veth.
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
            sh("ip", "-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", f"net.ipv4.conf.{dev}.route_localnet=1")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield pod_ns, net_ns
    finally:
        subprocess.run(["ip", "netns", "del", pod_ns], check=False)
        subprocess.run(["ip", "netns", "del", net_ns], check=False)


def as_agent(pod_ns: str, uid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", pod_ns, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *cmd],
        capture_output=True, text=True, timeout=30,
    )


def test_egress_lock_lets_only_the_gateway_leave_the_pod(pod, upstream_ca, upstream_ca_file):
    pod_ns, net_ns = pod
    [dep] = [d for d in render(K8S / "overlays" / "egress-lock") if d["kind"] == "Deployment"]
    spec = dep["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    rules = inits["egress-lock"]["args"][0]
    gw_uid, agent_uid = uid_of(inits["agentgate"], spec), uid_of(spec["containers"][0], spec)
    assert gw_uid and agent_uid and gw_uid != agent_uid, "the agent must not run as the gateway's UID"

    with netns(net_ns):
        upstream = MockServer(server_ctx(upstream_ca, NET_ADDR), host=NET_ADDR).start()
    work = owned_dir(gw_uid)
    gw = None
    try:
        # The agent's direct path works before the lock: the namespaces are wired right.
        direct = ["curl", "-sS", "-m", "5", "--cacert", str(work / "upstream-ca.pem"), "-o", "/dev/null", "-w", "%{http_code}",
                  f"https://{NET_ADDR}:{upstream.port}/v1/models"]
        shutil.copy(upstream_ca_file, work / "upstream-ca.pem")
        os.chmod(work / "upstream-ca.pem", 0o644)
        before = as_agent(pod_ns, agent_uid, *direct)
        assert before.stdout == "200", before
        seen = len(upstream.state.requests)

        sh("ip", "netns", "exec", pod_ns, "sh", "-ec", rules)

        # Now the agent cannot open a connection that leaves the pod...
        blocked = as_agent(pod_ns, agent_uid, *direct)
        assert blocked.returncode == 7 and "failed to connect" in blocked.stderr.lower(), blocked  # rejected at once
        assert len(upstream.state.requests) == seen

        # ...but the gateway, as its own UID in the same pod, can, and the agent reaches it on loopback.
        port, admin = free_port(), free_port()
        binary = work / "agentgate"
        shutil.copy(BINARY, binary)
        config = gateway_config(port, admin, route("upstream", "/v1/", f"https://{NET_ADDR}:{upstream.port}", work / "upstream-ca.pem"))
        config["server"] = {"state_dir": "./var", "threads": 1}
        (work / "agentgate.yaml").write_text(render_config(config))
        gw = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, "setpriv", f"--reuid={gw_uid}", f"--regid={gw_uid}", "--clear-groups", "--",
             str(binary), "run", "--config", str(work / "agentgate.yaml")],
            cwd=work, env=dict(os.environ, ROUTE_KEY="sk-route-secret"), stdout=open(work / "out.log", "wb"), stderr=open(work / "err.log", "wb"),
        )
        with netns(pod_ns):
            deadline = time.monotonic() + 30
            while True:
                assert gw.poll() is None, (work / "err.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (work / "err.log").read_text()
                time.sleep(0.1)
        through = as_agent(
            pod_ns, agent_uid, "curl", "-sS", "-m", "10", "--cacert", str(work / "var" / "tls" / "ca.pem"),
            "-H", f"Authorization: Bearer {AGENT_TOKEN}", "-H", "Content-Type: application/json",
            "-d", '{"model":"m","messages":[{"role":"user","content":"hi"}]}',
            f"https://127.0.0.1:{port}/v1/chat/completions",
        )
        assert through.returncode == 0 and '"chat.completion"' in through.stdout, through
        assert len(upstream.state.requests) == seen + 1
        assert upstream.state.last["headers"]["authorization"] == "Bearer sk-route-secret"
    finally:
        if gw is not None:
            gw.terminate()
            try:
                gw.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)

