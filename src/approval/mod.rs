//! Just-in-time approvals at run time: what an approval is (this file), the store of pending
//! and decided approvals with the wait a held request does, approvers' decisions and window
//! grants (`store`), the summary approvers see (`summary`), and the notification webhook.
//!
//! Invariants: a decision is on disk before anyone acts on it; a requester never decides on
//! their own request; a ticket lets through only the request body that was approved; a summary
//! is made from the body as masking left it.

mod store;
mod summary;
pub mod webhook;

use crate::identity::Identity;
use serde::{Deserialize, Serialize};

pub use crate::identity::service_account::sha256_hex;
pub use crate::util::time::unix_ms as now_ms;
pub use store::{Approvals, Redeem, Refused, Sweeper, MAX_PENDING_PER_REQUESTER, RETENTION};
pub use summary::{cut, summarize};

/// The header a ticket-mode retry carries.
pub const APPROVAL_HEADER: &str = "x-agentgate-approval";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The agent went away while it waited.
    Abandoned,
    /// The gateway restarted while it was pending.
    Interrupted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Abandoned => "abandoned",
            State::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Approved,
            State::Denied,
            State::Expired,
            State::Abandoned,
            State::Interrupted,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Person {
    pub subject: String,
    pub issuer: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The credential the person used when it has another name (`service-account ci-alice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Person {
    /// The caller as approvals name them: the person behind a service account mapped to one,
    /// else the caller's own name.
    pub fn of(who: &Identity) -> Person {
        match &who.person {
            Some(p) if (p.issuer != who.issuer || p.subject != who.subject) => Person {
                subject: p.subject.clone(),
                issuer: p.issuer.clone(),
                groups: who.groups.clone(),
                via: Some(format!("{} {}", who.issuer, who.subject)),
            },
            _ => Person {
                subject: who.subject.clone(),
                issuer: who.issuer.clone(),
                groups: who.groups.clone(),
                via: None,
            },
        }
    }

    /// Whether `who` is this person, whichever channel they came through.
    pub fn same(&self, who: &Identity) -> bool {
        let them = Person::of(who);
        self.subject == them.subject && self.issuer == them.issuer
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub by: Person,
    /// `approve` or `deny`.
    pub decision: String,
    pub reason: String,
    pub at_ms: u64,
}

/// One approval: what waits, for whom, and what was decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub request_id: String,
    pub rule: String,
    pub route: String,
    pub method: String,
    /// The canonical path and the query, masked as approvers see them.
    pub path: String,
    #[serde(default)]
    pub query: String,
    /// SHA-256 of the canonical path and query as sent (`path?query`), hex: a ticket lets only
    /// this request target through (the raw target is never stored: it may hold a secret).
    #[serde(default)]
    pub target_sha256: String,
    pub requester: Person,
    /// Why the rule matched (masked).
    pub reasons: Vec<String>,
    /// A masked summary of the body: model, tool names, tool calls with arguments, the last
    /// user message, and the start of the body.
    pub summary: serde_json::Value,
    /// SHA-256 of the request body as sent, hex: a ticket only lets the same request through.
    pub body_sha256: String,
    pub mode: String,
    pub approver_groups: Vec<String>,
    pub min_approvals: usize,
    /// `once`, or the window's length in seconds.
    pub grant_window_s: Option<u64>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub state: State,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    #[serde(default)]
    pub decided_ms: Option<u64>,
    /// A ticket's approved request went through (a `once` ticket lets one retry through).
    #[serde(default)]
    pub redeemed: bool,
}

/// What a ticket is bound to: the request it was asked for, as the gateway decided on it.
pub struct Bound<'a> {
    pub route: &'a str,
    pub method: &'a str,
    /// `target_sha256` of the canonical path and query.
    pub target_sha256: &'a str,
    pub body_sha256: &'a str,
}

/// The `target_sha256` of a request target.
pub fn target_sha256(path: &str, query: &str) -> String {
    sha256_hex(format!("{path}?{query}").as_bytes())
}

impl Bound<'_> {
    /// What differs between this request and the one `a` approved, if anything.
    pub fn differs_from(&self, a: &Approval) -> Option<&'static str> {
        if a.route != self.route {
            Some("(another route)")
        } else if a.method != self.method {
            Some("(another method)")
        } else if a.target_sha256 != self.target_sha256 {
            Some("(another path or query string)")
        } else if a.body_sha256 != self.body_sha256 {
            Some("body")
        } else {
            None
        }
    }
}

impl Approval {
    fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == "approve")
            .count()
    }
    /// The evidence a session record carries.
    pub fn evidence(&self, how: &str) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "rule": self.rule,
            "state": self.state,
            "how": how,
            "decisions": self.decisions,
            "waited_ms": self.decided_ms.map(|d| d.saturating_sub(self.created_ms)),
        })
    }
}
