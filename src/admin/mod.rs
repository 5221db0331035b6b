//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process is up) and
//! `/readyz` (routes loaded, listeners started, every OIDC issuer's keys loaded once;
//! 503 otherwise, with the reason); and, for people, `/v1/approvals` (approvers decide) and
//! `/v1/sessions` (auditors read records), authenticated with the gateway's own identity
//! sources (OIDC token or service-account token as `Authorization: Bearer`).

pub mod console;

use crate::approval::{Approval, State};
use crate::identity::Identity;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct AdminApp {
    pub ready: Arc<Readiness>,
    /// Not ready until every OIDC issuer's keys (of the active configuration) were loaded once.
    pub active: Arc<crate::proxy::ActiveConfig>,
    /// The record store, for `GET /v1/sessions[/{id}]`.
    pub records: Option<std::path::PathBuf>,
    pub approvals: Arc<crate::approval::Approvals>,
    /// Groups that may read sessions and every approval.
    pub auditors: Vec<String>,
    /// The web console (`admin.console`), when configured.
    pub console: Option<Arc<console::Console>>,
}

const JSON: &str = "application/json";

pub fn json_error(status: u16, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    text(
        status,
        JSON,
        serde_json::json!({"error": {"message": message.to_string()}})
            .to_string()
            .into_bytes(),
    )
}

/// The largest decision body read (a reason is at most 2000 bytes).
const MAX_DECISION_BODY: usize = 16 * 1024;

/// A query parameter, percent-decoded (`+` is a space); a key without `=` has the empty value.
pub fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl AdminApp {
    fn auditor(&self, who: &Identity) -> bool {
        who.groups.iter().any(|g| self.auditors.contains(g))
    }

    /// An approval as one caller sees it: with whether they may decide, and its clock.
    fn view(&self, a: &Approval, who: &Identity) -> Option<serde_json::Value> {
        let approver = who.groups.iter().any(|g| a.approver_groups.contains(g));
        let requester = a.requester.subject == who.subject && a.requester.issuer == who.issuer;
        if !(approver || requester || self.auditor(who)) {
            return None;
        }
        let mut v = serde_json::to_value(a).ok()?;
        let now = crate::approval::now_ms();
        let decided_by_me = a
            .decisions
            .iter()
            .any(|d| d.by.subject == who.subject && d.by.issuer == who.issuer);
        v["can_decide"] =
            (approver && !requester && !decided_by_me && a.state == State::Pending).into();
        v["waiting_s"] = (a.decided_ms.unwrap_or(now).saturating_sub(a.created_ms) / 1000).into();
        v["expires_in_s"] = (a.expires_ms.saturating_sub(now) / 1000).into();
        Some(v)
    }

    async fn approvals(
        &self,
        session: &mut ServerSession,
        who: &Identity,
        path: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let rest = path
            .trim_start_matches("/v1/approvals")
            .trim_start_matches('/');
        if rest.is_empty() {
            if method != http::Method::GET {
                return json_error(405, "use GET /v1/approvals");
            }
            let state = match query_param(query, "state").as_deref() {
                None | Some("") | Some("all") => None,
                Some(s) => match State::parse(s) {
                    Some(s) => Some(s),
                    None => return json_error(400, format!("unknown state `{s}`")),
                },
            };
            let limit: usize = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let list: Vec<_> = self
                .approvals
                .list(state, usize::MAX)
                .iter()
                .filter_map(|a| self.view(a, who))
                .take(limit)
                .collect();
            return text(200, JSON, serde_json::to_vec(&list).unwrap_or_default());
        }
        let (id, action) = match rest.split_once('/') {
            Some((id, action)) => (id, Some(action)),
            None => (rest, None),
        };
        match (method.as_str(), action) {
            ("GET", None) => match self.approvals.get(id).and_then(|a| self.view(&a, who)) {
                Some(v) => text(200, JSON, v.to_string().into_bytes()),
                None => json_error(404, format!("no approval {id} that you may see")),
            },
            ("POST", Some(action @ ("approve" | "deny"))) => {
                let mut body = Vec::new();
                loop {
                    match session.read_request_body().await {
                        Ok(Some(b)) => {
                            body.extend_from_slice(&b);
                            if body.len() > MAX_DECISION_BODY {
                                return json_error(413, "the decision body is too large");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return json_error(400, format!("reading the body: {e}")),
                    }
                }
                let reason = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => v
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or("")
                        .to_string(),
                    Err(_) => {
                        return json_error(400, r#"send a JSON body: {"reason": "why"}"#)
                    }
                };
                match self.approvals.decide(id, who, action == "approve", &reason) {
                    Ok(a) => {
                        log::info!(
                            "approval {id}: {} by {} ({reason}); now {}",
                            action,
                            who.subject,
                            a.state.as_str()
                        );
                        let v = self.view(&a, who).unwrap_or_default();
                        text(200, JSON, v.to_string().into_bytes())
                    }
                    Err(r) => json_error(r.status, r.message),
                }
            }
            _ => json_error(
                404,
                "try GET /v1/approvals[?state=pending], GET /v1/approvals/ID, POST /v1/approvals/ID/approve|deny",
            ),
        }
    }

    fn sessions(&self, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        let json = "application/json";
        let Some(dir) = &self.records else {
            return text(404, json, br#"{"error":"recording is off"}"#.to_vec());
        };
        use crate::record::store;
        if let Some(id) = path.strip_prefix("/v1/sessions/") {
            let entry = store::read_index(dir)
                .into_iter()
                .rev()
                .find(|e| e.id == id);
            return match entry.map(|e| store::read_record(dir, &e)) {
                Some(Ok(r)) => text(200, json, r.to_string().into_bytes()),
                Some(Err(e)) => text(
                    500,
                    json,
                    serde_json::json!({"error": e.to_string()})
                        .to_string()
                        .into_bytes(),
                ),
                None => text(404, json, br#"{"error":"no such session"}"#.to_vec()),
            };
        }
        let limit: usize = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let route = query_param(query, "route");
        let who = query_param(query, "identity");
        let conv = query_param(query, "conversation");
        let since: u64 = query_param(query, "since_ms")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let list: Vec<_> = store::read_index(dir)
            .into_iter()
            .rev()
            .filter(|e| e.ts_ms >= since)
            .filter(|e| route.as_ref().is_none_or(|r| e.route.as_ref() == Some(r)))
            .filter(|e| who.as_ref().is_none_or(|w| e.subject.as_ref() == Some(w)))
            .filter(|e| conv.as_ref().is_none_or(|c| &e.conversation == c))
            .take(limit)
            .collect();
        text(200, json, serde_json::to_vec(&list).unwrap_or_default())
    }
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let plain = "text/plain; charset=utf-8";
        let uri = session.req_header().uri.clone();
        let path = uri.path();
        let approvals = path == "/v1/approvals" || path.starts_with("/v1/approvals/");
        let sessions = path == "/v1/sessions" || path.starts_with("/v1/sessions/");
        if path == "/console" || path.starts_with("/console/") {
            let Some(console) = &self.console else {
                return json_error(404, "the web console is not configured (admin.console)");
            };
            let req = session.req_header();
            return console
                .handle(&req.method, path, uri.query(), &req.headers)
                .await;
        }
        if approvals || sessions {
            let req = session.req_header();
            // A browser of the console authenticates with its session cookie (and CSRF token);
            // everyone else with a bearer token.
            let by_cookie = !req.headers.contains_key(http::header::AUTHORIZATION)
                && req
                    .headers
                    .get(http::header::COOKIE)
                    .is_some_and(|_| self.console.is_some());
            let who = if by_cookie {
                let console = self.console.as_ref().expect("checked");
                match console.identity(&req.method, &req.headers) {
                    Ok(w) => w,
                    Err((status, why)) => return json_error(status, why),
                }
            } else {
                let auth = self.active.get().auth.clone();
                match auth.authenticate(&req.headers, None).await {
                    Ok(w) => w,
                    Err(e) => {
                        let mut r = json_error(e.reason.status(), &e.description);
                        if let Some(c) = e.challenge().and_then(|c| c.parse().ok()) {
                            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, c);
                        }
                        return r;
                    }
                }
            };
            if approvals {
                return self.approvals(session, &who, path, uri.query()).await;
            }
            if !self.auditor(&who) {
                return json_error(
                    403,
                    format!(
                        "{} is not in an auditor group (admin.auditors: {})",
                        who.subject,
                        if self.auditors.is_empty() {
                            "none configured".to_string()
                        } else {
                            self.auditors.join(", ")
                        }
                    ),
                );
            }
            return self.sessions(path, uri.query());
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                crate::metrics::REQUESTS_IN_FLIGHT.set(crate::shutdown::in_flight() as i64);
                let (body, content_type) = crate::metrics::render();
                text(200, &content_type, body)
            }
            "/healthz" => text(200, plain, b"ok\n".to_vec()),
            "/readyz" if !self.ready.get() || !crate::shutdown::armed() => {
                text(503, plain, b"not ready\n".to_vec())
            }
            "/readyz" if crate::shutdown::draining() => {
                text(503, plain, b"not ready: shutting down\n".to_vec())
            }
            "/readyz" => match self.active.get().auth.readiness() {
                Ok(()) => text(200, plain, b"ready\n".to_vec()),
                Err(why) => text(503, plain, format!("not ready: {why}\n").into_bytes()),
            },
            _ => text(
                404,
                plain,
                b"not found: try /metrics, /healthz, /readyz, /v1/approvals or /v1/sessions\n"
                    .to_vec(),
            ),
        }
    }
}
