//! OpenTelemetry traces of exchanges (`tracing.otlp`): one server span per exchange named by the
//! GenAI semantic conventions (`chat gpt-4o`, with `gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`...), child spans
//! for the gateway's phases (`agentgate.admit`: identity, route, access; `agentgate.decide`: body,
//! masking, limits, approval wait; `agentgate.upstream`: the call, a client span), exported over
//! OTLP/HTTP (protobuf) or OTLP/gRPC by the SDK's batch processor on its own thread.
//!
//! W3C trace context: an agent's `traceparent` is continued (its span is the exchange span's
//! parent), and the upstream gets a `traceparent` naming the upstream span, so the provider's or
//! a tool server's own spans join the trace.
//!
//! Invariant: no content leaves in a span (no prompt, answer, header value or path query): only
//! the route, identity subject, model names, counts, status and timings. Ids are drawn when the
//! request arrives and the spans are written when it ends, with their real start and end times.

use crate::config::TracingConfig;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::SystemTime;

static PROVIDER: OnceLock<(SdkTracerProvider, opentelemetry_sdk::trace::SdkTracer)> =
    OnceLock::new();

/// Starts the exporter (once, at start-up).
pub fn init(c: &TracingConfig) -> Result<(), String> {
    crate::limits::redis_store::install_crypto_provider();
    let ca = match &c.ca_file {
        Some(ca) => Some(
            std::fs::read(ca).map_err(|e| format!("tracing.otlp.ca_file {}: {e}", ca.display()))?,
        ),
        None => None,
    };
    fn batch<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
        e: E,
        every: std::time::Duration,
    ) -> BatchSpanProcessor {
        BatchSpanProcessor::builder(e)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(every)
                    .build(),
            )
            .build()
    }
    let processor = if c.grpc {
        batch(GrpcExporter::new(c, ca)?, c.flush_interval)
    } else {
        batch(http_exporter(c, ca)?, c.flush_interval)
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(c.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("agentgate");
    let _ = PROVIDER.set((provider, tracer));
    Ok(())
}

/// OTLP/HTTP (protobuf) to `endpoint/v1/traces`, with reqwest's blocking client.
fn http_exporter(
    c: &TracingConfig,
    ca: Option<Vec<u8>>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let mut client =
        reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = ca {
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("tracing.otlp.ca_file: {e}"))?;
        client = client.add_root_certificate(cert);
    }
    // reqwest's blocking client owns a runtime of its own: it is built off the async threads.
    let client = std::thread::spawn(move || client.build())
        .join()
        .map_err(|_| "tracing: the HTTP client could not be built".to_string())?
        .map_err(|e| format!("tracing: {e}"))?;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", c.endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| format!("tracing.otlp: {e}"))
}

/// OTLP/gRPC (`TraceService/Export`) with tonic. tonic's channel lives on a one-thread tokio
/// runtime of its own: the batch processor's thread is not a tokio thread, so each export is
/// spawned there and its result awaited.
#[derive(Debug)]
struct GrpcExporter {
    inner: std::sync::Arc<opentelemetry_otlp::SpanExporter>,
    rt: std::sync::Arc<tokio::runtime::Runtime>,
}

impl GrpcExporter {
    fn new(c: &TracingConfig, ca: Option<Vec<u8>>) -> Result<GrpcExporter, String> {
        use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
        use tonic::transport::{Certificate, ClientTlsConfig};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-grpc")
            .enable_all()
            .build()
            .map_err(|e| format!("tracing: {e}"))?;
        let _in_rt = rt.enter();
        let mut b = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(c.endpoint.trim_end_matches('/'))
            .with_timeout(std::time::Duration::from_secs(10));
        if c.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = ca {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            b = b.with_tls_config(tls);
        }
        let inner = b.build().map_err(|e| format!("tracing.otlp: {e}"))?;
        drop(_in_rt);
        Ok(GrpcExporter {
            inner: std::sync::Arc::new(inner),
            rt: std::sync::Arc::new(rt),
        })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for GrpcExporter {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let call = self.rt.spawn(async move { inner.export(batch).await });
        async move {
            call.await.unwrap_or_else(|e| {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    e.to_string(),
                ))
            })
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called when the provider is built, before any export holds a clone.
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Writes what is queued (drain).
pub fn flush() {
    if let Some((p, _)) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// One exchange's place in a trace, drawn when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    /// The exchange's (server) span.
    pub span_id: [u8; 8],
    /// The upstream call's (client) span, named in the upstream's `traceparent`.
    pub upstream_span_id: [u8; 8],
    /// The agent's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = boring::rand::rand_bytes(&mut b);
    b
}

impl TraceIds {
    /// New ids, continuing the agent's `traceparent` when it sent a valid one.
    pub fn start(traceparent: Option<&str>) -> TraceIds {
        let parsed = traceparent.and_then(parse_traceparent);
        TraceIds {
            trace_id: parsed.map_or_else(random, |p| p.0),
            span_id: random(),
            upstream_span_id: random(),
            parent: parsed.map(|p| p.1),
            sampled: parsed.is_none_or(|p| p.2),
        }
    }

    /// The `traceparent` the upstream gets: this trace, the upstream span.
    pub fn upstream_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            crate::util::hex::hex(&self.trace_id),
            crate::util::hex::hex(&self.upstream_span_id),
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>` (W3C Trace Context, version 00 and
/// later versions read as 00); all-zero ids are invalid.
pub fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    if parts.len() < 4 || parts[0].len() != 2 || parts[0] == "ff" {
        return None;
    }
    if parts[0] == "00" && parts.len() != 4 {
        return None;
    }
    let hex = |h: &str, n: usize| -> Option<Vec<u8>> {
        (h.len() == n * 2
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| decode_hex(h))
    };
    let trace: [u8; 16] = hex(parts[1], 16)?.try_into().ok()?;
    let span: [u8; 8] = hex(parts[2], 8)?.try_into().ok()?;
    let flags = hex(parts[3], 1)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0] & 1 == 1))
}

fn decode_hex(h: &str) -> Vec<u8> {
    h.as_bytes()
        .chunks(2)
        .map(|p| {
            let v = |c: u8| {
                if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                }
            };
            v(p[0]) << 4 | v(p[1])
        })
        .collect()
}

/// What the exchange span says, gathered when the exchange ends.
pub struct ExchangeSpan<'a> {
    pub ids: TraceIds,
    pub started: SystemTime,
    pub admitted: Option<SystemTime>,
    pub decided: Option<SystemTime>,
    pub upstream_sent: Option<SystemTime>,
    pub upstream_first_byte: Option<SystemTime>,
    pub ended: SystemTime,
    pub route: Option<&'a str>,
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    pub status: u16,
    pub subject: Option<&'a str>,
    pub request_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub max_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub error: Option<&'a str>,
    pub upstream_host: Option<&'a str>,
}

/// The GenAI operation a path is (`None`: not a model call).
pub fn operation(path: &str) -> Option<&'static str> {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") || p.ends_with("/messages") || p.ends_with("/responses") {
        Some("chat")
    } else if p.ends_with("/embeddings") {
        Some("embeddings")
    } else if p.ends_with("/completions") {
        Some("text_completion")
    } else {
        None
    }
}

/// Writes the exchange's spans (nothing when tracing is off or the agent's trace is unsampled).
pub fn record(s: &ExchangeSpan<'_>) {
    let Some((_, tracer)) = PROVIDER.get() else {
        return;
    };
    if !s.ids.sampled {
        return;
    }
    let trace_id = TraceId::from_bytes(s.ids.trace_id);
    let parent_cx = match s.ids.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(p),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let op = operation(s.path);
    let provider = if s.path.trim_end_matches('/').ends_with("/messages") {
        "anthropic"
    } else {
        "openai"
    };
    let name = match (op, s.request_model) {
        (Some(op), Some(m)) => format!("{op} {m}"),
        (Some(op), None) => op.to_string(),
        (None, _) => format!("{} {}", s.method, s.route.unwrap_or("unrouted")),
    };
    let mut attrs = vec![
        KeyValue::new("http.request.method", s.method.to_string()),
        KeyValue::new("http.response.status_code", i64::from(s.status)),
        KeyValue::new("url.path", s.path.to_string()),
    ];
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            attrs.push(KeyValue::new(k, v));
        }
    };
    put("agentgate.route", s.route.map(str::to_string));
    put("enduser.id", s.subject.map(str::to_string));
    put("error.type", s.error.map(str::to_string));
    if let Some(op) = op {
        put("gen_ai.operation.name", Some(op.to_string()));
        put("gen_ai.provider.name", Some(provider.to_string()));
        put("gen_ai.request.model", s.request_model.map(str::to_string));
        put(
            "gen_ai.response.model",
            s.response_model.map(str::to_string),
        );
    }
    for (k, v) in [
        ("gen_ai.request.max_tokens", s.max_tokens),
        ("gen_ai.usage.input_tokens", s.input_tokens),
        ("gen_ai.usage.output_tokens", s.output_tokens),
    ] {
        if let Some(v) = v {
            attrs.push(KeyValue::new(k, i64::try_from(v).unwrap_or(i64::MAX)));
        }
    }
    let mut builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(s.started)
        .with_attributes(attrs);
    builder.trace_id = Some(trace_id);
    builder.span_id = Some(SpanId::from_bytes(s.ids.span_id));
    if s.status >= 500 || s.status == 0 {
        builder = builder.with_status(Status::error(s.error.unwrap_or("no response").to_string()));
    }
    let mut span = tracer.build_with_context(builder, &parent_cx);
    let exchange_cx = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_bytes(s.ids.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ));
    let child = |name: &str,
                 kind: SpanKind,
                 id: Option<[u8; 8]>,
                 from: SystemTime,
                 to: SystemTime,
                 attrs: Vec<KeyValue>| {
        let mut b = tracer
            .span_builder(name.to_string())
            .with_kind(kind)
            .with_start_time(from)
            .with_attributes(attrs);
        if let Some(id) = id {
            b.span_id = Some(SpanId::from_bytes(id));
        }
        let mut c = tracer.build_with_context(b, &exchange_cx);
        use opentelemetry::trace::Span as _;
        c.end_with_timestamp(to);
    };
    if let Some(a) = s.admitted {
        child(
            "agentgate.admit",
            SpanKind::Internal,
            None,
            s.started,
            a,
            Vec::new(),
        );
        if let Some(d) = s.decided.filter(|d| *d > a) {
            child(
                "agentgate.decide",
                SpanKind::Internal,
                None,
                a,
                d,
                Vec::new(),
            );
        }
    }
    if let Some(sent) = s.upstream_sent {
        let mut attrs = vec![KeyValue::new(
            "http.response.status_code",
            i64::from(s.status),
        )];
        if let Some(h) = s.upstream_host {
            attrs.push(KeyValue::new("server.address", h.to_string()));
        }
        if let Some(fb) = s.upstream_first_byte {
            attrs.push(KeyValue::new(
                "agentgate.upstream.ttfb_ms",
                fb.duration_since(sent).unwrap_or_default().as_secs_f64() * 1000.0,
            ));
        }
        child(
            "agentgate.upstream",
            SpanKind::Client,
            Some(s.ids.upstream_span_id),
            sent,
            s.ended,
            attrs,
        );
    }
    use opentelemetry::trace::Span as _;
    span.end_with_timestamp(s.ended);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_strictly_and_written_for_the_upstream_span() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(ok).expect("valid");
        assert_eq!(
            crate::util::hex::hex(&t),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(crate::util::hex::hex(&s), "00f067aa0ba902b7");
        assert!(sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some_and(|p| !p.2)
        );
        let ids = TraceIds::start(Some(ok));
        assert_eq!(ids.trace_id, t);
        assert_eq!(ids.parent, Some(s));
        let up = ids.upstream_traceparent();
        let (t2, s2, _) = parse_traceparent(&up).unwrap();
        assert_eq!((t2, s2), (t, ids.upstream_span_id));
        assert_ne!(ids.upstream_span_id, ids.span_id);
        let fresh = TraceIds::start(Some("garbage"));
        assert_eq!(fresh.parent, None);
        assert!(fresh.sampled);
    }

    #[test]
    fn operations_by_path() {
        for (p, want) in [
            ("/v1/chat/completions", Some("chat")),
            ("/v1/responses", Some("chat")),
            ("/v1/messages", Some("chat")),
            ("/v1/embeddings", Some("embeddings")),
            ("/v1/completions", Some("text_completion")),
            ("/v1/models", None),
        ] {
            assert_eq!(operation(p), want, "{p}");
        }
    }
}
