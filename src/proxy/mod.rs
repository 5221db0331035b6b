//! The `ProxyHttp` implementation: Pingora's phases, each a few lines that call into the files
//! beside this one (DESIGN.md's request-flow table; ARCHITECTURE.md has the path through them).
//!
//! | phase | file |
//! | --- | --- |
//! | `request_filter` | `request_head.rs` (admit, route, authorize), `request_body.rs` (decide the body, hold, forward), `mcp.rs` (JSON-RPC decisions) |
//! | `request_body_filter` | here: count and bound bodies that stream through |
//! | `upstream_peer`, `connected_to_upstream` | `upstream_leg.rs` |
//! | `upstream_request_filter` | `headers.rs` |
//! | `response_filter`, `response_body_filter` | `headers.rs`, `mcp.rs` (JSON-RPC messages), `response_body.rs` |
//! | `fail_to_proxy` | `error.rs` |
//! | `logging` | `exchange.rs` |
//!
//! A decided body goes upstream from this session in place of the agent's (`request_body_filter`),
//! or, when it was over Pingora's 64 KiB retry buffer, through a subrequest (`subrequest.rs`) that
//! runs these same phases with the `Exchange` moved into it; `Exchange::role` tells the two
//! sessions apart.

pub mod approval_gate;
pub mod error;
pub mod exchange;
mod headers;
mod hosted_mcp;
pub mod mcp;
pub mod metering;
mod request_body;
mod request_head;
mod response_body;
pub mod routes;
pub mod subrequest;
mod upstream_leg;

pub use routes::{build_routes, Active, ActiveConfig, RouteRuntime};

use crate::config::Config;
use crate::mask::vault::VaultStore;
use crate::metrics::{self, RouteMetrics};
use async_trait::async_trait;
use bytes::Bytes;
use error::{too_large, write_api_error, ApiError};
use exchange::{Exchange, Role};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora_prometheus::prometheus;
use response_body::ResponseBody;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    active: Arc<ActiveConfig>,
    /// `agentgate_upstream_connections_total{reused="false"|"true"}`, resolved once.
    connections: [prometheus::IntCounter; 2],
    max_body: u64,
    client_timeout: Duration,
    unmatched: RouteMetrics,
    vaults: VaultStore,
    recorder: Option<Arc<crate::record::Recorder>>,
    record_max_body: usize,
    approvals: approval_gate::Gate,
}

impl Gateway {
    pub fn new(
        config: &Config,
        active: Arc<ActiveConfig>,
        recorder: Option<Arc<crate::record::Recorder>>,
        approvals: approval_gate::Gate,
    ) -> Result<Gateway, String> {
        Ok(Gateway {
            active,
            connections: [
                metrics::UPSTREAM_CONNECTIONS.with_label_values(&["false"]),
                metrics::UPSTREAM_CONNECTIONS.with_label_values(&["true"]),
            ],
            max_body: config.server.max_body,
            client_timeout: config.server.client_timeout,
            unmatched: RouteMetrics::new(metrics::NO_ROUTE),
            // Pseudonyms live for an idle hour per conversation, 100,000 conversations at most.
            vaults: VaultStore::new(Duration::from_secs(3600), 100_000),
            recorder,
            record_max_body: config.recording.max_body as usize,
            approvals,
        })
    }

    /// One chunk of the answer through metering, MCP's filter, masking and the scrubber,
    /// counted and captured as the agent gets it.
    fn filter_response_chunk(&self, ctx: &mut Exchange, body: &mut Option<Bytes>, end: bool) {
        metering::scan(ctx, body, end);
        mcp::filter_response(ctx, body, end);
        ctx.response.filter(body, end, self.max_body);
        if let Some(b) = body {
            ctx.response_bytes += b.len() as u64;
            if let Some(c) = ctx.capture.as_mut() {
                c.response_chunk(b, crate::util::time::millis(ctx.started.elapsed()));
            }
        }
    }

    /// Answers the agent with `err` (the request ends here) and keeps it for the log.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
        err: ApiError,
    ) -> Result<bool> {
        // Boxed: an inlined write future would sit in the state of every caller's future,
        // i.e. in every request (and every one waiting for approval), used or not.
        Box::pin(write_api_error(session, &ctx.id, &err)).await;
        ctx.error = Some(err);
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Box<Exchange>;

    fn new_ctx(&self) -> Box<Exchange> {
        Box::new(Exchange::new())
    }

    /// Decides on the request before anything goes upstream: from the header alone, or with
    /// the whole body where the route's policy needs it (then forwarded by a subrequest).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Exchange>) -> Result<bool> {
        if let Some(exchange) = subrequest::handoff(session) {
            // A subrequest forwarding a decided body: admitted, routed and decided already.
            *ctx = exchange;
            return Ok(false);
        }
        if session
            .req_header()
            .uri
            .path()
            .starts_with(crate::mcp::oauth::WELL_KNOWN)
        {
            return self.protected_resource_metadata(session, ctx).await;
        }
        if crate::telemetry::enabled() {
            let parent = session
                .req_header()
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok());
            ctx.trace = Some(crate::telemetry::TraceIds::start(parent));
        }
        let route = match self.admit(session, ctx).await {
            Ok(r) => {
                ctx.admitted_at = Some(Instant::now());
                r
            }
            Err(mut e) => {
                if e.status == 401 {
                    mcp::point_at_metadata(session, &self.active.get(), &mut e);
                }
                return self.answer(session, ctx, e).await;
            }
        };
        if !self.needs_body(session, ctx, &route) {
            // Limits that need no body (requests, concurrency) are checked here.
            if let Err(e) = metering::admit(ctx, None).await {
                return self.answer(session, ctx, e).await;
            }
            if self.refuse_broken_stream(session, ctx).await? {
                return Ok(true);
            }
            ctx.decided_at = Some(Instant::now());
            return Ok(false);
        }
        // Boxed: its state (several KiB) is allocated only for requests whose body is decided
        // on, not inlined into every request's task.
        Box::pin(self.decide_body(session, ctx, route)).await
    }

    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &Box<Exchange>) -> bool {
        true
    }

    /// Counts request body bytes and enforces `server.max_body` on bodies without a length; puts
    /// a decided body in place of the agent's.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Exchange>,
    ) -> Result<()> {
        if let Some(decided) = ctx.decided_body.as_ref() {
            // The agent's body was read and decided on in `request_filter`; what Pingora hands
            // here is its copy of the agent's bytes (the retry buffer), which never goes
            // upstream: the decided body goes instead, whole, at the end (recorded already).
            // `forward_decided` keeps this session only when the agent's body is at its end
            // (Pingora then hands the buffer with `end_of_stream`); anything else must not end
            // the upstream body short of the `Content-Length` promised for the decided one.
            if !end_of_stream {
                return Error::e_explain(
                    InternalError,
                    "a decided body before the end of the agent's body",
                );
            }
            *body = Some(decided.clone()).filter(|d| !d.is_empty());
            return Ok(());
        }
        let Some(b) = body else { return Ok(()) };
        // A stand-in for refused MCP requests is not what the agent sent: the record keeps theirs.
        let stand_in = ctx.mcp.as_ref().is_some_and(|m| m.stand_in);
        if let Some(c) = ctx.capture.as_mut().filter(|_| !stand_in) {
            c.request_chunk(b);
        }
        if ctx.forwarded_body_len().is_some() {
            // A decided body: the agent's bytes were counted when they were read.
            return Ok(());
        }
        ctx.request_bytes += b.len() as u64;
        if ctx.request_bytes > self.max_body {
            ctx.error = Some(too_large(self.max_body));
            return Error::e_explain(HTTPStatus(413), "request body over server.max_body");
        }
        Ok(())
    }

    /// The route's pooled, verified TLS peer.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Exchange>,
    ) -> Result<Box<HttpPeer>> {
        upstream_leg::peer(ctx).await
    }

    /// Checks the upstream TLS evidence (version, pins) before any request byte is sent.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut Box<Exchange>,
    ) -> Result<()> {
        ctx.upstream_reused = Some(reused);
        self.connections[usize::from(reused)].inc();
        upstream_leg::check_tls(ctx, digest)
    }

    /// Strips client credentials and hop-by-hop headers, injects the route's credentials.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Exchange>,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Error::e_explain(InternalError, "upstream request without a route");
        };
        headers::rewrite_upstream_request(req, route, ctx.forwarded_body_len(), &ctx.id)?;
        if let Some(t) = &ctx.trace {
            // W3C trace context: the upstream's spans join this exchange's trace.
            req.insert_header("traceparent", t.upstream_traceparent())?;
        }
        ctx.sent_upstream_at = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut Box<Exchange>,
    ) -> Result<()> {
        ctx.ttfb = ctx.sent_upstream_at.map(|sent| sent.elapsed());
        Ok(())
    }

    /// Tags the response with the request id and sets up its masking and scrubbing.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Exchange>,
    ) -> Result<()> {
        headers::tag_response(resp, &ctx.id)?;
        metering::start_response(ctx, resp, &session.req_header().method)?;
        mcp::start_response(resp, ctx, self.max_body)?;
        if let Some(route) = ctx.route.clone() {
            match ResponseBody::start(resp, &route, ctx.vault.clone()) {
                Ok(r) => ctx.response = r,
                Err(e) => {
                    ctx.error = Some(e);
                    return Error::e_explain(HTTPStatus(502), "upstream response refused");
                }
            }
        }
        // The record keeps the headers as the agent gets them (the route's keys scrubbed).
        if let Some(c) = ctx.capture.as_mut() {
            c.status = resp.status.as_u16();
            c.response_headers = headers::recordable_headers(&resp.headers);
            c.sse = headers::content_type(&resp.headers).starts_with("text/event-stream");
        }
        Ok(())
    }

    /// Masks and scrubs the response chunk by chunk, holding back only what a match may need.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Exchange>,
    ) -> Result<Option<Duration>> {
        self.filter_response_chunk(ctx, body, end_of_stream);
        Ok(None)
    }

    /// HTTP/2 response trailers are headers too: the route's credentials are kept out of them.
    /// An answer that ends with trailers has had no last chunk: what its masking held (a JSON
    /// answer masked whole, a stream's tail) goes out now, as the body's end, and Pingora then
    /// writes no trailers (they carry nothing an agent's SDK reads); with nothing held they pass.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<Exchange>,
    ) -> Result<Option<Bytes>> {
        let set = ctx.route.as_ref().and_then(|r| r.secrets.as_deref());
        headers::scrub_trailers(trailers, set);
        if ctx.response.ended {
            return Ok(None);
        }
        let mut rest = Some(Bytes::new());
        self.filter_response_chunk(ctx, &mut rest, true);
        Ok(rest.filter(|b| !b.is_empty()))
    }

    /// Which failed requests Pingora may send again (`upstream_leg::retryable`).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Box<Exchange>,
        client_reused: bool,
    ) -> Box<Error> {
        upstream_leg::decide_retry(peer, session, e, client_reused)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Box<Exchange>,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream_leg::count_tls_failure(&e);
        e
    }

    /// Every error the gateway answers goes through here, in the OpenAI error shape.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Exchange>,
    ) -> FailToProxy {
        let mut err = ctx.error.clone().unwrap_or_else(|| {
            let (route, url) = ctx.route_and_upstream();
            ApiError::from_proxy_error(e, route, url)
        });
        err.headers
            .extend_from_slice(metering::ratelimit_headers(ctx));
        if let Some(r) = ctx.report() {
            r.set_error(err.clone());
        }
        let code = if err.code == "client_disconnected" {
            0
        } else {
            let fresh = session.response_written().is_none();
            write_api_error(session, &ctx.id, &err).await;
            if let (true, Some(r)) = (fresh, ctx.report()) {
                r.answered_with_error();
            }
            err.status
        };
        ctx.error = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Metrics, the session line and the record, by the session that holds the exchange.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<Exchange>) {
        // A kept-alive agent connection may idle (and take its time over the next header) for
        // `client_timeout`, not forever (Pingora's HTTP/1.1 default).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.client_timeout.as_secs().max(1)));
        }
        match &ctx.role {
            // The subrequest holds the exchange (or handed it back, and it was logged here).
            Role::Delegated => return,
            Role::Subrequest { report, .. } if session.response_written().is_none() => {
                // Failed before any response: the agent's session answers and logs it.
                let report = report.clone();
                report.give_back(std::mem::take(ctx));
                return;
            }
            _ => {}
        }
        ctx.finish(session, self.recorder.as_deref(), &self.unmatched);
    }
}
