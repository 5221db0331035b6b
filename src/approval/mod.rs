//! Just-in-time approvals at run time: what an approval is (this file), the store of pending
//! and decided approvals with the wait a held request does, approvers' decisions and window
//! grants (`store`: local files, the default; `shared`: PostgreSQL, for replicas acting as one
//! gateway; `ApprovalStore` is either), the summary approvers see (`summary`), and the
//! notification webhook.
//!
//! Invariants: a decision is on disk before anyone acts on it; a requester never decides on
//! their own request; a ticket lets through only the request body that was approved; a summary
//! is made from the body as masking left it.

mod shared;
mod store;
mod summary;
pub mod webhook;

use crate::identity::Identity;
use serde::{Deserialize, Serialize};

pub use crate::identity::service_account::sha256_hex;
pub use crate::util::time::unix_ms as now_ms;
pub use shared::SharedApprovals;
pub use store::{Approvals, Redeem, Refused, MAX_PENDING_PER_REQUESTER, RETENTION};
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

/// Where approvals live: this process's files (one gateway, the sidecar), or the database
/// every replica shares (`store.postgres`). The rules are the same in both.
#[derive(Clone)]
pub enum ApprovalStore {
    Local(std::sync::Arc<Approvals>),
    Shared(std::sync::Arc<SharedApprovals>),
}

/// A store that cannot be read: the answer is 503, never a guess.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the approval store (PostgreSQL) cannot be reached: {}",
            self.0
        )
    }
}

fn unavailable(e: crate::db::DbError) -> Unavailable {
    Unavailable(e.0)
}

impl ApprovalStore {
    /// A window grant of `rule` for `who` still running: the approval that granted it.
    pub async fn active_grant(
        &self,
        who: &Identity,
        rule: &str,
        route: &str,
    ) -> Result<Option<Approval>, Unavailable> {
        match self {
            ApprovalStore::Local(s) => Ok(s.active_grant(who, rule, route)),
            ApprovalStore::Shared(s) => s.active_grant(who, rule, route).await.map_err(unavailable),
        }
    }

    /// Approvals of `who` still pending.
    pub async fn pending_of(&self, who: &Identity) -> Result<usize, Unavailable> {
        match self {
            ApprovalStore::Local(s) => Ok(s.pending_of(who)),
            ApprovalStore::Shared(s) => s.pending_of(who).await.map_err(unavailable),
        }
    }

    /// Opens a pending approval for a request that matched `rule`.
    pub async fn create(
        &self,
        rule: &crate::policy::ApprovalRule,
        a: Approval,
    ) -> Result<(Approval, tokio::sync::watch::Receiver<State>), String> {
        match self {
            ApprovalStore::Local(s) => s.create(rule, a),
            ApprovalStore::Shared(s) => s.create(rule, a).await,
        }
    }

    /// Waits until `id` is decided or expires; the final approval.
    pub async fn wait(
        &self,
        id: &str,
        rx: tokio::sync::watch::Receiver<State>,
        expires_ms: u64,
    ) -> Option<Approval> {
        match self {
            ApprovalStore::Local(s) => s.wait(id, rx, expires_ms).await,
            ApprovalStore::Shared(s) => s.wait(id, rx, expires_ms).await,
        }
    }

    /// The agent went away while waiting.
    pub async fn abandon(&self, id: &str) -> Option<Approval> {
        match self {
            ApprovalStore::Local(s) => s.abandon(id),
            ApprovalStore::Shared(s) => s.abandon(id).await,
        }
    }

    /// The gateway is stopping while `id` waits.
    pub async fn interrupt(&self, id: &str) -> Option<Approval> {
        match self {
            ApprovalStore::Local(s) => s.interrupt(id),
            ApprovalStore::Shared(s) => s.interrupt(id).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Approval>, Unavailable> {
        match self {
            ApprovalStore::Local(s) => Ok(s.get(id)),
            ApprovalStore::Shared(s) => s.get(id).await.map_err(unavailable),
        }
    }

    /// Newest first, optionally only in `state`.
    pub async fn list(
        &self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<Approval>, Unavailable> {
        match self {
            ApprovalStore::Local(s) => Ok(s.list(state, limit)),
            ApprovalStore::Shared(s) => s.list(state, limit).await.map_err(unavailable),
        }
    }

    /// An approver's decision on `id`.
    pub async fn decide(
        &self,
        id: &str,
        who: &Identity,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, Refused> {
        match self {
            ApprovalStore::Local(s) => s.decide(id, who, approve, reason),
            ApprovalStore::Shared(s) => s.decide(id, who, approve, reason).await,
        }
    }

    /// A retry that carries an approval id (ticket mode).
    pub async fn redeem(
        &self,
        id: &str,
        who: &Identity,
        rule: &str,
        request: &Bound<'_>,
    ) -> Redeem {
        match self {
            ApprovalStore::Local(s) => s.redeem(id, who, rule, request),
            ApprovalStore::Shared(s) => s.redeem(id, who, rule, request).await,
        }
    }

    async fn sweep(&self) {
        match self {
            ApprovalStore::Local(s) => s.sweep(),
            ApprovalStore::Shared(s) => s.sweep().await,
        }
    }
}

/// Expires pending tickets nobody waits on (a waiting request expires its own) and, with the
/// shared store, interrupts approvals whose replica is gone.
pub struct Sweeper(pub ApprovalStore);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.sweep().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
