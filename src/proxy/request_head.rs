//! What is decided from the request header alone, in order: admission (draining, slow agents),
//! a path that cannot escape its route, the caller's identity, the route, the route's access
//! rule, the declared size, whether the exchange can be recorded; then whether the body must be
//! read before anything goes upstream (masking, a matching approval rule).
//!
//! Invariant: a request refused here sends nothing upstream and no upstream connection is made.

use super::error::{too_large, ApiError};
use super::exchange::Exchange;
use super::headers;
use super::routes::RouteRuntime;
use super::Gateway;
use crate::config::RecordingMode;
use crate::identity::{self, Identity};
use crate::tls::CertNames;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::sync::Arc;

/// More header fields than this are refused (431) before anything else: no agent API needs them,
/// and an upstream would refuse them after the gateway had connected and begun writing (Python's
/// `http.server` and many others stop at 100).
pub const MAX_HEADERS: usize = 100;

/// Header fields larger than this in all (names and values) are refused (431) for the same
/// reason: an upstream stops reading them while the gateway writes (a 502 under load). 64 KiB
/// leaves room for large tokens (nginx accepts 32 KiB by default, Node.js 16 KiB).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Puts the request's path in its canonical form (`crate::canonical`) before any decision: the
/// route, access and approval rules, records, session lines and the upstream all see it. A path
/// with no canonical form is refused.
fn canonicalize(req: &mut RequestHeader) -> Result<(), ApiError> {
    let canonical = crate::canonical::path(req.uri.path()).map_err(|why| {
        ApiError::new(
            400,
            "invalid_request_error",
            "invalid_path",
            format!("{why}; send a normalized path"),
        )
    })?;
    if canonical == req.uri.path() {
        return Ok(());
    }
    let mut parts = req.uri.clone().into_parts();
    let pq = match req.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    parts.path_and_query = pq.parse().ok();
    let uri = http::Uri::from_parts(parts)
        .map_err(|e| ApiError::new(400, "invalid_request_error", "invalid_path", e.to_string()))?;
    req.set_uri(uri);
    Ok(())
}

impl Gateway {
    /// Admits, authenticates, routes and authorizes the request: its route, or the error to
    /// answer with. Fills in the exchange's route, identity and capture.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
    ) -> Result<Arc<RouteRuntime>, ApiError> {
        if crate::shutdown::draining() {
            session.set_keepalive(None);
            return Err(ApiError::new(
                503,
                "service_unavailable_error",
                "shutting_down",
                "the gateway is shutting down; retry (another instance will answer)",
            ));
        }
        ctx.in_flight = Some(crate::shutdown::InFlight::enter());
        // Slow agents (slowloris): each read of the body is bounded.
        session.set_read_timeout(Some(self.client_timeout));
        let count = session.req_header().headers.len();
        if count > MAX_HEADERS {
            session.set_keepalive(None);
            return Err(ApiError::new(
                431,
                "invalid_request_error",
                "too_many_headers",
                format!(
                    "the request has {count} header fields; at most {MAX_HEADERS} are accepted"
                ),
            ));
        }
        let bytes: usize = session
            .req_header()
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if bytes > MAX_HEADER_BYTES {
            session.set_keepalive(None);
            return Err(ApiError::new(
                431,
                "invalid_request_error",
                "headers_too_large",
                format!(
                    "the request's header fields take {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
                ),
            ));
        }
        if let Some(te) = headers::transfer_coded(&session.req_header().headers) {
            // RFC 9112 6.1: a transfer coding the server does not know is answered 501.
            session.set_keepalive(None);
            return Err(ApiError::new(
                501,
                "invalid_request_error",
                "transfer_coding_refused",
                format!("Transfer-Encoding `{te}`: only chunked is accepted"),
            ));
        }
        canonicalize(session.req_header_mut())?;
        let cert = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<CertNames>());
        let active = self.active.get();
        let who = active
            .auth
            .authenticate(&session.req_header().headers, cert)
            .await
            .map_err(|e| ApiError::from_auth(&e))?;
        ctx.identity = Some(who.clone());
        let req = session.req_header();
        let path = req.uri.path();
        let Some(route) = active
            .match_route(headers::request_host(req).as_deref(), path)
            .cloned()
        else {
            return Err(ApiError::new(
                404,
                "invalid_request_error",
                "route_not_found",
                format!("no route matches {} {path}", req.method),
            ));
        };
        ctx.route = Some(route.clone());
        if let Err(e) = identity::authorize(&route.route.access, &who, &route.route.name) {
            identity::count_failure(e.reason);
            return Err(ApiError::from_auth(&e));
        }
        super::mcp::check_audience(session, &route, &who)?;
        let req = session.req_header();
        if headers::declared_length(req).is_some_and(|n| n > self.max_body) {
            return Err(too_large(self.max_body));
        }
        self.start_capture(session, ctx, &route, &who)?;
        Ok(route)
    }

    /// Starts the record of this exchange when the route records; refuses the request when
    /// the record store cannot take it (a route that must record never goes unrecorded).
    fn start_capture(
        &self,
        session: &Session,
        ctx: &mut Exchange,
        route: &RouteRuntime,
        who: &Identity,
    ) -> Result<(), ApiError> {
        let Some(rec) = &self.recorder else {
            return Ok(());
        };
        if route.route.recording == RecordingMode::Off {
            return Ok(());
        }
        if !rec.accepting() {
            return Err(ApiError::new(
                503,
                "service_unavailable_error",
                "recording_unavailable",
                "exchanges on this route must be recorded and the record store cannot take more right now (disk full or writer behind); retry shortly",
            ));
        }
        let req = session.req_header();
        let mut c = crate::record::Capture::new(
            route.route.recording,
            self.record_max_body,
            headers::conversation_id(who, req),
        );
        c.request_headers = headers::recordable_headers(&req.headers);
        ctx.capture = Some(c);
        Ok(())
    }

    /// Whether the body must be read and decided on before anything goes upstream: the route
    /// masks (and there is a body), it is an MCP POST, or an approval rule's method, path,
    /// groups and headers match. Routes that mask get the conversation's pseudonym vault here.
    pub(super) fn needs_body(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
        route: &RouteRuntime,
    ) -> bool {
        let Some(who) = ctx.identity.clone() else {
            return false;
        };
        // Limits that count tokens or cost estimate the request from its body first.
        let metered = super::metering::needs_body(route, session.req_header());
        let metered = metered && !session.is_body_empty();
        // Hosted MCP tools a model API request names are decided on its body.
        let hosted_mcp = route.route.hosted_mcp.is_some() && !session.is_body_empty();
        let req = session.req_header();
        // An MCP POST's JSON-RPC messages are always decided on (per-tool access).
        let mcp_post = route.route.mcp.is_some() && req.method == http::Method::POST;
        let may_hold = mcp_post
            || hosted_mcp
            || route.approvals.iter().any(|r| {
                r.head_matches(&crate::policy::Request {
                    route: &route.route.name,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    groups: &who.groups,
                    headers: &req.headers,
                    body: &[],
                })
            });
        if route.masking.is_none() {
            return may_hold || metered;
        }
        ctx.vault = Some(self.vaults.get(&headers::conversation_key(&who, req)));
        may_hold || metered || !session.is_body_empty()
    }
}
