//! Requests whose body is decided on before anything goes upstream: the body is read whole
//! (no upstream connection exists yet), masked and checked by the route's guardrails, held for
//! approval where a rule matches, and the decided body is forwarded in place of the agent's by
//! this session (bodies up to Pingora's 64 KiB retry buffer) or by a subrequest that takes the
//! exchange over (`subrequest.rs`).
//!
//! Invariant (DESIGN.md 3, 4): no body byte reaches the upstream before the decision; a
//! refused, blocked or denied request sends nothing upstream; a body masking cannot read is
//! refused, never forwarded as it came.

use super::error::{too_large, write_ticket, ApiError};
use super::exchange::Exchange;
use super::headers;
use super::routes::{RouteMasking, RouteRuntime};
use super::subrequest::{self, Forwarded, ReadBody};
use super::Gateway;
use crate::mask::json::JsonError;
use crate::mask::Tally;
use crate::metrics;
use crate::proxy::approval_gate::Outcome;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

impl Gateway {
    /// Reads the request body, masks it and applies guardrails and approval rules, then
    /// forwards the decided body. `Ok(true)`: the request was answered here.
    pub(super) async fn decide_body(
        &self,
        session: &mut Session,
        ctx: &mut Box<Exchange>,
        route: Arc<RouteRuntime>,
    ) -> Result<bool> {
        // Pingora keeps what it reads in a retry buffer (64 KiB at most) and hands that buffer
        // to `request_body_filter` once per upstream attempt: `forward_decided` uses that call
        // to send the decided body in this session, without a subrequest.
        session.downstream_session.enable_retry_buffering();
        let body = match subrequest::read_body(session, self.max_body).await? {
            ReadBody::Body(b) => b,
            ReadBody::TooLarge => return self.answer(session, ctx, too_large(self.max_body)).await,
        };
        ctx.request_bytes = body.len() as u64;
        if let Some(enc) = headers::compressed(&session.req_header().headers) {
            let e = ApiError::new(
                415,
                "invalid_request_error",
                "compressed_body_refused",
                format!(
                    "route `{}` inspects request bodies; send them uncompressed (Content-Encoding: {enc} is refused)",
                    route.route.name
                ),
            );
            return self.answer(session, ctx, e).await;
        }
        let mcp_post = session.req_header().method == http::Method::POST;
        let body = match route.route.mcp.as_ref().filter(|_| mcp_post) {
            Some(policy) => match self.decide_mcp(session, ctx, &route, policy, body).await {
                Ok(super::mcp::Decided::Forward(b)) => b,
                Ok(super::mcp::Decided::Answered) => return Ok(true),
                Ok(super::mcp::Decided::StandIn(b)) => {
                    return self.forward_decided(session, ctx, b).await
                }
                Err(e) => return self.answer(session, ctx, e).await,
            },
            None => body,
        };
        // `None`: the body goes on as read (no copy of it waits beside the original).
        let masked = match route.masking.clone() {
            Some(m) => match mask_request(session, ctx, &route, &m, &body) {
                Ok(x) => Some(x),
                Err(e) => return self.answer(session, ctx, e).await,
            },
            None => None,
        };
        if masked.is_none() && looks_like_json(session, &body) {
            // Approval rules read the body: it must be one structure the upstream reads alike.
            if let Err(e @ (JsonError::TooDeep | JsonError::DuplicateKey(_))) =
                crate::mask::json::validate(&body)
            {
                let code = match e {
                    JsonError::TooDeep => "json_too_deep",
                    _ => "duplicate_json_key",
                };
                let e = ApiError::new(400, "invalid_request_error", code, e.to_string());
                return self.answer(session, ctx, e).await;
            }
        }
        // Hosted MCP tools are decided on the body the upstream would get (`hosted_mcp.rs`).
        let upstream_body = masked.as_ref().map_or(&body[..], |(m, _)| &m[..]);
        let ct = headers::content_type(&session.req_header().headers);
        let masked = match super::hosted_mcp::decide(&route, &ct, upstream_body) {
            Ok(None) => masked,
            Ok(Some(b)) => Some((b, masked.map(|(_, t)| t).unwrap_or_default())),
            Err(e) => return self.answer(session, ctx, e).await,
        };
        // Limits decide before a human is asked to: a request over its budget never waits.
        let upstream_body = masked.as_ref().map_or(&body[..], |(m, _)| &m[..]);
        if let Err(e) = super::metering::admit(ctx, Some(upstream_body)).await {
            return self.answer(session, ctx, e).await;
        }
        if !route.approvals.is_empty() {
            // Boxed on its own: a request waiting for approval (1,000 may wait at once) holds
            // only the wait's state, not the forwarding's beside it.
            if let Some(answered) = Box::pin(self.hold(session, ctx, &route, &body)).await? {
                return Ok(answered);
            }
        }
        let (masked, tally) = masked.unwrap_or_else(|| (body, Tally::default()));
        ctx.request_tally = tally;
        let path = session.req_header().uri.path().to_string();
        let masked = super::metering::add_include_usage(ctx, &route, &path, masked);
        super::mcp::count_forwarded(ctx);
        self.forward_decided(session, ctx, masked).await
    }

    /// On a route whose body streams (no body policy) the request head goes upstream before the
    /// body has ended. An HTTP/2 body that broke its framing on arrival (a `content-length` the
    /// DATA before END_STREAM does not match, or a stream reset: the h2 library closes the
    /// stream) would send upstream the head of a request that can never be completed (the
    /// report's "empty POST"). So the body's first event is awaited here (bounded by
    /// `server.client_timeout`; kept in Pingora's retry buffer, which it forwards first), and an
    /// error ends the request before any upstream connection. `Ok(true)`: answered. A client
    /// that waits for `100 Continue` is not waited for; a mismatch that arrives later aborts the
    /// upstream request, never completes it.
    pub(super) async fn refuse_broken_stream(
        &self,
        session: &mut Session,
        ctx: &mut Box<Exchange>,
    ) -> Result<bool> {
        let head = session.req_header();
        if head.version != http::Version::HTTP_2
            || head.headers.contains_key(http::header::EXPECT)
            || session.downstream_session.is_body_done()
        {
            return Ok(false);
        }
        session.downstream_session.enable_retry_buffering();
        let first = tokio::time::timeout(
            self.client_timeout,
            session.downstream_session.read_request_body(),
        )
        .await;
        let Ok(Err(e)) = first else {
            return Ok(false);
        };
        let e = ApiError::new(
            400,
            "invalid_request_error",
            "malformed_body",
            format!("the request body does not match its framing ({e}); nothing was sent upstream"),
        );
        self.answer(session, ctx, e).await
    }

    /// Forwards a decided body: in this session when Pingora will call `request_body_filter`
    /// for it (the agent's body fitted the retry buffer), else through a subrequest that takes
    /// the exchange over.
    pub(super) async fn forward_decided(
        &self,
        session: &mut Session,
        ctx: &mut Box<Exchange>,
        masked: Vec<u8>,
    ) -> Result<bool> {
        ctx.decided_at = Some(std::time::Instant::now());
        if in_session(session, ctx.request_bytes, masked.len()) {
            let decided = bytes::Bytes::from(masked);
            // Recorded once here (Pingora may send it more than once if it retries).
            let stand_in = ctx.mcp.as_ref().is_some_and(|m| m.stand_in);
            if let Some(c) = ctx.capture.as_mut().filter(|_| !stand_in) {
                c.request_chunk(&decided);
            }
            ctx.decided_body = Some(decided);
            return Ok(false);
        }
        ctx.downstream_tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| (s.version.to_string(), s.cipher.to_string()));
        let exchange = Exchange::hand_over(ctx);
        match Box::pin(subrequest::forward(session, exchange, masked)).await? {
            Forwarded::Answered => Ok(true),
            // The subrequest logged it; an error here keeps Pingora from ending the response
            // as if it were complete (the connection is closed instead).
            Forwarded::Broken(e) => Err(e),
            Forwarded::Failed {
                error,
                api_error,
                exchange,
            } => {
                // The agent still needs an answer; the exchange is logged by whichever session
                // holds it (it comes back unless the subrequest logged its own error).
                if let Some(back) = exchange {
                    Exchange::take_back(ctx, back);
                }
                let err = api_error.unwrap_or_else(|| {
                    let (name, url) = ctx.route_and_upstream();
                    ApiError::from_proxy_error(&error, name, url)
                });
                self.answer(session, ctx, err).await
            }
        }
    }

    /// Applies the route's approval rules to the body as the agent sent it: `None` to go on,
    /// `Some(answered)` when the request was answered (refused, ticket, or the agent left).
    async fn hold(
        &self,
        session: &mut Session,
        ctx: &mut Box<Exchange>,
        route: &RouteRuntime,
        body: &[u8],
    ) -> Result<Option<bool>> {
        let Some(who) = ctx.identity.clone() else {
            return Error::e_explain(InternalError, "an approval check without an identity");
        };
        let descriptions = match (route.mcp.as_ref(), ctx.mcp.as_ref()) {
            (Some(rt), Some(m)) => rt.descriptions(&m.calls),
            _ => Vec::new(),
        };
        let outcome = self
            .approvals
            .check(
                session,
                &route.approvals,
                &route.route.name,
                &who,
                &ctx.id,
                body,
                &route.engine,
                &descriptions,
            )
            .await;
        if !matches!(outcome, Outcome::Proceed(_)) {
            // The request ends here, so no forwarded body reaches the record: keep the one the
            // approval was asked for (the writer masks it like every body).
            if let Some(c) = ctx.capture.as_mut() {
                c.request_chunk(&bytes::Bytes::copy_from_slice(body));
            }
        }
        match outcome {
            Outcome::Proceed(evidence) => {
                ctx.approval = evidence;
                Ok(None)
            }
            Outcome::Refuse(e, evidence) => {
                ctx.approval = Some(evidence);
                // On an MCP route the agent reads JSON-RPC errors.
                self.refuse(session, ctx, e).await.map(Some)
            }
            Outcome::Ticket(a, evidence) => {
                ctx.approval = Some(evidence);
                Box::pin(write_ticket(session, &ctx.id, &a)).await;
                Ok(Some(true))
            }
            Outcome::Abandoned(evidence) => {
                ctx.approval = Some(evidence);
                ctx.error = Some(ApiError::new(
                    499,
                    "invalid_request_error",
                    "client_gone",
                    "the agent disconnected while its request waited for approval",
                ));
                Ok(Some(true))
            }
        }
    }
}

/// Whether Pingora's own forwarding will call `request_body_filter` at the end of the agent's
/// body, where the decided body replaces it (`Gateway::request_body_filter`): the body was read
/// whole into the retry buffer (it is not truncated) and was not empty (Pingora's HTTP/2
/// upstream path makes no body call for an empty one), or both bodies are empty.
/// The agent's body must also be at its end as Pingora sees it: an HTTP/2 body followed by
/// trailers is not (h2 keeps the unread trailers), and Pingora would hand the buffer without
/// `end_of_stream`, then again with no body (HTTP/2 upstream: more than once); the subrequest
/// forwards such a body.
fn in_session(session: &mut Session, agent_bytes: u64, decided_len: usize) -> bool {
    !session.downstream_session.retry_buffer_truncated()
        && session.downstream_session.is_body_done()
        && (agent_bytes > 0 || decided_len == 0)
}

/// A JSON content type, or none and a body that starts like JSON.
fn looks_like_json(session: &Session, body: &[u8]) -> bool {
    let ct = headers::content_type(&session.req_header().headers);
    ct.contains("json")
        || (ct.is_empty()
            && body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{' || *b == b'['))
}

/// Masks the request body and applies request guardrails: the masked body and its tally, or
/// the error to answer with (a guardrail block, invalid JSON on a route that refuses it, a
/// body that is neither JSON nor UTF-8 text).
fn mask_request(
    session: &Session,
    ctx: &Exchange,
    route: &RouteRuntime,
    m: &RouteMasking,
    body: &[u8],
) -> std::result::Result<(Vec<u8>, Tally), ApiError> {
    let vault = ctx.vault.as_deref();
    let json_like = looks_like_json(session, body);
    let unreadable =
        |code: &'static str, why: String| ApiError::new(400, "invalid_request_error", code, why);
    let masked = if json_like {
        use crate::mask::json::JsonError;
        match crate::mask::json::mask_json(&m.engine, body, &m.request, vault, false) {
            Ok(x) => Some(x),
            // Never read as text: the upstream would read a structure the decision did not.
            Err(e @ JsonError::TooDeep) => return Err(unreadable("json_too_deep", e.to_string())),
            Err(e @ JsonError::DuplicateKey(_)) => {
                return Err(unreadable("duplicate_json_key", e.to_string()))
            }
            Err(e) if m.refuse_invalid_json => {
                return Err(unreadable(
                    "invalid_json",
                    format!("{e}; this route refuses bodies that are not valid JSON"),
                ));
            }
            // As text, an escaped secret (`\u0073k-...`) would be invisible to the detectors.
            Err(e) if memchr::memchr(b'\\', body).is_some() => {
                return Err(unreadable(
                    "invalid_json",
                    format!("{e}; a body that is not valid JSON is masked as text, and this one has escapes that text masking cannot read"),
                ));
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let (masked, tally) = match masked {
        Some(x) => x,
        // NUL bytes: UTF-16 or binary, where detectors would see every other byte.
        None => match std::str::from_utf8(body)
            .ok()
            .filter(|_| memchr::memchr(0, body).is_none())
        {
            Some(text) => {
                let (t, tally) = m.engine.mask(text, &m.request, vault, false);
                (t.into_bytes(), tally)
            }
            None => {
                return Err(ApiError::new(
                    415,
                    "invalid_request_error",
                    "uninspectable_body",
                    format!("route `{}` inspects request bodies, and this one is neither JSON nor UTF-8 text", route.route.name),
                ));
            }
        },
    };
    if let Some(d) = tally.blocked.clone() {
        super::routes::count(&tally, "request");
        let (msg, rule) = m.block_message(&d);
        if let Some(r) = rule {
            metrics::GUARDRAIL_BLOCKS.with_label_values(&[&r]).inc();
        }
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "request_blocked",
            msg,
        ));
    }
    Ok((masked, tally))
}
