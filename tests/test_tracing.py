"""OpenTelemetry: a small OTLP receiver, over HTTP/protobuf and over gRPC with TLS (the
`opentelemetry-proto` package decodes what the gateway exports; `grpcio` serves the collector's
TraceService), gets one span per exchange with the GenAI attributes, child spans for the
gateway's phases, the agent's trace continued, and the upstream saw the propagated traceparent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway_driver import eventually
from gwconfig import route
from test_usage import PROMPT, sdk


class Collector(ThreadingHTTPServer):
    """Receives OTLP/HTTP protobuf exports on loopback; `spans` are (name, span, attributes)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object, dict]] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                with collector.lock:
                    collector.paths.add(self.path)
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                                collector.spans.append((s.name, s, attrs))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """The collector's OTLP/gRPC TraceService on loopback, over TLS with a certificate of `ca`."""

    def __init__(self, ca) -> None:
        from concurrent import futures

        self.spans: list[tuple[str, object, dict]] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        cert = ca.issue_cert("127.0.0.1")
        creds = grpc.ssl_server_credentials([(cert.private_key_pem.bytes(), b"".join(b.bytes() for b in cert.cert_chain_pems))])
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def Export(self, request, context):  # noqa: N802 (the service's method name)
        with self.lock:
            self.paths.add("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                        self.spans.append((s.name, s, attrs))
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def shutdown(self) -> None:
        self.server.stop(0)


@pytest.fixture(params=["http", "grpc"])
def collector(request, upstream_ca):
    c = Collector() if request.param == "http" else GrpcCollector(upstream_ca)
    c.protocol = request.param
    yield c
    c.shutdown()


def test_exchanges_are_traced_with_genai_attributes_phases_and_propagation(start_gateway, mock, upstream_ca_file, collector):
    otlp = {"endpoint": collector.url, "flush_interval": "200ms", "protocol": collector.protocol}
    if collector.protocol == "grpc":
        otlp["ca_file"] = str(upstream_ca_file)
    gw = start_gateway(route("llm", "/v1/", f"https://127.0.0.1:{mock.port}", upstream_ca_file, stream_usage=True),
                       extra={"tracing": {"otlp": otlp}})
    agent_trace, agent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client = sdk(gw, headers={"x-mock-usage": "21,8", "traceparent": f"00-{agent_trace}-{agent_span}-01"})
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "xyzzy plugh"}], max_tokens=50)
    sent = mock.state.last["headers"]["traceparent"]
    _, up_trace, up_span, flags = sent.split("-")
    assert up_trace == agent_trace and flags == "01", sent

    spans = eventually(lambda: list(collector.spans), lambda s: len(s) >= 4)
    want_path = "/v1/traces" if collector.protocol == "http" else "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert collector.paths == {want_path}
    by_name = {name: (s, a) for name, s, a in spans}
    exchange, attrs = by_name["chat gpt-4o"]
    assert exchange.trace_id.hex() == agent_trace and exchange.parent_span_id.hex() == agent_span
    assert exchange.kind == exchange.SPAN_KIND_SERVER
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o" and attrs["gen_ai.response.model"] == "gpt-4o"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (21, 8)
    assert attrs["gen_ai.request.max_tokens"] == 50 and attrs["http.response.status_code"] == 200
    assert attrs["agentgate.route"] == "llm" and attrs["enduser.id"] == "test-agent"
    for phase in ("agentgate.admit", "agentgate.decide", "agentgate.upstream"):
        span, _ = by_name[phase]
        assert span.trace_id == exchange.trace_id and span.parent_span_id == exchange.span_id, phase
        assert exchange.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano <= exchange.end_time_unix_nano
    upstream, _ = by_name["agentgate.upstream"]
    # The upstream's traceparent names the upstream span.
    assert upstream.span_id.hex() == up_span and upstream.kind == upstream.SPAN_KIND_CLIENT
    # No content: the prompt and the answer are in no attribute.
    exported = json.dumps([a for _, _, a in spans])
    assert "xyzzy" not in exported and "Hello from" not in exported

    # Without a traceparent a new trace starts, and the upstream still gets one.
    sdk(gw).chat.completions.create(model="o3", messages=PROMPT)
    fresh = mock.state.last["headers"]["traceparent"].split("-")[1]
    assert fresh != agent_trace
    spans = eventually(lambda: list(collector.spans), lambda s: any(n == "chat o3" for n, _, _ in s))
    (o3,) = [s for n, s, _ in spans if n == "chat o3"]
    assert o3.trace_id.hex() == fresh and o3.parent_span_id == b""
