//! The response body on its way to the agent, chunk by chunk, in one fixed order: the route's
//! masking (SSE event by event, NDJSON line by line, JSON whole, other text as a stream, binary
//! refused unless the policy lets it pass), then the scrubber that
//! catches the route's own credentials echoed back, then the capture for the record. What the
//! record holds is exactly what the agent received.
//!
//! Invariant (DESIGN.md 4, 5): a chunk the masker has not passed never reaches the agent; a
//! stream is never buffered whole (only JSON answers are, up to `server.max_body`); once a
//! guardrail ends the response, nothing more is sent.

use super::error::ApiError;
use super::headers;
use super::routes::{RouteMasking, RouteRuntime};
use crate::mask::injected::{SecretSet, StreamScrubber};
use crate::mask::lines::LinesMasker;
use crate::mask::sse::{SseError, SseMasker};
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
    /// Text or NDJSON by its label, not decided yet: an SSE client (an SDK asked to stream)
    /// parses a body as SSE whatever its content type, so one that opens like SSE is masked as
    /// SSE. The first line (or 256 bytes) decides.
    Sniff(Form, Vec<u8>, Option<Arc<Vault>>, Option<Arc<SecretSet>>),
    Sse(SseMasker),
    /// NDJSON / JSON Lines / JSON text sequences.
    Lines(LinesMasker),
    /// A JSON answer, gathered whole to be masked as JSON (pseudonyms restored from the vault).
    Json(Vec<u8>, Option<Arc<Vault>>),
    /// Other text, and the bytes of a character the last chunk cut short.
    Text(StreamMasker, Vec<u8>),
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
    /// The last chunk went through (`filter` with `end`): nothing is held any more.
    pub ended: bool,
}

impl ResponseBody {
    /// The body of an answer nobody inspects (no route, or one without masking or credentials).
    pub fn pass() -> ResponseBody {
        ResponseBody {
            masking: Masking::Pass,
            policy: None,
            scrubber: None,
            ended: false,
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
            let form = Form::of(&headers::content_type(&resp.headers));
            if form == Form::Binary && !m.pass_binary {
                return Err(ApiError::new(
                    502,
                    "upstream_error",
                    "response_not_maskable",
                    format!(
                        "route `{}` masks responses, and the upstream answered `{}`, which cannot be read as text to be masked; it is refused (a masking policy may allow it with `on_binary_response: pass`)",
                        route.route.name,
                        headers::content_type(&resp.headers)
                    ),
                ));
            }
            // An MCP route's events are JSON-RPC messages, each whole.
            let whole_events = route.route.mcp.is_some();
            out.masking = masking_for(resp, form, m, vault, route.secrets.clone(), whole_events)
                .map_err(setup_failed)?;
            out.policy = Some(m.clone());
        } else if let Some(scrub) = &route.scrub_streams {
            // No masking, but credentials to keep out: a stream is framed so that a key split
            // across two events (each half in its own delta) is caught as the SDK would join it.
            let form = Form::of(&headers::content_type(&resp.headers));
            if matches!(form, Form::Sse | Form::Lines { .. }) {
                let whole_events = route.route.mcp.is_some();
                out.masking =
                    masking_for(resp, form, scrub, None, route.secrets.clone(), whole_events)
                        .map_err(setup_failed)?;
                out.policy = Some(scrub.clone());
            }
        }
        if let Some(set) = &route.secrets {
            headers::scrub_response_headers(resp, set).map_err(setup_failed)?;
        }
        Ok(out)
    }

    /// Passes one chunk through masking and then the scrubber, in place.
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool, max: u64) {
        self.ended |= end;
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
            Masking::Sniff(form, buf, vault, secrets) => {
                if let Some(b) = body.as_ref() {
                    buf.extend_from_slice(b);
                }
                if !end && !buf.contains(&b'\n') && buf.len() < 256 {
                    return Some(Vec::new());
                }
                let sse = opens_like_sse(buf);
                let form = if sse { Form::Sse } else { *form };
                let whole = std::mem::take(buf);
                self.masking = stream_masker(form, m, vault.take(), secrets.take(), false);
                let mut rest = Some(Bytes::from(whole));
                self.mask(&mut rest, end, m, max)
            }
            Masking::Sse(sse) => {
                let r = stream_chunk(body, end, m, sse);
                self.after_stream(r, end)
            }
            Masking::Lines(lines) => {
                let r = stream_chunk(body, end, m, lines);
                self.after_stream(r, end)
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
            Masking::Text(tm, carry) => {
                // A character cut by the chunk's end waits for the rest of its bytes.
                let mut bytes = std::mem::take(carry);
                if let Some(b) = body.as_ref() {
                    bytes.extend_from_slice(b);
                }
                let keep = if end { 0 } else { utf8_incomplete_tail(&bytes) };
                *carry = bytes.split_off(bytes.len() - keep);
                let mut out = tm.push(&String::from_utf8_lossy(&bytes));
                if end {
                    out.push_str(&tm.finish());
                    self.tally.merge(std::mem::take(&mut tm.tally));
                }
                metrics::MASK_HOLDBACK.observe((tm.held() + carry.len()) as f64);
                Some(out.into_bytes())
            }
        }
    }

    /// After a chunk of a framed stream: its tally once it ends, and no more chunks once a
    /// guardrail (or an event too large to mask) ended it.
    fn after_stream(&mut self, r: StreamChunk, end: bool) -> Option<Vec<u8>> {
        if end || r.blocked {
            self.tally.merge(r.tally);
        }
        if r.blocked {
            self.masking = Masking::Blocked;
        } else if r.unframed {
            self.masking = Masking::Pass;
        }
        Some(r.out)
    }
}

/// A masker of a stream framed in documents (SSE events, lines).
trait Framed {
    fn push(&mut self, chunk: &[u8]) -> std::result::Result<Vec<u8>, SseError>;
    fn finish(&mut self) -> Vec<u8>;
    fn give_up(&mut self) -> Vec<u8>;
    fn held(&self) -> usize;
    fn tally(&mut self) -> &mut Tally;
}

macro_rules! framed {
    ($t:ty) => {
        impl Framed for $t {
            fn push(&mut self, chunk: &[u8]) -> std::result::Result<Vec<u8>, SseError> {
                <$t>::push(self, chunk)
            }
            fn finish(&mut self) -> Vec<u8> {
                <$t>::finish(self)
            }
            fn give_up(&mut self) -> Vec<u8> {
                <$t>::give_up(self)
            }
            fn held(&self) -> usize {
                <$t>::held(self)
            }
            fn tally(&mut self) -> &mut Tally {
                &mut self.tally
            }
        }
    };
}
framed!(SseMasker);
framed!(LinesMasker);

struct StreamChunk {
    out: Vec<u8>,
    blocked: bool,
    /// Framing stopped (a credentials-only route past a bound): the rest passes as bytes.
    unframed: bool,
    tally: Tally,
}

/// One chunk through a framed stream masker (SSE or lines): its output, or the error event
/// that ends the stream when an event is too large or a guardrail blocked a value.
fn stream_chunk(
    body: &Option<Bytes>,
    end: bool,
    m: &RouteMasking,
    framed: &mut dyn Framed,
) -> StreamChunk {
    let mut blocked = false;
    let mut unframed = false;
    let mut out = match body.as_ref().map(|b| framed.push(b)) {
        Some(Ok(o)) => o,
        // A route that masks nothing frames its streams only so that the credential scrubber
        // sees keys split across events; an event past the bound (a 3 MiB one) is not refused
        // there: it and the rest of the stream go through the byte scrubber.
        Some(Err(_)) if !m.restore && m.response.allows_all() => {
            unframed = true;
            framed.give_up()
        }
        Some(Err(e)) => {
            blocked = true;
            blocked_event(&format!("the stream was ended: {e}"))
        }
        None => Vec::new(),
    };
    if end && !blocked && !unframed {
        out.extend(framed.finish());
    }
    metrics::MASK_HOLDBACK.observe(framed.held() as f64);
    let tally = framed.tally();
    if let Some(d) = tally.blocked.clone() {
        blocked = true;
        out = blocked_event(&guardrail_message(m, &d));
    }
    let tally = if end || blocked {
        std::mem::take(tally)
    } else {
        Tally::default()
    };
    StreamChunk {
        out,
        blocked,
        unframed,
        tally,
    }
}

/// How many bytes at the end of `b` begin a UTF-8 character that is not complete yet.
fn utf8_incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let x = b[b.len() - back];
        if x & 0xC0 != 0x80 {
            let need = match x {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if need > back { back } else { 0 };
        }
    }
    0
}

/// How a response body is read for masking, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Sse,
    /// NDJSON / JSON Lines, or (`seq`) JSON text sequences.
    Lines {
        seq: bool,
    },
    Json,
    Text,
    /// Not text: audio, images, archives, `application/octet-stream`...
    Binary,
}

impl Form {
    fn of(content_type: &str) -> Form {
        let ct = content_type.trim().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let textual_app = [
            "json",
            "xml",
            "javascript",
            "ecmascript",
            "x-www-form-urlencoded",
            "yaml",
            "toml",
            "graphql",
            "sql",
            "csv",
            "markdown",
            "x-sh",
            "problem",
        ];
        match essence {
            "text/event-stream" => Form::Sse,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines" => Form::Lines { seq: false },
            "application/json-seq" => Form::Lines { seq: true },
            "" => Form::Text,
            e if e.contains("json") => Form::Json,
            e if e.starts_with("text/") || e.starts_with("multipart/") => Form::Text,
            e if e.starts_with("application/") && textual_app.iter().any(|t| e.contains(t)) => {
                Form::Text
            }
            _ if ct.contains("charset=") => Form::Text,
            _ => Form::Binary,
        }
    }
}

/// The masker for this form of body (binary bodies pass when the policy allows them), and the
/// header changes a new length needs.
fn masking_for(
    resp: &mut ResponseHeader,
    form: Form,
    m: &RouteMasking,
    vault: Option<Arc<Vault>>,
    secrets: Option<Arc<crate::mask::injected::SecretSet>>,
    whole_events: bool,
) -> Result<Masking> {
    let masking = match form {
        Form::Json => Masking::Json(Vec::new(), vault),
        Form::Binary => return Ok(Masking::Pass),
        Form::Text | Form::Lines { .. } if !whole_events => {
            Masking::Sniff(form, Vec::new(), vault, secrets)
        }
        form => stream_masker(form, m, vault, secrets, whole_events),
    };
    resp.remove_header(&header::CONTENT_LENGTH);
    if resp.version != http::Version::HTTP_2 {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(masking)
}

/// The masker of a streamed form (SSE, lines, text).
fn stream_masker(
    form: Form,
    m: &RouteMasking,
    vault: Option<Arc<Vault>>,
    secrets: Option<Arc<SecretSet>>,
    whole_events: bool,
) -> Masking {
    let (engine, rules) = (m.engine.clone(), m.response.clone());
    match form {
        Form::Sse => {
            let sse = SseMasker::new(engine, rules, vault, m.restore).with_secrets(secrets);
            Masking::Sse(if whole_events {
                sse.whole_events()
            } else {
                sse
            })
        }
        Form::Lines { seq } => Masking::Lines(
            LinesMasker::new(engine, rules, vault, m.restore, seq).with_secrets(secrets),
        ),
        _ => Masking::Text(
            StreamMasker::new(engine, rules, vault, m.restore),
            Vec::new(),
        ),
    }
}

/// Whether a body begins as an SSE stream does: a `data:`, `event:`, `id:` or `retry:` field or
/// a `:` comment on its first line (after a BOM and blank lines).
fn opens_like_sse(b: &[u8]) -> bool {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let b = &b[start..];
    [&b"data:"[..], b"event:", b"id:", b"retry:", b":"]
        .iter()
        .any(|f| b.starts_with(f))
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
