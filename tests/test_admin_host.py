"""DNS rebinding against the admin listener (issue 29): a page on another site rebinds its own
name to 127.0.0.1 and reads `/metrics` (or `/readyz`) through the victim's browser, which sends
that name as `Host`. The listener answers its own names only; on da8353c it answered any Host
(200 with the metrics)."""

import httpx


def test_the_admin_listener_refuses_names_it_was_not_given(gateway):
    base = f"http://127.0.0.1:{gateway.admin_port}"
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200
    ok = httpx.get(f"{base}/metrics", headers={"Host": f"localhost:{gateway.admin_port}"}, timeout=5)
    assert ok.status_code == 200 and "agentgate_requests_total" in ok.text
    for path in ("/metrics", "/readyz", "/v1/sessions"):
        r = httpx.get(f"{base}{path}", headers={"Host": f"rebind.attacker.example:{gateway.admin_port}"}, timeout=5)
        assert r.status_code == 421, (path, r.status_code)
        assert "agentgate_" not in r.text
