//! Tells approvers that something waits: a POST to the rule's webhook (Slack-compatible
//! `text` + `blocks`, or the summary as JSON), over verified TLS, retried with backoff. A
//! failed notification is counted and logged; it never decides anything.

use super::{Approval, State};
use crate::policy::Webhook;
use crate::upstream::client::Fetcher;
use std::time::Duration;

const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The message body for `a`; `links` point at the admin API (and console) for it.
pub fn message(hook: &Webhook, a: &Approval, public_url: &str) -> serde_json::Value {
    let api = format!("{public_url}/v1/approvals/{}", a.id);
    let tools = a.summary.get("tools").cloned().unwrap_or_default();
    if !hook.slack {
        return serde_json::json!({ "approval": a, "links": { "api": api } });
    }
    let who = format!("{} ({})", a.requester.subject, a.requester.issuer);
    let text = format!(
        "Approval needed: rule `{}` held {} {} on route `{}` for {who}. Approvers: {}. Decide before it expires: `agentgate approvals approve {}` or {api}",
        a.rule, a.method, a.path, a.route, a.approver_groups.join(", "), a.id
    );
    let mut fields = vec![
        serde_json::json!({"type": "mrkdwn", "text": format!("*Rule*\n{}", a.rule)}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Requester*\n{who}")}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Request*\n{} {} (route {})", a.method, a.path, a.route)}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Approvers*\n{} (need {})", a.approver_groups.join(", "), a.min_approvals)}),
    ];
    if tools.is_array() {
        fields.push(serde_json::json!({"type": "mrkdwn", "text": format!("*Tools*\n{tools}")}));
    }
    serde_json::json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": format!("Approval needed: {}", a.rule)}},
            {"type": "section", "fields": fields},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*Why*\n{}", a.reasons.join("\n"))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("id `{}` · <{api}|open in the admin API>", a.id)}]},
        ],
    })
}

/// Sends the notification in the background; gives up after `ATTEMPTS` or once the approval is
/// no longer pending.
pub fn notify(hook: Webhook, a: Approval, public_url: String, store: super::ApprovalStore) {
    tokio::spawn(async move {
        let body = match serde_json::to_vec(&message(&hook, &a, &public_url)) {
            Ok(b) => b,
            Err(_) => return,
        };
        let fetcher = Fetcher::new(hook.ca_file.clone(), Duration::from_secs(10));
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let req = http::Request::post(&hook.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            let Ok(req) = req else {
                log::error!("approval {}: webhook URL {} is not usable", a.id, hook.url);
                return;
            };
            let why = match fetcher.send(req).await {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::APPROVAL_WEBHOOKS
                        .with_label_values(&["sent"])
                        .inc();
                    return;
                }
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.0,
            };
            let still_pending = match store.get(&a.id).await {
                Ok(x) => x.is_some_and(|x| x.state == State::Pending),
                // Unknown: keep trying until the attempts run out.
                Err(_) => true,
            };
            if attempt == ATTEMPTS || !still_pending {
                crate::metrics::APPROVAL_WEBHOOKS
                    .with_label_values(&["failed"])
                    .inc();
                log::warn!(
                    "approval {}: webhook {} failed after {attempt} attempt(s): {why}",
                    a.id,
                    hook.url
                );
                return;
            }
            crate::metrics::APPROVAL_WEBHOOKS
                .with_label_values(&["retry"])
                .inc();
            log::info!(
                "approval {}: webhook attempt {attempt} failed ({why}); retrying in {backoff:?}",
                a.id
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    });
}
