//! The people's API on the admin listener: `/v1/approvals` (approvers decide, requesters and
//! auditors read) and `/v1/sessions` (auditors read records; `/v1/sessions/{id}` takes the whole
//! id or an unambiguous prefix, as the CLI does), for a caller authenticated by a bearer token
//! (OIDC or service account) or by the web console's session cookie.

use super::{json_error, query_param, text, AdminApp, JSON};
use crate::approval::{Approval, State};
use crate::identity::Identity;
use crate::record::{self, query::Filter, query::FindError};
use http::Response;
use pingora::protocols::http::ServerSession;

/// The largest decision body read (a reason is at most 2000 bytes).
const MAX_DECISION_BODY: usize = 16 * 1024;

impl AdminApp {
    /// Serves `/v1/approvals...` and `/v1/sessions...` to an authenticated caller.
    pub(super) async fn api(
        &self,
        session: &mut ServerSession,
        path: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
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
        if path.starts_with("/v1/approvals") {
            return self.approvals(session, &who, path, query).await;
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
        if path.starts_with("/v1/mcp/pins") {
            return self.mcp_pins(session, &who, path);
        }
        if path == "/v1/usage" {
            return self.usage(query);
        }
        self.sessions(path, query).await
    }

    /// `GET /v1/mcp/pins`: every pinned tool definition; `POST /v1/mcp/pins/{route}/{tool}/accept`:
    /// accepts a changed one (auditors).
    fn mcp_pins(&self, session: &ServerSession, who: &Identity, path: &str) -> Response<Vec<u8>> {
        let Some(store) = crate::proxy::mcp::PinStore::get() else {
            return json_error(503, "the pin store is not open");
        };
        let method = &session.req_header().method;
        let rest = path
            .trim_start_matches("/v1/mcp/pins")
            .trim_start_matches('/');
        match (
            method.as_str(),
            rest.split('/').collect::<Vec<_>>().as_slice(),
        ) {
            ("GET", [""]) => text(200, JSON, store.list().to_string().into_bytes()),
            ("POST", [route, tool, "accept"]) => match store.accept(route, tool, &who.subject) {
                Ok(v) => text(200, JSON, v.to_string().into_bytes()),
                Err(why) => json_error(404, why),
            },
            _ => json_error(
                404,
                "try GET /v1/mcp/pins or POST /v1/mcp/pins/{route}/{tool}/accept",
            ),
        }
    }

    fn auditor(&self, who: &Identity) -> bool {
        who.groups.iter().any(|g| self.auditors.contains(g))
    }

    /// An approval as one caller sees it: with whether they may decide, and its clock.
    fn view(&self, a: &Approval, who: &Identity) -> Option<serde_json::Value> {
        let approver = who.groups.iter().any(|g| a.approver_groups.contains(g));
        let requester = a.requester.same(who);
        if !(approver || requester || self.auditor(who)) {
            return None;
        }
        let mut v = serde_json::to_value(a).ok()?;
        let now = crate::approval::now_ms();
        let decided_by_me = a.decisions.iter().any(|d| d.by.same(who));
        v["can_decide"] = (approver
            && who.person.is_some()
            && !requester
            && !decided_by_me
            && a.state == State::Pending)
            .into();
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
            let all = match self.approvals.list(state, usize::MAX).await {
                Ok(l) => l,
                Err(e) => return json_error(503, e.to_string()),
            };
            let list: Vec<_> = all
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
            ("GET", None) => match self.approvals.get(id).await {
                Err(e) => json_error(503, e.to_string()),
                Ok(a) => match a.and_then(|a| self.view(&a, who)) {
                    Some(v) => text(200, JSON, v.to_string().into_bytes()),
                    None => json_error(404, format!("no approval {id} that you may see")),
                },
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
                match self.approvals.decide(id, who, action == "approve", &reason).await {
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

    /// `GET /v1/usage?by=identity|group|route|model&since=30d`: the ledger's totals (auditors).
    fn usage(&self, query: Option<&str>) -> Response<Vec<u8>> {
        use crate::limits::report;
        let by = query_param(query, "by").unwrap_or_else(|| "identity".into());
        let Some(by_key) = report::By::parse(&by) else {
            return json_error(400, format!("by={by}: use identity, group, route or model"));
        };
        let since = query_param(query, "since").unwrap_or_else(|| "30d".into());
        let days = match report::days(&since) {
            Ok(d) => d,
            Err(e) => return json_error(400, e),
        };
        let active = self.active.get();
        let Some(route) = active.routes.first() else {
            return json_error(404, "no routes");
        };
        let limiter = &route.limiter;
        let from = report::first_day(days, crate::limits::now_ms(), limiter.time_zone());
        let rows = report::summarize(&limiter.ledger().totals_since(&from), by_key);
        let body = serde_json::json!({
            "by": by, "since": from, "currency": route.currency, "rows": rows,
        });
        text(200, JSON, body.to_string().into_bytes())
    }

    /// Every replica's records with the shared store; else this process's own.
    async fn sessions(&self, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        if let Some(db) = &self.db {
            return shared_sessions(db, path, query).await;
        }
        let Some(dir) = &self.records else {
            return text(404, JSON, br#"{"error":"recording is off"}"#.to_vec());
        };
        if let Some(id) = path.strip_prefix("/v1/sessions/") {
            return match record::query::find(dir, id) {
                Ok(r) => text(200, JSON, r.to_string().into_bytes()),
                Err(FindError::Unknown) => {
                    text(404, JSON, br#"{"error":"no such session"}"#.to_vec())
                }
                Err(e @ FindError::Ambiguous { .. }) => json_error(400, e),
                Err(FindError::Read(e)) => text(
                    500,
                    JSON,
                    serde_json::json!({"error": e.to_string()})
                        .to_string()
                        .into_bytes(),
                ),
            };
        }
        let list = record::query::list(dir, &filter_of(query));
        text(200, JSON, serde_json::to_vec(&list).unwrap_or_default())
    }
}

/// `GET /v1/sessions` filters from the query string.
fn filter_of(query: Option<&str>) -> Filter {
    Filter {
        since_ms: query_param(query, "since_ms")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
        route: query_param(query, "route"),
        subject: query_param(query, "identity"),
        conversation: query_param(query, "conversation"),
        limit: query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100),
    }
}

/// `/v1/sessions[/{id}]` over every replica's records in the shared store.
async fn shared_sessions(
    db: &crate::db::Database,
    path: &str,
    query: Option<&str>,
) -> Response<Vec<u8>> {
    use record::shared::FindError as E;
    if let Some(id) = path.strip_prefix("/v1/sessions/") {
        return match record::shared::find(db, id).await {
            Ok(r) => text(200, JSON, r.to_string().into_bytes()),
            Err(E::Unknown) => text(404, JSON, br#"{"error":"no such session"}"#.to_vec()),
            Err(e @ E::Ambiguous { .. }) => json_error(400, e),
            Err(e @ E::Tampered(_)) => json_error(500, e),
            Err(e @ E::Db(_)) => json_error(503, e),
        };
    }
    match record::shared::list(db, &filter_of(query)).await {
        Ok(list) => text(200, JSON, serde_json::to_vec(&list).unwrap_or_default()),
        Err(e) => json_error(503, e),
    }
}
