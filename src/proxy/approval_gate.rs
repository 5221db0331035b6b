//! The request side of approvals: a request whose body was read (nothing has gone upstream,
//! no upstream connection exists) is checked against its route's rules; a match waits here
//! for the decision, or gets a ticket.

use crate::approval::{self, summarize, Approval, ApprovalStore, Person, Redeem, State};
use crate::identity::Identity;
use crate::mask::{Action, Engine, Rules};
use crate::policy::{ApprovalRule, Mode, Request};
use crate::proxy::error::ApiError;
use pingora::proxy::Session;

pub use crate::approval::APPROVAL_HEADER;

pub enum Outcome {
    /// Go on (evidence for the record: one entry per matched rule, `None` if none matched).
    Proceed(Option<serde_json::Value>),
    /// Answer with this error.
    Refuse(ApiError, serde_json::Value),
    /// Ticket mode: answer 202 with this approval.
    Ticket(Box<Approval>, serde_json::Value),
    /// The agent went away while it waited.
    Abandoned(serde_json::Value),
}

pub struct Gate {
    store: ApprovalStore,
    /// What approvers see is masked with every detector redacting, whatever the route's policy
    /// (with the engine of the configuration the request runs under).
    rules: Rules,
    public_url: String,
}

impl Gate {
    pub fn new(store: ApprovalStore, public_url: String) -> Gate {
        Gate {
            store,
            rules: Rules::all(Action::Redact),
            public_url,
        }
    }

    fn mask(&self, engine: &Engine, body: &[u8]) -> Vec<u8> {
        engine
            .mask_body(body, &self.rules)
            .map(|m| m.into_owned().into_bytes())
            .unwrap_or_else(|| format!("[{} bytes, not text]", body.len()).into_bytes())
    }

    fn mask_text(&self, engine: &Engine, t: &str) -> String {
        engine.mask(t, &self.rules, None, false).0
    }

    /// Puts each MCP tool's description (masked) beside its call in the summary.
    fn describe_tools(
        &self,
        summary: &mut serde_json::Value,
        engine: &Engine,
        d: &[(String, String)],
    ) {
        let Some(calls) = summary.get_mut("mcp").and_then(|m| m.as_array_mut()) else {
            return;
        };
        for c in calls {
            let name = c.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            if let Some((_, desc)) = d.iter().find(|(t, _)| t == name) {
                c["description"] = self.mask_text(engine, desc).into();
            }
        }
    }

    /// Checks `body` (as the agent sent it) against `rules`; what approvers see is masked with
    /// `engine`. `descriptions`: (tool, description) of MCP tools the body calls, shown beside
    /// each call.
    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &self,
        session: &mut Session,
        rules: &[ApprovalRule],
        route: &str,
        who: &Identity,
        request_id: &str,
        body: &[u8],
        engine: &Engine,
        descriptions: &[(String, String)],
    ) -> Outcome {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let target_sha = approval::target_sha256(&path, &query);
        let ticket = req
            .headers
            .get(APPROVAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string());
        let matched = crate::policy::matching(
            rules,
            &Request {
                route,
                method: &method,
                path: &path,
                groups: &who.groups,
                headers: &req.headers,
                body,
            },
        );
        if matched.is_empty() {
            return Outcome::Proceed(None);
        }
        let body_sha = approval::sha256_hex(body);
        let mut evidence = Vec::new();
        let mut summary = None;
        for (rule, m) in matched {
            match self.store.active_grant(who, &rule.name, route).await {
                Ok(Some(g)) => {
                    evidence.push(g.evidence("window_grant"));
                    continue;
                }
                Ok(None) => {}
                Err(why) => return Outcome::Refuse(store_down(&rule.name, why), evidence.into()),
            }
            if rule.mode == Mode::Ticket {
                if let Some(id) = ticket.as_deref().filter(|id| !id.is_empty()) {
                    let bound = approval::Bound {
                        route,
                        method: &method,
                        target_sha256: &target_sha,
                        body_sha256: &body_sha,
                    };
                    match self.store.redeem(id, who, &rule.name, &bound).await {
                        Redeem::Proceed(a) => {
                            evidence.push(a.evidence("ticket"));
                            continue;
                        }
                        Redeem::StillPending(a) => {
                            evidence.push(a.evidence("ticket"));
                            return Outcome::Ticket(Box::new(a), evidence.into());
                        }
                        Redeem::Refused(status, why) => {
                            let e = refusal(status, &rule.name, why, None);
                            return Outcome::Refuse(e, evidence.into());
                        }
                    }
                }
            }
            // Computed once per request; a second matching rule (rare) computes it again
            // rather than every request keeping a spare copy while it waits.
            let summary = summary.take().unwrap_or_else(|| {
                let mut s = summarize(&self.mask(engine, body));
                self.describe_tools(&mut s, engine, descriptions);
                s
            });
            let draft = Approval {
                id: String::new(),
                request_id: request_id.to_string(),
                rule: rule.name.clone(),
                route: route.to_string(),
                method: method.clone(),
                path: approval::cut(&self.mask_text(engine, &path), 512),
                query: approval::cut(&self.mask_text(engine, &query), 512),
                target_sha256: target_sha.clone(),
                requester: Person::of(who),
                reasons: m
                    .reasons
                    .iter()
                    .map(|r| self.mask_text(engine, r))
                    .collect(),
                summary,
                body_sha256: body_sha.clone(),
                mode: String::new(),
                approver_groups: Vec::new(),
                min_approvals: 0,
                grant_window_s: None,
                created_ms: 0,
                expires_ms: 0,
                state: State::Pending,
                decisions: Vec::new(),
                decided_ms: None,
                redeemed: false,
            };
            let pending = match self.store.pending_of(who).await {
                Ok(n) => n,
                Err(why) => return Outcome::Refuse(store_down(&rule.name, why), evidence.into()),
            };
            if pending >= approval::MAX_PENDING_PER_REQUESTER {
                let e = ApiError::new(
                    429,
                    "rate_limit_error",
                    "too_many_pending_approvals",
                    format!(
                        "rule `{}` needs an approval and this caller already has {} pending; wait for them to be decided or expire",
                        rule.name,
                        approval::MAX_PENDING_PER_REQUESTER
                    ),
                );
                return Outcome::Refuse(e, evidence.into());
            }
            let (a, rx) = match self.store.create(rule, draft).await {
                Ok(x) => x,
                Err(why) => {
                    log::error!("approval store: {why}");
                    let e = ApiError::new(
                        503,
                        "service_unavailable_error",
                        "approval_store_unavailable",
                        format!("rule `{}` needs an approval and the approval store cannot take it: {why}", rule.name),
                    );
                    return Outcome::Refuse(e, evidence.into());
                }
            };
            log::info!(
                "approval {} opened: rule `{}`, {} {} on route `{route}` by {}",
                a.id,
                rule.name,
                method,
                path,
                who.subject
            );
            if let Some(hook) = &rule.webhook {
                approval::webhook::notify(
                    hook.clone(),
                    a.clone(),
                    self.public_url.clone(),
                    self.store.clone(),
                );
            }
            if rule.mode == Mode::Ticket {
                evidence.push(a.evidence("ticket"));
                return Outcome::Ticket(Box::new(a), evidence.into());
            }
            // The store keeps the approval while it waits (1,000 may wait at once); this copy
            // is only the fallback should the store no longer have it, so it drops the bulk.
            let mut a = a;
            a.summary = serde_json::Value::Null;
            a.reasons = Vec::new();
            let done = tokio::select! {
                done = self.store.wait(&a.id, rx, a.expires_ms) => done,
                _ = crate::shutdown::until_draining() => {
                    let a = self.store.interrupt(&a.id).await.unwrap_or(a);
                    evidence.push(a.evidence("wait"));
                    if a.state == State::Approved {
                        continue;
                    }
                    let e = refusal(503, &rule.name, "the gateway is shutting down; send the request again (another instance will ask anew)".into(), None);
                    return Outcome::Refuse(e, evidence.into());
                }
                // Boxed, as the wait's future is held by every request waiting for approval.
                _ = Box::pin(session.downstream_session.read_body_or_idle(true)) => {
                    let a = self.store.abandon(&a.id).await.unwrap_or(a);
                    log::info!("approval {}: the agent went away while it waited ({})", a.id, a.state.as_str());
                    evidence.push(a.evidence("wait"));
                    return Outcome::Abandoned(evidence.into());
                }
            };
            let mut a = done.unwrap_or(a);
            if a.state == State::Pending {
                // The shared store could not be reached at the deadline: expired, fail closed.
                a.state = State::Expired;
            }
            evidence.push(a.evidence("wait"));
            match a.state {
                State::Approved => continue,
                State::Denied => {
                    let d = a.decisions.iter().rev().find(|d| d.decision == "deny");
                    let why = match d {
                        Some(d) => format!("denied by {}: {}", d.by.subject, d.reason),
                        None => "denied".into(),
                    };
                    let e = refusal(403, &rule.name, why, Some(&a));
                    return Outcome::Refuse(e, evidence.into());
                }
                s => {
                    let why = match s {
                        State::Expired => format!(
                            "no decision within {}s (approvals so far: {} of {})",
                            rule.timeout.as_secs(),
                            a.decisions.len(),
                            a.min_approvals
                        ),
                        other => format!("the approval is {}", other.as_str()),
                    };
                    let e = refusal(403, &rule.name, why, Some(&a));
                    return Outcome::Refuse(e, evidence.into());
                }
            }
        }
        Outcome::Proceed(Some(evidence.into()))
    }
}

/// The shared store cannot be read: an approval-gated request is refused (fail closed).
fn store_down(rule: &str, why: approval::Unavailable) -> ApiError {
    log::error!("approval store: {why}");
    ApiError::new(
        503,
        "service_unavailable_error",
        "approval_store_unavailable",
        format!("rule `{rule}` needs an approval and {why}; try again shortly"),
    )
}

fn refusal(status: u16, rule: &str, why: String, a: Option<&Approval>) -> ApiError {
    let (code, kind) = match (status, a.map(|a| a.state)) {
        (_, Some(State::Denied)) => ("approval_denied", "permission_error"),
        (_, Some(State::Expired)) => ("approval_expired", "permission_error"),
        (503, _) => ("approval_interrupted", "service_unavailable_error"),
        _ => ("approval_refused", "permission_error"),
    };
    let mut e = ApiError::new(
        status,
        kind,
        code,
        format!("rule `{rule}` needs an approval: {why}"),
    );
    if let Some(a) = a {
        e.detail = Some(Box::new((
            "approval",
            serde_json::json!({
                "id": a.id, "rule": a.rule, "decision": a.state,
                "reason": why, "decisions": a.decisions,
            }),
        )));
    }
    e
}
