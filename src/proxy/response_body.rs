//! The response body on its way to the agent, chunk by chunk, in one fixed order: the route's
//! masking (SSE event by event, JSON whole, other text as a stream), then the scrubber that
//! catches the route's own credentials echoed back, then the capture for the record. What the
//! record holds is exactly what the agent received.
//!
//! Invariant (DESIGN.md 4, 5): a chunk the masker has not passed never reaches the agent; a
//! stream is never buffered whole (only JSON answers are, up to `server.max_body`); once a
//! guardrail ends the response, nothing more is sent.

use super::error::ApiError;
use super::headers;
use super::routes::{RouteMasking, RouteRuntime};
use crate::mask::injected::StreamScrubber;
use crate::mask::sse::SseMasker;
use crate::mask::stream::StreamMasker;
use crate::mask::{Tally, Vault};
use crate::metrics;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use std::sync::Arc;

/// How the route's masking reads this response, chosen from its content type.
enum Masking {
    /// No masking policy, or a binary body: passed as it is.
    Pass,
    Sse(SseMasker),
    /// A JSON answer, gathered whole to be masked as JSON (pseudonyms restored from the vault).
    Json(Vec<u8>, Option<Arc<Vault>>),
    Text(StreamMasker),
    /// A guardrail (or an over-large JSON answer) ended the response: later chunks are dropped.
    Blocked,
}

/// The response side of one exchange.
pub struct ResponseBody {
    masking: Masking,
    policy: Option<Arc<RouteMasking>>,
    scrubber: Option<StreamScrubber>,
    /// What masking did to this response (counted once the exchange is logged).
    pub tally: Tally,
}

impl ResponseBody {
    /// The body of an answer nobody inspects (no route, or one without masking or credentials).
    pub fn pass() -> ResponseBody {
        ResponseBody {
            masking: Masking::Pass,
            policy: None,
            scrubber: None,
            tally: Tally::default(),
        }
    }

    /// Sets up the route's response filters from the upstream's response header. A compressed
    /// answer on a route that inspects responses is refused (it could be neither checked for
    /// credentials nor masked). When masking changes the length, `Content-Length` goes.
    pub fn start(
        resp: &mut ResponseHeader,
        route: &RouteRuntime,
        vault: Option<Arc<Vault>>,
    ) -> std::result::Result<ResponseBody, ApiError> {
        let mut out = ResponseBody::pass();
        if route.secrets.is_none() && route.masking.is_none() {
            return Ok(out);
        }
        if let Some(enc) = headers::compressed(&resp.headers) {
            return Err(ApiError::new(
                502,
                "upstream_error",
                "upstream_encoding_refused",
                format!(
                    "route `{}`: the upstream sent a compressed body ({enc}) although the gateway asked for identity; it cannot be checked for credentials or masked, so it is refused",
                    route.route.name
                ),
            ));
        }
        out.scrubber = route.secrets.clone().map(StreamScrubber::new);
        let setup_failed = |e: Box<pingora::Error>| {
            ApiError::new(
                500,
                "internal_error",
                "response_setup_failed",
                e.to_string(),
            )
        };
        if let Some(m) = &route.masking {
            out.masking = masking_for(resp, m, vault).map_err(setup_failed)?;
            out.policy = Some(m.clone());
        }
        if let Some(set) = &route.secrets {
            headers::scrub_response_headers(resp, set).map_err(setup_failed)?;
        }
        Ok(out)
    }

    /// Passes one chunk through masking and then the scrubber, in place.
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool, max: u64) {
        if matches!(self.masking, Masking::Blocked) {
            *body = None;
            return;
        }
        if let Some(m) = self.policy.clone() {
            if let Some(out) = self.mask(body, end, &m, max) {
                *body = Some(Bytes::from(out));
            }
        }
        if let Some(scrubber) = self.scrubber.as_mut() {
            *body = scrubber.push(body.take(), end);
        }
    }

    /// Masks one chunk: the bytes to send instead, or `None` to send it as it is.
    fn mask(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
        m: &RouteMasking,
        max: u64,
    ) -> Option<Vec<u8>> {
        match &mut self.masking {
            Masking::Pass | Masking::Blocked => None,
            Masking::Sse(sse) => {
                let mut blocked = false;
                let mut out = match body.as_ref().map(|b| sse.push(b)) {
                    Some(Ok(o)) => o,
                    Some(Err(e)) => {
                        blocked = true;
                        blocked_event(&format!("the stream was ended: {e}"))
                    }
                    None => Vec::new(),
                };
                if end && !blocked {
                    out.extend(sse.finish());
                }
                metrics::MASK_HOLDBACK.observe(sse.held() as f64);
                if let Some(d) = sse.tally.blocked.clone() {
                    blocked = true;
                    out = blocked_event(&guardrail_message(m, &d));
                }
                if end || blocked {
                    self.tally.merge(std::mem::take(&mut sse.tally));
                }
                if blocked {
                    self.masking = Masking::Blocked;
                }
                Some(out)
            }
            Masking::Json(buf, vault) => {
                if let Some(b) = body.as_ref() {
                    buf.extend_from_slice(b);
                }
                if buf.len() as u64 > max {
                    // A JSON answer is masked whole; one larger than server.max_body is not
                    // forwarded.
                    self.masking = Masking::Blocked;
                    let msg = format!("the upstream's JSON response is larger than server.max_body ({max} bytes) and cannot be masked");
                    return Some(
                        ApiError::new(502, "upstream_error", "response_too_large", msg)
                            .body()
                            .to_vec(),
                    );
                }
                if !end {
                    return Some(Vec::new());
                }
                let whole = std::mem::take(buf);
                let (out, t) = mask_json_answer(m, &whole, vault.as_deref());
                let out = match t.blocked.clone() {
                    Some(d) => ApiError::new(
                        502,
                        "guardrail_error",
                        "guardrail_blocked",
                        guardrail_message(m, &d),
                    )
                    .body()
                    .to_vec(),
                    None => out,
                };
                self.tally.merge(t);
                Some(out)
            }
            Masking::Text(tm) => {
                let text = body
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let mut out = tm.push(&text);
                if end {
                    out.push_str(&tm.finish());
                    self.tally.merge(std::mem::take(&mut tm.tally));
                }
                metrics::MASK_HOLDBACK.observe(tm.held() as f64);
                Some(out.into_bytes())
            }
        }
    }
}

/// The masker for this content type (SSE, JSON, other text; binary bodies pass), and the
/// header changes a new length needs.
fn masking_for(
    resp: &mut ResponseHeader,
    m: &RouteMasking,
    vault: Option<Arc<Vault>>,
) -> Result<Masking> {
    let ct = headers::content_type(&resp.headers);
    let masking = if ct.starts_with("text/event-stream") {
        Masking::Sse(SseMasker::new(
            m.engine.clone(),
            m.response.clone(),
            vault,
            m.restore,
        ))
    } else if ct.contains("json") {
        Masking::Json(Vec::new(), vault)
    } else if ct.starts_with("text/") || ct.is_empty() {
        Masking::Text(StreamMasker::new(
            m.engine.clone(),
            m.response.clone(),
            vault,
            m.restore,
        ))
    } else {
        return Ok(Masking::Pass);
    };
    resp.remove_header(&header::CONTENT_LENGTH);
    if resp.version != http::Version::HTTP_2 {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(masking)
}

/// A whole JSON answer masked as JSON, or as text when it does not parse.
fn mask_json_answer(m: &RouteMasking, whole: &[u8], vault: Option<&Vault>) -> (Vec<u8>, Tally) {
    match crate::mask::json::mask_json(&m.engine, whole, &m.response, vault, m.restore) {
        Ok(x) => x,
        Err(_) => {
            let text = String::from_utf8_lossy(whole);
            let (masked, t) = m.engine.mask(&text, &m.response, vault, m.restore);
            (masked.into_bytes(), t)
        }
    }
}

/// The refusal message for a response guardrail, counted in `agentgate_guardrail_blocks_total`.
fn guardrail_message(m: &RouteMasking, detector: &str) -> String {
    let (msg, rule) = m.block_message(detector);
    if let Some(r) = rule {
        metrics::GUARDRAIL_BLOCKS.with_label_values(&[&r]).inc();
    }
    msg
}

/// The SSE error event that ends a stream a response guardrail stopped.
fn blocked_event(message: &str) -> Vec<u8> {
    let v = serde_json::json!({"error": {"message": message, "type": "guardrail_error", "code": "guardrail_blocked"}});
    format!("event: error\ndata: {v}\n\n").into_bytes()
}
