"""Fixtures: a TLS mock upstream with its own CA (trustme) and the real agentgate binary
started on loopback with ephemeral ports and a temporary state directory.

What the fixtures are built from has its own home: configurations in gwconfig.py, the gateway
process in gateway_driver.py, sockets and TLS in net.py, the upstream in mock_upstream.py."""

from __future__ import annotations

import pathlib

import pytest
import trustme

from gateway_driver import Gateway
from gwconfig import REDACT_POLICY, gateway_config, route
from mock_upstream import MockServer
from net import free_port, server_ctx


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def upstream_ca_file(upstream_ca, tmp_path_factory) -> pathlib.Path:
    p = tmp_path_factory.mktemp("upstream-ca") / "ca.pem"
    upstream_ca.cert_pem.write_to_path(str(p))
    return p


@pytest.fixture
def mock(upstream_ca):
    srv = MockServer(server_ctx(upstream_ca)).start()
    yield srv
    srv.state.release.set()
    srv.stop()


@pytest.fixture
def start_gateway(tmp_path):
    """Starts gateways on `gateway_config(...)` with fresh ports and state directories (the
    keyword arguments are gateway_config's); stops them all at the end of the test."""
    started: list[Gateway] = []

    def start(routes, wait_ready: bool = True, preexec=None, admin_port: int | None = None, port: int | None = None,
              **config) -> Gateway:
        port, admin_port = port or free_port(), admin_port or free_port()
        state = tmp_path / f"gw{len(started)}"
        state.mkdir()
        gw = Gateway(gateway_config(port, admin_port, routes, **config), state, port, admin_port, wait_ready=wait_ready, preexec=preexec)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(start_gateway, mock, upstream_ca_file) -> Gateway:
    """A gateway with one route, `/v1/` -> the mock, injecting ROUTE_KEY."""
    return start_gateway(route("mock", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file))


@pytest.fixture
def plain_and_masked(start_gateway, mock, upstream_ca_file):
    """Starts two gateways with one route `up` (/v1/ -> the mock, with `route_fields`): one
    streams bodies through, the other masks them with REDACT_POLICY."""

    def start(**route_fields) -> tuple[Gateway, Gateway]:
        url = f"https://127.0.0.1:{mock.port}"
        plain = start_gateway(route("up", "/v1/", url, upstream_ca_file, **route_fields))
        masked = start_gateway(route("up", "/v1/", url, upstream_ca_file, masking="default", **route_fields), extra=REDACT_POLICY)
        return plain, masked

    return start
