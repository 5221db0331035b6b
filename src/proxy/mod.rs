//! The `ProxyHttp` implementation: glue between Pingora's phases and agentgate's engines.
//! Each phase does one job; see DESIGN.md's request-flow table.

pub mod approval_gate;
pub mod error;
pub mod routes;
pub mod subrequest;

use crate::config::{Config, Route};
use crate::identity::{self, Authenticator, Identity};
use crate::mask::injected::{SecretSet, StreamScrubber};
use crate::mask::sse::SseMasker;
use crate::mask::stream::StreamMasker;
use crate::mask::vault::VaultStore;
use crate::mask::{Tally, Vault};
use crate::metrics::{self, RouteMetrics};
use crate::proxy::error::ApiError;
use crate::proxy::routes::RouteMasking;
use crate::session_log::{self, SessionRecord, Tls};
use crate::tls::CertNames;
use crate::upstream::UpstreamTarget;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora_prometheus::prometheus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subrequest::{Forwarded, Handoff, ReadBody};

/// Client headers that carry credentials: removed before the route's own are set.
/// (Pre-parsed names: a `&str` name is parsed again on every call.)
const CLIENT_CREDENTIAL_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Everything the gateway knows about one route at run time.
pub struct RouteRuntime {
    pub route: Route,
    target: UpstreamTarget,
    secrets: Option<Arc<SecretSet>>,
    metrics: RouteMetrics,
    host_header: HeaderValue,
    /// Masking and guardrails, when the route has a policy or guardrails.
    masking: Option<Arc<RouteMasking>>,
    /// Approval rules, in the route's order.
    approvals: Vec<crate::policy::ApprovalRule>,
    /// The configuration's masking engine (records and approval summaries of this route's
    /// requests are masked with it, whether or not the route masks).
    engine: Arc<crate::mask::Engine>,
}

/// What a configuration reload swaps: the routes (with their upstreams, masking, recording mode)
/// and the identity sources. A request keeps the `Active` it started with until it ends.
pub struct Active {
    pub routes: Vec<Arc<RouteRuntime>>,
    pub auth: Arc<Authenticator>,
    /// The configuration's masking engine (every route's `engine`).
    pub engine: Arc<crate::mask::Engine>,
}

impl Active {
    /// First route in file order whose host (if any) and path prefix match.
    fn match_route(&self, host: Option<&str>, path: &str) -> Option<&Arc<RouteRuntime>> {
        self.routes.iter().find(|r| {
            path.starts_with(&r.route.path_prefix)
                && r.route
                    .host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
        })
    }
}

/// The `Active` configuration, swapped atomically by a reload.
pub struct ActiveConfig(std::sync::RwLock<Arc<Active>>);

impl ActiveConfig {
    pub fn new(a: Active) -> Arc<ActiveConfig> {
        Arc::new(ActiveConfig(std::sync::RwLock::new(Arc::new(a))))
    }

    pub fn get(&self) -> Arc<Active> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn swap(&self, a: Active) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(a),
            Err(p) => *p.into_inner() = Arc::new(a),
        }
    }
}

/// The run-time form of every route of `config`, masking with `engine` (built from the same
/// config by `masking::engine`).
pub fn build_routes(
    config: &Config,
    engine: Arc<crate::mask::Engine>,
) -> Result<Vec<Arc<RouteRuntime>>, String> {
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut masking = crate::proxy::routes::build(config, engine.clone())?;
    for route in &config.routes {
        let target = UpstreamTarget::new(&route.name, &route.upstream)?;
        let secrets = SecretSet::new(
            route
                .set_headers
                .iter()
                .flat_map(|h| h.secret.sensitive_parts().iter().cloned()),
        )
        .map_err(|e| format!("route `{}`: {e}", route.name))?;
        let host_header = HeaderValue::from_str(&route.upstream.authority()).map_err(|_| {
            format!(
                "route `{}`: upstream host is not a valid Host header",
                route.name
            )
        })?;
        routes.push(Arc::new(RouteRuntime {
            metrics: RouteMetrics::new(&route.name),
            route: route.clone(),
            target,
            secrets,
            host_header,
            masking: masking.remove(&route.name),
            engine: engine.clone(),
            approvals: route
                .approvals
                .iter()
                .filter_map(|n| config.approvals.iter().find(|a| &a.name == n).cloned())
                .collect(),
        }));
    }
    Ok(routes)
}

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
    approvals: crate::proxy::approval_gate::Gate,
}

impl Gateway {
    pub fn new(
        config: &Config,
        active: Arc<ActiveConfig>,
        recorder: Option<Arc<crate::record::Recorder>>,
        approvals: crate::proxy::approval_gate::Gate,
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
}

/// Per-request state.
pub struct RequestCtx {
    pub id: String,
    route: Option<Arc<RouteRuntime>>,
    identity: Option<Arc<Identity>>,
    started: Instant,
    sent_upstream_at: Option<Instant>,
    ttfb: Option<Duration>,
    upstream_reused: Option<bool>,
    /// The upstream leg's TLS evidence (shared with the connection, no copy per request).
    upstream_tls: Option<Arc<SslDigest>>,
    request_body_bytes: u64,
    response_body_bytes: u64,
    scrubber: Option<StreamScrubber>,
    error: Option<ApiError>,
    /// The main session handed the exchange to a subrequest, which logs it.
    delegated: bool,
    /// This session is a subrequest: the body length it forwards.
    body_len: Option<usize>,
    /// The agent leg's TLS version and cipher (a subrequest has no TLS of its own).
    downstream_tls: Option<(String, String)>,
    vault: Option<Arc<Vault>>,
    sse: Option<SseMasker>,
    text_masker: Option<StreamMasker>,
    json_buf: Option<Vec<u8>>,
    request_tally: Tally,
    response_tally: Tally,
    /// A response guardrail ended the stream; later chunks are dropped.
    response_blocked: bool,
    /// What the record of this exchange will hold.
    capture: Option<crate::record::Capture>,
    /// Approval evidence (one entry per matched rule).
    approval: Option<serde_json::Value>,
    /// A subrequest: what it reports back to the main session.
    report: Option<Arc<subrequest::SubrequestReport>>,
    /// Counts this request while it runs (graceful shutdown waits for it).
    _in_flight: Option<crate::shutdown::InFlight>,
}

/// A header value unique to one request (an id), marked never-indexed: HTTP/2's HPACK would
/// otherwise add every new id to the connection's dynamic table, evicting entries that repeat
/// (content-type, server) and comparing against them on every lookup (~1% of CPU on HTTP/2).
fn per_request_value(v: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::from_str(v).or_err(InternalError, "a request id as a header value")?;
    h.set_sensitive(true);
    Ok(h)
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    let raw = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    // Strip a port, keeping bracketed IPv6 literals intact.
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

/// Paths with dot segments or encoded separators could escape a route prefix upstream.
fn path_is_safe(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let encoded = ["%2f", "%5c", "%2e"].iter().any(|e| lower.contains(e));
    !encoded && !path.contains('\\') && !path.split('/').any(|seg| seg == "." || seg == "..")
}

impl Gateway {
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ApiError,
    ) -> Result<bool> {
        // Boxed: an inlined write future would sit in the state of every caller's future,
        // i.e. in every request (and every one waiting for approval), used or not.
        Box::pin(write_api_error(session, &ctx.id, &err)).await;
        ctx.error = Some(err);
        Ok(true)
    }
}

async fn write_api_error(session: &mut Session, request_id: &str, err: &ApiError) {
    let body = err.body();
    let Ok(mut resp) = ResponseHeader::build(err.status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if let Ok(v) = per_request_value(request_id) {
        let _ = resp.insert_header(X_REQUEST_ID, v);
    }
    if let Some(c) = &err.challenge {
        let _ = resp.insert_header(header::WWW_AUTHENTICATE, c.as_str());
    }
    if let Err(e) = session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
    {
        log::debug!("could not send error response to the agent: {e}");
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            id: crate::util::hex::new_request_id(),
            route: None,
            identity: None,
            started: Instant::now(),
            sent_upstream_at: None,
            ttfb: None,
            upstream_reused: None,
            upstream_tls: None,
            request_body_bytes: 0,
            response_body_bytes: 0,
            scrubber: None,
            error: None,
            delegated: false,
            body_len: None,
            downstream_tls: None,
            vault: None,
            sse: None,
            text_masker: None,
            json_buf: None,
            request_tally: Tally::default(),
            response_tally: Tally::default(),
            response_blocked: false,
            capture: None,
            approval: None,
            report: None,
            _in_flight: None,
        })
    }

    /// Authenticates, routes and authorizes the request, and refuses what can be refused from
    /// the header alone.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<bool> {
        if let Some(h) = subrequest::handoff(session) {
            // A subrequest forwarding a decided body: authenticated and routed already.
            ctx.id = h.id;
            ctx.started = h.started;
            ctx.identity = Some(h.identity);
            ctx.vault = h.vault;
            ctx.body_len = Some(h.body_len);
            ctx.request_body_bytes = h.request_bytes;
            ctx.downstream_tls = h.downstream_tls;
            ctx.request_tally = h.request_tally;
            ctx.capture = h.capture;
            ctx.approval = h.approval;
            ctx.report = Some(h.report);
            if let Some(set) = &h.route.secrets {
                ctx.scrubber = Some(StreamScrubber::new(set.clone()));
            }
            ctx.route = Some(h.route);
            return Ok(false);
        }
        if crate::shutdown::draining() {
            let e = ApiError::new(
                503,
                "service_unavailable_error",
                "shutting_down",
                "the gateway is shutting down; retry (another instance will answer)",
            );
            session.set_keepalive(None);
            return self.answer(session, ctx, e).await;
        }
        ctx._in_flight = Some(crate::shutdown::InFlight::enter());
        // Slow agents (slowloris): each read of the body is bounded.
        session.set_read_timeout(Some(self.client_timeout));
        if !path_is_safe(session.req_header().uri.path()) {
            let e = ApiError::new(
                400,
                "invalid_request_error",
                "invalid_path",
                "the request path has dot segments or encoded separators; send a normalized path",
            );
            return self.answer(session, ctx, e).await;
        }
        let cert = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<CertNames>());
        let active = self.active.get();
        let who = match active
            .auth
            .authenticate(&session.req_header().headers, cert)
            .await
        {
            Ok(id) => id,
            Err(e) => return self.answer(session, ctx, ApiError::from_auth(&e)).await,
        };
        ctx.identity = Some(who.clone());
        let req = session.req_header();
        let path = req.uri.path();
        let Some(route) = active.match_route(request_host(req), path).cloned() else {
            let e = ApiError::new(
                404,
                "invalid_request_error",
                "route_not_found",
                format!("no route matches {} {path}", req.method),
            );
            return self.answer(session, ctx, e).await;
        };
        if let Err(e) = identity::authorize(&route.route.access, &who, &route.route.name) {
            identity::count_failure(e.reason);
            ctx.route = Some(route);
            return self.answer(session, ctx, ApiError::from_auth(&e)).await;
        }
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            ctx.route = Some(route);
            return self.answer(session, ctx, too_large(self.max_body)).await;
        }
        if let Some(set) = &route.secrets {
            ctx.scrubber = Some(StreamScrubber::new(set.clone()));
        }
        ctx.route = Some(route.clone());
        if let Some(rec) = &self.recorder {
            if route.route.recording != crate::config::RecordingMode::Off {
                if !rec.accepting() {
                    let e = ApiError::new(
                        503,
                        "service_unavailable_error",
                        "recording_unavailable",
                        "exchanges on this route must be recorded and the record store cannot take more right now (disk full or writer behind); retry shortly",
                    );
                    return self.answer(session, ctx, e).await;
                }
                let mut c = crate::record::Capture::new(
                    route.route.recording,
                    self.record_max_body,
                    conversation_id(&who, session.req_header()),
                );
                c.request_headers = recordable_headers(&session.req_header().headers);
                ctx.capture = Some(c);
            }
        }
        // Routes with approval rules read the body only when a rule's method, path, groups
        // and headers match (the rest pass straight through unless the route masks).
        let req = session.req_header();
        let may_hold = route.approvals.iter().any(|r| {
            r.head_matches(&crate::policy::Request {
                route: &route.route.name,
                method: req.method.as_str(),
                path: req.uri.path(),
                groups: &who.groups,
                headers: &req.headers,
                body: &[],
            })
        });
        if route.masking.is_none() && !may_hold {
            return Ok(false);
        }
        if route.masking.is_some() {
            ctx.vault = Some(
                self.vaults
                    .get(&conversation_key(&who, session.req_header())),
            );
            if session.is_body_empty() && !may_hold {
                return Ok(false);
            }
        }
        // Boxed: its state (several KiB) is allocated only for requests whose body is decided
        // on, not inlined into every request's task.
        Box::pin(self.decide_body(session, ctx, route, who)).await
    }

    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &Box<RequestCtx>) -> bool {
        true
    }

    /// Counts request body bytes and enforces `server.max_body` on bodies without a length.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        if let Some(b) = body {
            if let Some(c) = ctx.capture.as_mut() {
                c.request_chunk(b);
            }
            if ctx.body_len.is_some() {
                // A subrequest forwarding a decided body: the agent's bytes were counted when
                // the main session read them.
                return Ok(());
            }
            ctx.request_body_bytes += b.len() as u64;
            if ctx.request_body_bytes > self.max_body {
                let e = too_large(self.max_body);
                ctx.error = Some(e);
                return Error::e_explain(HTTPStatus(413), "request body over server.max_body");
            }
        }
        Ok(())
    }

    /// The route's pooled, verified TLS peer.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.as_ref() else {
            return Error::e_explain(InternalError, "upstream_peer without a route");
        };
        match route.target.peer().await {
            Ok(p) => Ok(p),
            Err(e) => {
                let msg = e.clone();
                ctx.error = Some(ApiError::new(
                    502,
                    "upstream_error",
                    "upstream_dns_failed",
                    e,
                ));
                Error::e_explain(ConnectNoRoute, msg)
            }
        }
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
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        ctx.upstream_reused = Some(reused);
        self.connections[usize::from(reused)].inc();
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        let upstream = &route.route.upstream;
        if !upstream.tls {
            return Ok(());
        }
        let ssl = digest.and_then(|d| d.ssl_digest.as_ref());
        let Some(ssl) = ssl else {
            let why = "the connection has no TLS evidence".to_string();
            return refuse_upstream_tls(ctx, "upstream_tls_failed", why);
        };
        ctx.upstream_tls = Some(ssl.clone());
        if let Err((code, why)) = route.target.check_evidence(upstream, ssl) {
            return refuse_upstream_tls(ctx, code, why);
        }
        Ok(())
    }

    /// Strips client credentials and hop-by-hop headers, injects the route's credentials.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Error::e_explain(InternalError, "upstream request without a route");
        };
        let named_by_connection: Vec<String> = req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        for name in CLIENT_CREDENTIAL_HEADERS.iter().chain(HOP_BY_HOP.iter()) {
            req.remove_header(name);
        }
        for name in named_by_connection {
            // Never let `Connection: content-length` strip framing headers.
            if name != "content-length" && name != "transfer-encoding" {
                req.remove_header(&name);
            }
        }
        req.insert_header(header::HOST, route.host_header.clone())?;
        for h in &route.route.set_headers {
            req.insert_header(h.name.clone(), h.value.clone())?;
        }
        if route.secrets.is_some() || route.masking.is_some() {
            // The response is scanned (credentials, masking), which compressed bodies would hide.
            req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        if let Some(n) = ctx.body_len {
            // The decided (masked) body replaces the agent's: its length is the new one.
            req.remove_header(&header::TRANSFER_ENCODING);
            req.insert_header(header::CONTENT_LENGTH, n)?;
        }
        req.insert_header(X_REQUEST_ID, per_request_value(&ctx.id)?)?;
        let base = &route.route.upstream.base_path;
        if !base.is_empty() {
            let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let uri: http::Uri = format!("{base}{pq}")
                .parse()
                .or_err(InternalError, "joining the upstream base path")?;
            req.set_uri(uri);
        }
        ctx.sent_upstream_at = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        if let Some(sent) = ctx.sent_upstream_at {
            ctx.ttfb = Some(sent.elapsed());
        }
        Ok(())
    }

    /// Tags the response with the request id and keeps credentials out of response headers.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        if let Some(mut upstream_id) = resp.headers.get(&X_REQUEST_ID).cloned() {
            upstream_id.set_sensitive(true);
            resp.insert_header(X_UPSTREAM_REQUEST_ID, upstream_id)?;
        }
        resp.insert_header(X_REQUEST_ID, per_request_value(&ctx.id)?)?;
        if let Some(c) = ctx.capture.as_mut() {
            c.status = resp.status.as_u16();
            c.response_headers = recordable_headers(&resp.headers);
            c.sse = resp
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        }
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if route.secrets.is_none() && route.masking.is_none() {
            return Ok(());
        }
        if let Some(enc) = resp.headers.get(header::CONTENT_ENCODING) {
            if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
                let route = ctx
                    .route
                    .as_ref()
                    .map(|r| r.route.name.as_str())
                    .unwrap_or_default();
                ctx.error = Some(ApiError::new(
                    502,
                    "upstream_error",
                    "upstream_encoding_refused",
                    format!(
                        "route `{route}`: the upstream sent a compressed body ({}) although the gateway asked for identity; it cannot be checked for credentials or masked, so it is refused",
                        String::from_utf8_lossy(enc.as_bytes())
                    ),
                ));
                return Error::e_explain(HTTPStatus(502), "compressed upstream response refused");
            }
        }
        if let Some(m) = &route.masking {
            start_response_masking(resp, ctx, m)?;
        }
        let Some(set) = route.secrets.clone() else {
            return Ok(());
        };
        let tainted: Vec<HeaderName> = resp
            .headers
            .iter()
            .filter(|(_, v)| set.contains_secret(v.as_bytes()))
            .map(|(k, _)| k.clone())
            .collect();
        for name in tainted {
            let values: Vec<HeaderValue> = resp
                .headers
                .get_all(&name)
                .iter()
                .map(|v| {
                    let mut bytes = v.as_bytes().to_vec();
                    set.mask_in_place(&mut bytes);
                    HeaderValue::from_bytes(&bytes)
                        .unwrap_or(HeaderValue::from_static("[redacted]"))
                })
                .collect();
            resp.remove_header(&name);
            for v in values {
                resp.append_header(name.clone(), v)?;
            }
        }
        Ok(())
    }

    /// Masks echoed credentials chunk by chunk, holding back only a possible secret prefix.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<Duration>> {
        if ctx.response_blocked {
            *body = None;
            return Ok(None);
        }
        mask_response_chunk(body, end_of_stream, ctx, self.max_body);
        if let Some(scrubber) = ctx.scrubber.as_mut() {
            *body = scrubber.push(body.take(), end_of_stream);
        }
        if let Some(b) = body {
            ctx.response_body_bytes += b.len() as u64;
            if let Some(c) = ctx.capture.as_mut() {
                c.response_chunk(b, crate::util::time::millis(ctx.started.elapsed()));
            }
        }
        Ok(None)
    }

    /// Pingora retries only idempotent methods; an HTTP/2 stream the upstream says it never
    /// processed (above GOAWAY's last stream id, or REFUSED_STREAM) is safe to send again on a
    /// new connection whatever the method (RFC 9113 §8.7), and agents mostly POST.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Box<RequestCtx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // (`Error::retry()` panics while the decision is still "reused only".)
        let unprocessed = matches!(e.retry, pingora::RetryType::Decided(true))
            && e.root_cause().downcast_ref::<h2::Error>().is_some_and(|h| {
                h.is_remote()
                    && ((h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR))
                        || (h.is_reset() && h.reason() == Some(h2::Reason::REFUSED_STREAM)))
            });
        if session.as_ref().retry_buffer_truncated()
            || !(unprocessed || session.req_header().method.is_idempotent())
        {
            e.set_retry(false);
        } else if !unprocessed {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Box<RequestCtx>,
        e: Box<Error>,
    ) -> Box<Error> {
        if matches!(
            e.etype(),
            TLSHandshakeFailure
                | TLSHandshakeTimedout
                | InvalidCert
                | TLSWantX509Lookup
                | HandshakeError
        ) {
            metrics::TLS_HANDSHAKE_FAILURES
                .with_label_values(&["upstream"])
                .inc();
        }
        e
    }

    /// Every error the gateway answers goes through here, in the OpenAI error shape.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<RequestCtx>,
    ) -> FailToProxy {
        let err = match ctx.error.clone() {
            Some(err) => err,
            None => {
                let (route, url) = ctx
                    .route
                    .as_ref()
                    .map(|r| (r.route.name.as_str(), r.route.upstream.url.as_str()))
                    .unwrap_or((metrics::NO_ROUTE, ""));
                ApiError::from_proxy_error(e, route, url)
            }
        };
        if let Some(r) = &ctx.report {
            r.set_error(err.clone());
        }
        let code = if err.code == "client_disconnected" {
            0
        } else {
            let fresh = session.response_written().is_none();
            write_api_error(session, &ctx.id, &err).await;
            if let (true, Some(r)) = (fresh, &ctx.report) {
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

    /// Metrics and the session log line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<RequestCtx>) {
        // A kept-alive agent connection may idle (and take its time over the next header) for
        // `client_timeout`, not forever (Pingora's HTTP/1.1 default).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.client_timeout.as_secs().max(1)));
        }
        if ctx.delegated {
            // The subrequest that carried the decided body logged this exchange.
            return;
        }
        if ctx.body_len.is_some() && session.response_written().is_none() {
            // A subrequest that failed before any response: the main session answers the agent
            // and logs the exchange (counting it here too would count it twice).
            return;
        }
        if ctx.report.as_ref().is_some_and(|r| !r.claim_logging()) {
            return;
        }
        crate::proxy::routes::count(&ctx.request_tally, "request");
        crate::proxy::routes::count(&ctx.response_tally, "response");
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let m = ctx
            .route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or(&self.unmatched);
        let elapsed = ctx.started.elapsed();
        m.count_status(status);
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(t) = ctx.ttfb {
            m.ttfb.observe(t.as_secs_f64());
        }
        m.request_bytes.inc_by(ctx.request_body_bytes);
        m.response_bytes.inc_by(ctx.response_body_bytes);
        if let Some(err) = &ctx.error {
            let route = ctx
                .route
                .as_ref()
                .map(|r| r.route.name.as_str())
                .unwrap_or(metrics::NO_ROUTE);
            metrics::ERRORS.with_label_values(&[route, err.code]).inc();
        }
        let req = session.req_header();
        let downstream_tls = match &ctx.downstream_tls {
            Some((version, cipher)) => Some(Tls {
                version: version.as_str(),
                cipher: cipher.as_str(),
            }),
            None => session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .map(|s| tls_evidence(s)),
        };
        let masked = masked_summary(&ctx.request_tally, &ctx.response_tally);
        let dtls_owned: Option<(String, String)> = downstream_tls
            .as_ref()
            .map(|t| (t.version.to_string(), t.cipher.to_string()));
        session_log::emit(&SessionRecord {
            ts: crate::util::time::rfc3339(std::time::SystemTime::now()),
            kind: "exchange",
            request_id: &ctx.id,
            route: ctx.route.as_ref().map(|r| r.route.name.as_str()),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            duration_ms: crate::util::time::millis(elapsed),
            upstream_ttfb_ms: ctx.ttfb.map(crate::util::time::millis),
            request_bytes: ctx.request_body_bytes,
            response_bytes: ctx.response_body_bytes,
            http_version: session_log::version_str(req.version),
            downstream_tls,
            upstream_tls: ctx.upstream_tls.as_deref().map(tls_evidence),
            upstream_reused: ctx.upstream_reused,
            identity: ctx.identity.as_deref(),
            masked: masked.as_ref(),
            approval: ctx.approval.as_ref(),
            error: ctx.error.as_ref().map(|e| e.code),
        });
        if let (Some(rec), Some(c)) = (&self.recorder, ctx.capture.take()) {
            let now = std::time::SystemTime::now();
            let guardrail = ctx
                .request_tally
                .blocked
                .clone()
                .or_else(|| ctx.response_tally.blocked.clone());
            rec.submit(crate::record::Draft {
                engine: ctx.route.as_ref().map(|r| r.engine.clone()),
                id: ctx.id.clone(),
                ts: crate::util::time::rfc3339(now - elapsed),
                ts_ms: now
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(elapsed)
                    .as_millis() as u64,
                conversation: c.conversation.clone(),
                identity: ctx.identity.clone(),
                route: ctx.route.as_ref().map(|r| r.route.name.clone()),
                mode: c.mode,
                method: req.method.to_string(),
                path: req
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                request_headers: c.request_headers,
                request_body: Some(c.request_body),
                request_bytes: ctx.request_body_bytes,
                request_truncated: c.request_truncated,
                status: if status != 0 { status } else { c.status },
                response_headers: c.response_headers,
                response_body: Some(c.response_body),
                response_bytes: ctx.response_body_bytes,
                response_truncated: c.response_truncated,
                events: c.sse.then_some(c.events),
                masked: masked.clone(),
                guardrail,
                approval: ctx.approval.take(),
                error: ctx.error.as_ref().map(|e| e.code.to_string()),
                downstream_tls: dtls_owned,
                upstream_tls: ctx
                    .upstream_tls
                    .as_deref()
                    .map(|t| (t.version.to_string(), t.cipher.to_string())),
                duration_ms: crate::util::time::millis(elapsed),
                ttfb_ms: ctx.ttfb.map(crate::util::time::millis),
            });
        }
    }
}

/// The version and cipher of one TLS leg, as the session line records them.
fn tls_evidence(s: &SslDigest) -> Tls<'_> {
    Tls {
        version: s.version.as_ref(),
        cipher: s.cipher.as_ref(),
    }
}

/// Refuses a connected upstream whose TLS evidence fails a check; no request byte was sent.
fn refuse_upstream_tls(ctx: &mut RequestCtx, code: &'static str, why: String) -> Result<()> {
    metrics::TLS_HANDSHAKE_FAILURES
        .with_label_values(&["upstream"])
        .inc();
    let route = ctx
        .route
        .as_ref()
        .map(|r| (r.route.name.clone(), r.route.upstream.url.clone()));
    let (name, url) = route.unwrap_or_default();
    ctx.error = Some(ApiError::new(
        502,
        "upstream_error",
        code,
        format!("route `{name}`: upstream {url} refused: {why}"),
    ));
    Error::e_explain(HTTPStatus(502), why)
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        413,
        "invalid_request_error",
        "body_too_large",
        format!("the request body is larger than server.max_body ({max} bytes)"),
    )
}

/// The conversation whose pseudonyms a request shares: the caller, plus `x-agentgate-session`
/// when the agent names one (a caller never reaches another caller's pseudonyms).
fn conversation_key(who: &Identity, req: &RequestHeader) -> String {
    let session = session_header(req).unwrap_or("");
    format!("{}\u{1f}{}\u{1f}{session}", who.issuer, who.subject)
}

/// The agent's `x-agentgate-session`, when it sends a usable one (at most 128 bytes).
fn session_header(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get("x-agentgate-session")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
}

/// Sets up response masking from the response header: SSE event by event, JSON whole, other
/// text as a stream; binary bodies pass. The length changes, so `Content-Length` goes.
fn start_response_masking(
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    m: &RouteMasking,
) -> Result<()> {
    let ct = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let vault = ctx.vault.clone();
    if ct.starts_with("text/event-stream") {
        ctx.sse = Some(SseMasker::new(
            m.engine.clone(),
            m.response.clone(),
            vault,
            m.restore,
        ));
    } else if ct.contains("json") {
        ctx.json_buf = Some(Vec::new());
    } else if ct.starts_with("text/") || ct.is_empty() {
        ctx.text_masker = Some(StreamMasker::new(
            m.engine.clone(),
            m.response.clone(),
            vault,
            m.restore,
        ));
    } else {
        return Ok(());
    }
    resp.remove_header(&header::CONTENT_LENGTH);
    if resp.version != http::Version::HTTP_2 {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// The SSE error event that ends a stream a response guardrail stopped.
fn blocked_event(message: &str) -> Vec<u8> {
    let v = serde_json::json!({"error": {"message": message, "type": "guardrail_error", "code": "guardrail_blocked"}});
    format!("event: error\ndata: {v}\n\n").into_bytes()
}

/// Masks one chunk of the response body (see `start_response_masking`).
fn mask_response_chunk(body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx, max: u64) {
    let Some(masking) = ctx.route.as_ref().and_then(|r| r.masking.clone()) else {
        return;
    };
    let out: Option<Vec<u8>> = if let Some(sse) = ctx.sse.as_mut() {
        let mut out = match body.as_ref().map(|b| sse.push(b)) {
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                ctx.response_blocked = true;
                blocked_event(&format!("the stream was ended: {e}"))
            }
            None => Vec::new(),
        };
        if end && !ctx.response_blocked {
            out.extend(sse.finish());
        }
        metrics::MASK_HOLDBACK.observe(sse.held() as f64);
        if let Some(d) = sse.tally.blocked.clone() {
            let (msg, rule) = masking.block_message(&d);
            if let Some(r) = rule {
                metrics::GUARDRAIL_BLOCKS.with_label_values(&[&r]).inc();
            }
            ctx.response_blocked = true;
            out = blocked_event(&msg);
        }
        if end || ctx.response_blocked {
            ctx.response_tally.merge(std::mem::take(&mut sse.tally));
        }
        Some(out)
    } else if let Some(buf) = ctx.json_buf.as_mut() {
        if let Some(b) = body.as_ref() {
            buf.extend_from_slice(b);
        }
        if buf.len() as u64 > max {
            // A JSON answer is masked whole; one larger than server.max_body is not forwarded.
            ctx.json_buf = None;
            ctx.response_blocked = true;
            let msg = format!("the upstream's JSON response is larger than server.max_body ({max} bytes) and cannot be masked");
            *body = Some(ApiError::new(502, "upstream_error", "response_too_large", msg).body());
            return;
        }
        if end {
            let whole = std::mem::take(buf);
            let vault = ctx.vault.as_deref();
            let (out, t) = match crate::mask::json::mask_json(
                &masking.engine,
                &whole,
                &masking.response,
                vault,
                masking.restore,
            ) {
                Ok(x) => x,
                Err(_) => {
                    let text = String::from_utf8_lossy(&whole);
                    let (m, t) =
                        masking
                            .engine
                            .mask(&text, &masking.response, vault, masking.restore);
                    (m.into_bytes(), t)
                }
            };
            let out = match t.blocked.clone() {
                Some(d) => {
                    let (msg, rule) = masking.block_message(&d);
                    if let Some(r) = rule {
                        metrics::GUARDRAIL_BLOCKS.with_label_values(&[&r]).inc();
                    }
                    ApiError::new(502, "guardrail_error", "guardrail_blocked", msg)
                        .body()
                        .to_vec()
                }
                None => out,
            };
            ctx.response_tally.merge(t);
            Some(out)
        } else {
            Some(Vec::new())
        }
    } else if let Some(tm) = ctx.text_masker.as_mut() {
        let text = body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let mut out = tm.push(&text);
        if end {
            out.push_str(&tm.finish());
            ctx.response_tally.merge(std::mem::take(&mut tm.tally));
        }
        metrics::MASK_HOLDBACK.observe(tm.held() as f64);
        Some(out.into_bytes())
    } else {
        None
    };
    if let Some(o) = out {
        *body = Some(Bytes::from(o));
    }
}

/// `{"email/pseudonymize": 2, ...}` per direction for the session line, or nothing.
fn masked_summary(req: &Tally, resp: &Tally) -> Option<serde_json::Value> {
    if req.is_empty() && resp.is_empty() {
        return None;
    }
    let side = |t: &Tally| {
        let mut m = serde_json::Map::new();
        for ((d, a), n) in &t.counts {
            m.insert(format!("{d}/{a}"), serde_json::json!(n));
        }
        if t.restored > 0 {
            m.insert("restored".into(), serde_json::json!(t.restored));
        }
        serde_json::Value::Object(m)
    };
    Some(serde_json::json!({"request": side(req), "response": side(resp)}))
}

impl Gateway {
    /// Reads the request body, masks it and applies guardrails, then forwards the decided body
    /// through a subrequest. Nothing reaches the upstream before the decision, and nothing at
    /// all when the request is refused.
    async fn decide_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Arc<RouteRuntime>,
        who: Arc<Identity>,
    ) -> Result<bool> {
        let body = match subrequest::read_body(session, self.max_body).await? {
            ReadBody::Body(b) => b,
            ReadBody::TooLarge => return self.answer(session, ctx, too_large(self.max_body)).await,
        };
        ctx.request_body_bytes = body.len() as u64;
        let req = session.req_header();
        if let Some(enc) = req.headers.get(header::CONTENT_ENCODING) {
            if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
                let e = ApiError::new(
                    415,
                    "invalid_request_error",
                    "compressed_body_refused",
                    format!(
                        "route `{}` inspects request bodies; send them uncompressed (Content-Encoding: {} is refused)",
                        route.route.name,
                        String::from_utf8_lossy(enc.as_bytes())
                    ),
                );
                return self.answer(session, ctx, e).await;
            }
        }
        let ct = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let vault = ctx.vault.clone();
        // `None`: the body goes on as read (no copy of it waits beside the original).
        let masked = match route.masking.clone() {
            Some(m) => {
                match Box::pin(self.mask_request(session, ctx, &route, &m, &body, ct)).await? {
                    Some(x) => Some(x),
                    None => return Ok(true),
                }
            }
            None => None,
        };
        if !route.approvals.is_empty() {
            use crate::proxy::approval_gate::Outcome;
            // Each phase's future is boxed on its own: a request waiting for approval (1,000 may
            // wait at once) holds only the wait's state, not the forwarding's beside it.
            let outcome = Box::pin(self.approvals.check(
                session,
                &route.approvals,
                &route.route.name,
                &who,
                &ctx.id,
                &body,
                &route.engine,
            ))
            .await;
            match outcome {
                Outcome::Proceed(evidence) => ctx.approval = evidence,
                Outcome::Refuse(e, evidence) => {
                    ctx.approval = Some(evidence);
                    return self.answer(session, ctx, e).await;
                }
                Outcome::Ticket(a, evidence) => {
                    ctx.approval = Some(evidence);
                    Box::pin(write_ticket(session, &ctx.id, &a)).await;
                    return Ok(true);
                }
                Outcome::Abandoned(evidence) => {
                    ctx.approval = Some(evidence);
                    ctx.error = Some(ApiError::new(
                        499,
                        "invalid_request_error",
                        "client_gone",
                        "the agent disconnected while its request waited for approval",
                    ));
                    return Ok(true);
                }
            }
        }
        let (masked, tally) = masked.unwrap_or_else(|| (body, Tally::default()));
        let downstream_tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| (s.version.to_string(), s.cipher.to_string()));
        // The subrequest's request_body_filter records the body it forwards.
        let capture = ctx.capture.take();
        let handoff = Handoff {
            id: ctx.id.clone(),
            route,
            identity: who,
            vault,
            body_len: masked.len(),
            started: ctx.started,
            request_bytes: ctx.request_body_bytes,
            downstream_tls,
            request_tally: tally,
            capture,
            approval: ctx.approval.clone(),
            report: Arc::default(),
        };
        ctx.delegated = true;
        match Box::pin(subrequest::forward(session, handoff, masked)).await? {
            Forwarded::Answered => Ok(true),
            // The subrequest logged it; an error here keeps Pingora from ending the response
            // as if it were complete (the connection is closed instead).
            Forwarded::Broken(e) => Err(e),
            Forwarded::Failed {
                error: e,
                api_error,
                logged,
            } => {
                // The agent still needs an answer; the exchange is logged once, by whichever
                // session gets there (the subrequest may have logged its own error already).
                ctx.delegated = logged;
                let err = api_error.unwrap_or_else(|| {
                    let (name, url) = ctx
                        .route
                        .as_ref()
                        .map(|r| (r.route.name.as_str(), r.route.upstream.url.as_str()))
                        .unwrap_or_default();
                    ApiError::from_proxy_error(&e, name, url)
                });
                self.answer(session, ctx, err).await
            }
        }
    }

    /// Masks the request body and applies request guardrails: the masked body and its tally,
    /// or `None` when the request was refused (answered here).
    async fn mask_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &RouteRuntime,
        m: &RouteMasking,
        body: &[u8],
        ct: String,
    ) -> Result<Option<(Vec<u8>, Tally)>> {
        let vault = ctx.vault.clone();
        let json_like = ct.contains("json")
            || (ct.is_empty()
                && body
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b'{' || *b == b'['));
        let masked = if json_like {
            match crate::mask::json::mask_json(&m.engine, body, &m.request, vault.as_deref(), false)
            {
                Ok(x) => Some(x),
                Err(e) if m.refuse_invalid_json => {
                    let e = ApiError::new(
                        400,
                        "invalid_request_error",
                        "invalid_json",
                        format!("{e}; this route refuses bodies that are not valid JSON"),
                    );
                    self.answer(session, ctx, e).await?;
                    return Ok(None);
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let (masked, tally) = match masked {
            Some(x) => x,
            None => match std::str::from_utf8(body) {
                Ok(text) => {
                    let (t, tally) = m.engine.mask(text, &m.request, vault.as_deref(), false);
                    (t.into_bytes(), tally)
                }
                Err(_) => {
                    let e = ApiError::new(
                        415,
                        "invalid_request_error",
                        "uninspectable_body",
                        format!("route `{}` inspects request bodies, and this one is neither JSON nor UTF-8 text", route.route.name),
                    );
                    self.answer(session, ctx, e).await?;
                    return Ok(None);
                }
            },
        };
        if let Some(d) = tally.blocked.clone() {
            crate::proxy::routes::count(&tally, "request");
            let (msg, rule) = m.block_message(&d);
            if let Some(r) = rule {
                metrics::GUARDRAIL_BLOCKS.with_label_values(&[&r]).inc();
            }
            let e = ApiError::new(400, "invalid_request_error", "request_blocked", msg);
            self.answer(session, ctx, e).await?;
            return Ok(None);
        }
        Ok(Some((masked, tally)))
    }
}

async fn write_ticket(session: &mut Session, request_id: &str, a: &crate::approval::Approval) {
    let retry = (a.expires_ms.saturating_sub(crate::approval::now_ms()) / 1000).clamp(1, 10);
    let body = serde_json::json!({
        "approval": {
            "id": a.id, "state": a.state, "rule": a.rule,
            "approvals": a.decisions.len(), "min_approvals": a.min_approvals,
            "expires_at_ms": a.expires_ms,
        },
        "message": format!(
            "rule `{}` needs an approval; send the same request again with `{}: {}` once it is approved",
            a.rule, crate::proxy::approval_gate::APPROVAL_HEADER, a.id
        ),
    })
    .to_string();
    let Ok(mut resp) = ResponseHeader::build(202, Some(6)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if let Ok(v) = per_request_value(request_id) {
        let _ = resp.insert_header(X_REQUEST_ID, v);
    }
    let _ = resp.insert_header(header::RETRY_AFTER, retry.to_string());
    let _ = resp.insert_header(crate::proxy::approval_gate::APPROVAL_HEADER, a.id.as_str());
    if let Err(e) = session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from(body))
        .await
    {
        log::debug!("could not send the ticket to the agent: {e}");
    }
}

/// The readable conversation id a record is filed under: `x-agentgate-session` when the agent
/// sends one, else the caller.
fn conversation_id(who: &Identity, req: &RequestHeader) -> String {
    match session_header(req) {
        Some(s) => s.to_string(),
        None => format!("{}@{}", who.subject, who.issuer),
    }
}

/// Header names and values for a record, without credentials (values are masked on write).
fn recordable_headers(h: &http::HeaderMap) -> crate::record::Headers {
    h.iter()
        .filter(|(k, _)| !CLIENT_CREDENTIAL_HEADERS.contains(k) && *k != header::SET_COOKIE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_safety() {
        let table = [
            ("/v1/chat/completions", true),
            ("/v1/models", true),
            ("/v1/../admin", false),
            ("/v1/./x", false),
            ("/v1/%2e%2e/admin", false),
            ("/v1%2Fadmin", false),
            ("/v1\\admin", false),
            ("/v1/a..b", true),
        ];
        for (path, ok) in table {
            assert_eq!(path_is_safe(path), ok, "{path}");
        }
    }

    #[test]
    fn host_without_port() {
        let table = [
            ("example.com:8443", "example.com"),
            ("example.com", "example.com"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
        ];
        for (raw, want) in table {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("host", raw).unwrap();
            assert_eq!(request_host(&req), Some(want), "{raw}");
        }
    }
}
