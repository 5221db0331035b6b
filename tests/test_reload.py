"""Hot reload: SIGHUP or a changed file (also a ConfigMap-style symlink swap) swaps routes and
identity without a restart and without dropping a stream in flight; an invalid file keeps the
running configuration, logs the error with its line, and is counted."""

from __future__ import annotations

import os
import signal
import time

from gateway_driver import BINARY, SlowStream, eventually
from gwconfig import ROUTE_KEY, render, route


def wait_metric(gw, result: str, n: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.metric("agentgate_config_reloads_total", result=result) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"config_reloads_total{{result={result}}} did not reach {n}")


def test_sighup_and_file_changes_swap_routes_without_dropping_a_stream(start_gateway, mock, upstream_ca_file):
    up = f"https://127.0.0.1:{mock.port}"
    gw = start_gateway(route("mock", "/v1/", up, upstream_ca_file))
    new = gw.config()
    # A stream in flight while the configuration changes.
    s = SlowStream(gw, "a b c d e", 250)
    assert s.first.wait(10)
    # Add a route, and move /v1/ behind a group the caller lacks; apply with SIGHUP.
    new["routes"][0]["access"] = {"groups": ["admins"]}
    new["routes"].insert(0, route("second", "/v1/models", up, upstream_ca_file, access={"any_authenticated": True}))
    gw.write_config(new)
    gw.proc.send_signal(signal.SIGHUP)
    wait_metric(gw, "ok", 1)
    with gw.client() as c:
        assert c.get("/v1/models").status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 403 and "route `mock`" in r.text, r.text
    assert gw.wait_metric("agentgate_requests_total", 1, route="second") == 1
    s.thread.join(timeout=15)
    assert "".join(s.got) == "a b c d e", "the stream in flight was dropped by the reload"
    # An invalid file is refused with its line; the running configuration stays.
    gw.write_config(dict(new, bogus_key=1))
    wait_metric(gw, "invalid", 1)
    with gw.client() as c:
        assert c.get("/v1/models").status_code == 200
    assert gw.wait_metric("agentgate_requests_total", 2, route="second") == 2
    err = eventually(gw.stderr_path.read_text, lambda e: "config reload (file changed) refused" in e)
    assert "config reload (file changed) refused" in err and "unknown field `bogus_key`" in err and f"{gw.config_path}:" in err, err[-2000:]
    assert gw.proc.poll() is None


def test_configmap_symlink_swap_is_noticed(start_gateway, mock, upstream_ca_file):
    import subprocess

    up = f"https://127.0.0.1:{mock.port}"
    gw = start_gateway(route("mock", "/v1/", up, upstream_ca_file))
    config = gw.config()
    text = render(config)
    gw.stop()
    # Lay the file out as the kubelet does: agentgate.yaml -> ..data/agentgate.yaml, ..data -> v1.
    base = gw.state_dir / "cm"
    (base / "v1").mkdir(parents=True)
    (base / "v1" / "agentgate.yaml").write_text(text)
    os.symlink("v1", base / "..data")
    os.symlink("..data/agentgate.yaml", base / "agentgate.yaml")
    gw.proc = subprocess.Popen([str(BINARY), "run", "--config", str(base / "agentgate.yaml")], cwd=gw.state_dir, env=dict(os.environ, ROUTE_KEY=ROUTE_KEY),
                               stdout=open(gw.stdout_path, "ab"), stderr=open(gw.stderr_path, "ab"))
    gw._wait_ready()
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 200
    (base / "v2").mkdir()
    config["routes"][0]["access"] = {"groups": ["admins"]}
    (base / "v2" / "agentgate.yaml").write_text(render(config))
    os.symlink("v2", base / "..data_tmp")
    os.replace(base / "..data_tmp", base / "..data")  # the atomic swap
    wait_metric(gw, "ok", 1)
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 403
