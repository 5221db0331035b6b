//! One exchange (a request and its response) as it travels through the phases: who asked,
//! which route, what masking did, the record being captured, and how it ended. When a decided
//! body is forwarded through a subrequest, the `Exchange` itself moves into the subrequest and
//! its `Role` says which session holds it; nothing is copied field by field.
//!
//! Invariant: every exchange is counted and logged exactly once (one session line, at most one
//! record), by the session that holds it when it ends; both are written from one `Summary`.

use super::error::ApiError;
use super::response_body::ResponseBody;
use super::routes::{self, RouteRuntime};
use super::subrequest::SubrequestReport;
use crate::identity::Identity;
use crate::mask::{Tally, Vault};
use crate::metrics::{self, RouteMetrics};
use crate::record::{Capture, Recorder};
use crate::session_log::{self, SessionRecord, Tls};
use crate::util::time::{millis, rfc3339};
use pingora::protocols::tls::SslDigest;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which session holds the exchange.
pub enum Role {
    /// The agent's own session, from the request's first byte.
    Main,
    /// The agent's session after it handed the exchange to a subrequest: it only relays the
    /// subrequest's answer (and answers itself if the subrequest fails before any response).
    Delegated,
    /// A subrequest forwarding a decided body of `body_len` bytes, reporting to the main session.
    Subrequest {
        body_len: usize,
        report: Arc<SubrequestReport>,
    },
}

pub struct Exchange {
    pub id: String,
    pub role: Role,
    pub route: Option<Arc<RouteRuntime>>,
    pub identity: Option<Arc<Identity>>,
    pub started: Instant,
    pub sent_upstream_at: Option<Instant>,
    pub ttfb: Option<Duration>,
    pub upstream_reused: Option<bool>,
    /// The upstream leg's TLS evidence (shared with the connection, no copy per request).
    pub upstream_tls: Option<Arc<SslDigest>>,
    /// The agent leg's TLS version and cipher, kept when the exchange leaves the agent's session
    /// (a subrequest has no TLS of its own); otherwise read from the session when logging.
    pub downstream_tls: Option<(String, String)>,
    /// Request body bytes as the agent sent them.
    pub request_bytes: u64,
    /// Response body bytes as the agent received them.
    pub response_bytes: u64,
    pub error: Option<ApiError>,
    pub vault: Option<Arc<Vault>>,
    pub request_tally: Tally,
    pub response: ResponseBody,
    /// What the record of this exchange will hold.
    pub capture: Option<Capture>,
    /// Approval evidence (one entry per matched rule).
    pub approval: Option<serde_json::Value>,
    /// On an MCP route: the JSON-RPC side (requests decided, the answer's filter).
    pub mcp: Option<Box<super::mcp::McpExchange>>,
    /// The decided body, forwarded by the agent's own session in place of what the agent sent
    /// (`request_body.rs::forward_decided`); `None` when the body streams through as sent or a
    /// subrequest forwards it.
    pub decided_body: Option<bytes::Bytes>,
    /// Counts this request while it runs (graceful shutdown waits for it); stays with the
    /// agent's session, which ends last.
    pub in_flight: Option<crate::shutdown::InFlight>,
    /// Usage and limits (`metering.rs`): what the request asked, its reservation, the scanner.
    pub metering: Option<Box<super::metering::Metering>>,
    /// Its place in a trace, when tracing is on.
    pub trace: Option<crate::telemetry::TraceIds>,
    /// When identity, route and access were settled, and when the body was decided on.
    pub admitted_at: Option<Instant>,
    pub decided_at: Option<Instant>,
}

impl Exchange {
    /// A new exchange with a fresh request id, held by the agent's session.
    pub fn new() -> Exchange {
        Exchange::with_id(crate::util::hex::new_request_id())
    }

    fn with_id(id: String) -> Exchange {
        Exchange {
            id,
            role: Role::Main,
            route: None,
            identity: None,
            started: Instant::now(),
            sent_upstream_at: None,
            ttfb: None,
            upstream_reused: None,
            upstream_tls: None,
            downstream_tls: None,
            request_bytes: 0,
            response_bytes: 0,
            error: None,
            vault: None,
            request_tally: Tally::default(),
            response: ResponseBody::pass(),
            capture: None,
            approval: None,
            mcp: None,
            decided_body: None,
            in_flight: None,
            metering: None,
            trace: None,
            admitted_at: None,
            decided_at: None,
        }
    }

    /// Moves the exchange out for a subrequest to take over, leaving the agent's session what it
    /// still needs: the id and route (for an error answer) and the in-flight guard.
    pub fn hand_over(this: &mut Box<Exchange>) -> Box<Exchange> {
        let mut stub = Exchange::with_id(this.id.clone());
        stub.role = Role::Delegated;
        stub.route = this.route.clone();
        stub.started = this.started;
        stub.trace = this.trace;
        stub.in_flight = this.in_flight.take();
        std::mem::replace(this, Box::new(stub))
    }

    /// Takes back an exchange a subrequest returned (it failed before any response).
    pub fn take_back(this: &mut Box<Exchange>, mut back: Box<Exchange>) {
        back.role = Role::Main;
        back.in_flight = this.in_flight.take();
        *this = back;
    }

    /// The length of the decided body this session forwards (`None`: the agent's body streams
    /// through as sent).
    pub fn forwarded_body_len(&self) -> Option<usize> {
        match &self.role {
            Role::Subrequest { body_len, .. } => Some(*body_len),
            _ => self.decided_body.as_ref().map(|b| b.len()),
        }
    }

    pub fn report(&self) -> Option<&Arc<SubrequestReport>> {
        match &self.role {
            Role::Subrequest { report, .. } => Some(report),
            _ => None,
        }
    }

    pub fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map_or(metrics::NO_ROUTE, |r| r.route.name.as_str())
    }

    /// The route's name and upstream URL, for error messages.
    pub fn route_and_upstream(&self) -> (&str, &str) {
        self.route
            .as_ref()
            .map(|r| (r.route.name.as_str(), r.route.upstream.url.as_str()))
            .unwrap_or((metrics::NO_ROUTE, ""))
    }

    /// Counts the exchange and writes its session line and record. `session` is the one that
    /// holds the exchange now (the agent's, or the subrequest's with the agent's request header).
    pub fn finish(
        &mut self,
        session: &Session,
        recorder: Option<&Recorder>,
        unmatched: &RouteMetrics,
    ) {
        routes::count(&self.request_tally, "request");
        routes::count(&self.response.tally, "response");
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = self.started.elapsed();
        let m = self.route.as_ref().map_or(unmatched, |r| &r.metrics);
        m.count_status(status);
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(t) = self.ttfb {
            m.ttfb.observe(t.as_secs_f64());
        }
        m.request_bytes.inc_by(self.request_bytes);
        m.response_bytes.inc_by(self.response_bytes);
        if let Some(err) = &self.error {
            metrics::ERRORS
                .with_label_values(&[self.route_name(), err.code])
                .inc();
        }
        let asked = self
            .metering
            .as_ref()
            .and_then(|m| m.asked.as_ref())
            .map(|a| (a.model.clone(), a.max_output));
        let usage = super::metering::finish(self, status);
        if let Some(ids) = self.trace {
            self.trace_span(session, ids, status, asked, usage.as_ref());
        }
        let summary = Summary {
            usage,
            status,
            elapsed,
            masked: masked_summary(&self.request_tally, &self.response.tally),
            downstream_tls: match &self.downstream_tls {
                Some((version, cipher)) => Some(Tls {
                    version: version.as_str(),
                    cipher: cipher.as_str(),
                }),
                None => session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .map(|s| tls_evidence(s)),
            },
        };
        self.write_session_line(session, &summary);
        if let (Some(rec), Some(c)) = (recorder, self.capture.take()) {
            let draft = self.draft(session, &summary, c);
            rec.submit(draft);
        }
    }

    /// The exchange's spans (`crate::telemetry`), with the times its phases ended.
    fn trace_span(
        &self,
        session: &Session,
        ids: crate::telemetry::TraceIds,
        status: u16,
        asked: Option<(Option<String>, Option<u64>)>,
        usage: Option<&serde_json::Value>,
    ) {
        let now = SystemTime::now();
        let at = |i: Instant| now - i.elapsed();
        let req = session.req_header();
        let (request_model, max_tokens) = asked.unwrap_or_default();
        let n = |k: &str| usage.and_then(|u| u.get(k)).and_then(|v| v.as_u64());
        crate::telemetry::record(&crate::telemetry::ExchangeSpan {
            ids,
            started: at(self.started),
            admitted: self.admitted_at.map(at),
            decided: self.decided_at.map(at),
            upstream_sent: self.sent_upstream_at.map(at),
            upstream_first_byte: self.sent_upstream_at.zip(self.ttfb).map(|(s, t)| at(s) + t),
            ended: now,
            route: self.route.as_ref().map(|r| r.route.name.as_str()),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            subject: self.identity.as_ref().map(|i| i.subject.as_str()),
            request_model: request_model.as_deref(),
            response_model: usage.and_then(|u| u.get("model")).and_then(|m| m.as_str()),
            max_tokens,
            input_tokens: n("input"),
            output_tokens: n("output"),
            error: self.error.as_ref().map(|e| e.code),
            upstream_host: self.route.as_ref().map(|r| r.route.upstream.host.as_str()),
        });
    }

    fn write_session_line(&self, session: &Session, s: &Summary<'_>) {
        let req = session.req_header();
        // Secrets and personal data in the path are masked here as in the record.
        let path = match &self.route {
            Some(r) if r.engine.any_candidate(req.uri.path().as_bytes()) => {
                std::borrow::Cow::Owned(r.engine.mask(req.uri.path(), &REDACT_ALL, None, false).0)
            }
            _ => std::borrow::Cow::Borrowed(req.uri.path()),
        };
        session_log::emit(&SessionRecord {
            ts: rfc3339(SystemTime::now()),
            kind: "exchange",
            request_id: &self.id,
            route: self.route.as_ref().map(|r| r.route.name.as_str()),
            method: req.method.as_str(),
            path: &path,
            status: s.status,
            duration_ms: millis(s.elapsed),
            upstream_ttfb_ms: self.ttfb.map(millis),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            http_version: session_log::version_str(req.version),
            downstream_tls: s.downstream_tls,
            upstream_tls: self.upstream_tls.as_deref().map(tls_evidence),
            upstream_reused: self.upstream_reused,
            identity: self.identity.as_deref(),
            masked: s.masked.as_ref(),
            approval: self.approval.as_ref(),
            usage: s.usage.as_ref(),
            error: self.error.as_ref().map(|e| e.code),
        });
    }

    /// The record's draft (masked and formatted by the recorder's writer, off this thread).
    fn draft(&self, session: &Session, s: &Summary<'_>, c: Capture) -> crate::record::Draft {
        let req = session.req_header();
        let started_at = SystemTime::now() - s.elapsed;
        let owned = |t: &Tls<'_>| (t.version.to_string(), t.cipher.to_string());
        crate::record::Draft {
            engine: self.route.as_ref().map(|r| r.engine.clone()),
            id: self.id.clone(),
            ts: rfc3339(started_at),
            ts_ms: started_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            conversation: c.conversation,
            identity: self.identity.clone(),
            route: self.route.as_ref().map(|r| r.route.name.clone()),
            mode: c.mode,
            method: req.method.to_string(),
            path: req
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            request_headers: c.request_headers,
            request_body: Some(c.request_body),
            request_bytes: self.request_bytes,
            request_truncated: c.request_truncated,
            status: if s.status != 0 { s.status } else { c.status },
            response_headers: c.response_headers,
            response_body: Some(c.response_body),
            response_bytes: self.response_bytes,
            response_truncated: c.response_truncated,
            events: c.sse.then_some(c.events),
            masked: s.masked.clone(),
            guardrail: self
                .request_tally
                .blocked
                .clone()
                .or_else(|| self.response.tally.blocked.clone()),
            approval: self.approval.clone(),
            usage: s.usage.clone(),
            error: self.error.as_ref().map(|e| e.code.to_string()),
            downstream_tls: s.downstream_tls.as_ref().map(owned),
            upstream_tls: self
                .upstream_tls
                .as_deref()
                .map(tls_evidence)
                .as_ref()
                .map(owned),
            duration_ms: millis(s.elapsed),
            ttfb_ms: self.ttfb.map(millis),
        }
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

/// What a session line's path is masked with: every detector redacts (as in records).
static REDACT_ALL: std::sync::LazyLock<crate::mask::Rules> =
    std::sync::LazyLock::new(|| crate::mask::Rules::all(crate::mask::Action::Redact));

/// How the exchange ended, computed once for the session line and the record.
struct Summary<'a> {
    /// What the exchange used and cost (model calls).
    usage: Option<serde_json::Value>,
    status: u16,
    elapsed: Duration,
    masked: Option<serde_json::Value>,
    downstream_tls: Option<Tls<'a>>,
}

/// The version and cipher of one TLS leg, as the session line records them.
pub fn tls_evidence(s: &SslDigest) -> Tls<'_> {
    Tls {
        version: s.version.as_ref(),
        cipher: s.cipher.as_ref(),
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
