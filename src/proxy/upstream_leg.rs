//! The upstream leg: the route's pooled peer, the TLS evidence checked before any request byte
//! is sent (version, pins), which failed requests may be sent again, and TLS failure counts.
//!
//! Invariant (DESIGN.md 1): no request byte goes to an upstream whose TLS evidence fails the
//! route's checks.

use super::error::ApiError;
use super::exchange::Exchange;
use crate::metrics;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::Session;

/// The route's pooled, verified TLS peer.
pub async fn peer(ctx: &mut Exchange) -> Result<Box<HttpPeer>> {
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

/// Checks a connected upstream's TLS evidence and keeps it for the record.
pub fn check_tls(ctx: &mut Exchange, digest: Option<&Digest>) -> Result<()> {
    let Some(route) = ctx.route.clone() else {
        return Ok(());
    };
    let upstream = &route.route.upstream;
    if !upstream.tls {
        return Ok(());
    }
    let Some(ssl) = digest.and_then(|d| d.ssl_digest.as_ref()) else {
        let why = "the connection has no TLS evidence".to_string();
        return refuse(ctx, "upstream_tls_failed", why);
    };
    ctx.upstream_tls = Some(ssl.clone());
    if let Err((code, why)) = route.target.check_evidence(upstream, ssl) {
        return refuse(ctx, code, why);
    }
    Ok(())
}

/// Refuses a connected upstream whose TLS evidence fails a check; no request byte was sent.
fn refuse(ctx: &mut Exchange, code: &'static str, why: String) -> Result<()> {
    metrics::TLS_HANDSHAKE_FAILURES
        .with_label_values(&["upstream"])
        .inc();
    let (name, url) = ctx
        .route
        .as_ref()
        .map(|r| (r.route.name.as_str(), r.route.upstream.url.as_str()))
        .unwrap_or_default();
    ctx.error = Some(ApiError::new(
        502,
        "upstream_error",
        code,
        format!("route `{name}`: upstream {url} refused: {why}"),
    ));
    Error::e_explain(HTTPStatus(502), why)
}

/// Pingora retries only idempotent methods; an HTTP/2 stream the upstream says it never
/// processed (above GOAWAY's last stream id, or REFUSED_STREAM) is safe to send again on a new
/// connection whatever the method (RFC 9113 §8.7), and agents mostly POST.
pub fn decide_retry(
    peer: &HttpPeer,
    session: &mut Session,
    e: Box<Error>,
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

/// Counts a failed upstream TLS handshake in `agentgate_tls_handshake_failures_total`.
pub fn count_tls_failure(e: &Error) {
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
}
