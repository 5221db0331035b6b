//! The store of approvals: pending and decided ones in memory, each change appended to a log,
//! tickets redeemed, window grants kept, and the sweep that expires and forgets.
//!
//! Persistence is an append-only JSON-lines log under `state_dir/approvals/` (one full snapshot
//! of an approval per change; the last line for an id wins). An append-only log rather than
//! SQLite: no C library to build, the same shape as the record store, and every decision is
//! fsync'd before it is acted on, which is all a restart needs. At start-up the log is compacted
//! (the latest snapshot of each approval younger than `RETENTION`), approvals that were pending
//! are marked `interrupted` (the requests that waited on them died with the old process), and
//! active window grants are rebuilt from the approved ones.

use super::{now_ms, Approval, Bound, Decision, Person, State, APPROVAL_HEADER};
use crate::identity::Identity;
use crate::policy::{ApprovalRule, Grant, Mode};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Decided approvals are kept this long (the session records keep the evidence for longer).
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Why an approver's decision was not taken; `status` is the HTTP answer.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

pub(super) fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// What a retry carrying `x-agentgate-approval` gets.
pub enum Redeem {
    Proceed(Approval),
    StillPending(Approval),
    Refused(u16, String),
}

struct Entry {
    approval: Approval,
    tx: watch::Sender<State>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    /// (issuer|subject, rule, route) -> (approval id, until ms).
    grants: HashMap<GrantKey, (String, u64)>,
}

pub struct Approvals {
    inner: Mutex<Inner>,
    log: Mutex<std::fs::File>,
    path: PathBuf,
    /// Snapshots appended since the log was last compacted.
    appended: std::sync::atomic::AtomicUsize,
}

/// The log is rewritten from memory (one line per approval) by the sweep once this many
/// snapshots were appended and they outnumber the approvals kept twice over: a long-running
/// gateway's log does not grow until a restart compacts it.
const COMPACT_AFTER: usize = 10_000;

/// Who a window grant is for, under which rule, on which route.
type GrantKey = (String, String, String);

fn grant_key(a: &Approval) -> GrantKey {
    (
        identity_key(&a.requester.issuer, &a.requester.subject),
        a.rule.clone(),
        a.route.clone(),
    )
}

pub(super) fn identity_key(issuer: &str, subject: &str) -> String {
    format!("{issuer}|{subject}")
}

/// The key of the person `who` is as a requester (`Person::of`: a service account mapped to a
/// person is that person), as grants and pending counts are kept: a lookup under the caller's
/// own name would miss every grant of a mapped service account.
pub(super) fn person_key(who: &Identity) -> String {
    let p = Person::of(who);
    identity_key(&p.issuer, &p.subject)
}

/// Writes `approvals` (one line each) to a temporary file, syncs it, renames it over the log
/// at `path`, and opens the log for appending. Used at start-up and by the sweep's compaction.
fn rewrite_log(path: &Path, approvals: Vec<&Approval>) -> Result<std::fs::File, String> {
    let tmp = path.with_extension("jsonl.tmp");
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
    for a in approvals {
        serde_json::to_writer(&mut out, a).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(err)?;
    }
    out.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub(super) fn new_id() -> String {
    format!("apr_{}", crate::util::hex::random_hex(12))
}

impl Approvals {
    /// Opens (and compacts) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Approvals>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("approvals.jsonl");
        let mut latest: HashMap<String, Approval> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        if let Ok(f) = std::fs::File::open(&path) {
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Approval>(&line) {
                    Ok(a) => {
                        if !latest.contains_key(&a.id) {
                            order.push(a.id.clone());
                        }
                        latest.insert(a.id.clone(), a);
                    }
                    // A torn last line (crash mid-write) is skipped; anything else is reported.
                    Err(e) => log::warn!("{}:{}: skipped: {e}", path.display(), n + 1),
                }
            }
        }
        let now = now_ms();
        let keep_after = now.saturating_sub(RETENTION.as_millis() as u64);
        let mut inner = Inner {
            entries: HashMap::new(),
            grants: HashMap::new(),
        };
        let mut kept = Vec::new();
        let mut interrupted = 0;
        for id in order {
            let mut a = latest.remove(&id).expect("listed");
            if a.created_ms < keep_after {
                continue;
            }
            if a.state == State::Pending {
                a.state = State::Interrupted;
                a.decided_ms = Some(now);
                interrupted += 1;
            }
            if let (State::Approved, Some(w), Some(d)) = (a.state, a.grant_window_s, a.decided_ms) {
                let until = d + w * 1000;
                if until > now {
                    inner.grants.insert(grant_key(&a), (a.id.clone(), until));
                }
            }
            kept.push(a.id.clone());
            let (tx, _) = watch::channel(a.state);
            inner
                .entries
                .insert(a.id.clone(), Entry { approval: a, tx });
        }
        let log = rewrite_log(
            &path,
            kept.iter().map(|id| &inner.entries[id].approval).collect(),
        )?;
        if interrupted > 0 {
            log::warn!("{interrupted} approval(s) were pending when the gateway stopped; marked interrupted");
        }
        crate::metrics::APPROVALS_PENDING.set(0);
        Ok(Arc::new(Approvals {
            inner: Mutex::new(inner),
            log: Mutex::new(log),
            path,
            appended: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a snapshot; `durable` waits for the disk (decisions).
    fn persist(&self, a: &Approval, durable: bool) -> Result<(), String> {
        let mut line = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if durable {
            f.sync_data()
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
        }
        self.appended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A window grant of `rule` for `who` still running: the approval that granted it.
    pub fn active_grant(&self, who: &Identity, rule: &str, route: &str) -> Option<Approval> {
        let key = (person_key(who), rule.to_string(), route.to_string());
        let mut g = self.lock();
        let (id, until) = g.grants.get(&key).cloned()?;
        if until <= now_ms() {
            g.grants.remove(&key);
            return None;
        }
        g.entries.get(&id).map(|e| e.approval.clone())
    }

    /// Approvals of `who` still pending.
    pub fn pending_of(&self, who: &Identity) -> usize {
        let g = self.lock();
        g.entries
            .values()
            .filter(|e| e.approval.state == State::Pending && e.approval.requester.same(who))
            .count()
    }

    /// Opens a pending approval for a request that matched `rule`.
    pub fn create(
        &self,
        rule: &ApprovalRule,
        mut a: Approval,
    ) -> Result<(Approval, watch::Receiver<State>), String> {
        a.id = new_id();
        a.created_ms = now_ms();
        a.expires_ms = a.created_ms + rule.timeout.as_millis() as u64;
        a.state = State::Pending;
        a.mode = match rule.mode {
            Mode::Wait => "wait",
            Mode::Ticket => "ticket",
        }
        .into();
        a.approver_groups = rule.approver_groups.clone();
        a.min_approvals = rule.min_approvals;
        a.grant_window_s = match rule.grant {
            Grant::Once => None,
            Grant::Window(d) => Some(d.as_secs().max(1)),
        };
        // Logged and kept under one lock, so a compaction of the log never falls between them.
        let mut g = self.lock();
        self.persist(&a, false)?;
        let (tx, rx) = watch::channel(State::Pending);
        g.entries.insert(
            a.id.clone(),
            Entry {
                approval: a.clone(),
                tx,
            },
        );
        crate::metrics::APPROVALS_PENDING.inc();
        Ok((a, rx))
    }

    /// Moves a pending approval to `state` (expired, abandoned); false if it was decided.
    fn settle(&self, id: &str, state: State) -> Option<Approval> {
        let mut g = self.lock();
        let e = g.entries.get_mut(id)?;
        if e.approval.state != State::Pending {
            return Some(e.approval.clone());
        }
        e.approval.state = state;
        e.approval.decided_ms = Some(now_ms());
        let a = e.approval.clone();
        let _ = e.tx.send(state);
        drop(g);
        if let Err(err) = self.persist(&a, true) {
            log::error!(
                "approval {id}: could not persist `{}`: {err}",
                state.as_str()
            );
        }
        finished(&a);
        Some(a)
    }

    /// Waits until `id` is decided or expires; the final approval.
    pub async fn wait(
        &self,
        id: &str,
        mut rx: watch::Receiver<State>,
        expires_ms: u64,
    ) -> Option<Approval> {
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let decided = tokio::time::timeout(left, rx.wait_for(|s| *s != State::Pending)).await;
        match decided {
            Ok(_) => self.get(id),
            Err(_) => self.settle(id, State::Expired),
        }
    }

    /// The agent went away while waiting.
    pub fn abandon(&self, id: &str) -> Option<Approval> {
        self.settle(id, State::Abandoned)
    }

    /// The gateway is stopping while `id` waits.
    pub fn interrupt(&self, id: &str) -> Option<Approval> {
        self.settle(id, State::Interrupted)
    }

    /// Marks pending approvals whose time ran out as expired (ticket mode has no waiter), and
    /// lets decided ones older than `RETENTION` go from memory, as a restart drops them from
    /// the log: a gateway that runs for months does not keep every approval it ever saw.
    pub fn sweep(&self) {
        let now = now_ms();
        let keep_after = now.saturating_sub(RETENTION.as_millis() as u64);
        let mut g = self.lock();
        g.entries.retain(|_, e| {
            e.approval.state == State::Pending || e.approval.created_ms >= keep_after
        });
        let appended = self.appended.load(std::sync::atomic::Ordering::Relaxed);
        if appended > COMPACT_AFTER.max(2 * g.entries.len()) {
            if let Err(e) = self.compact_log(&g) {
                log::warn!("approvals: compacting {}: {e}", self.path.display());
            }
        }
        let due: Vec<String> = g
            .entries
            .values()
            .filter(|e| e.approval.state == State::Pending && e.approval.expires_ms <= now)
            .map(|e| e.approval.id.clone())
            .collect();
        drop(g);
        for id in due {
            self.settle(&id, State::Expired);
        }
    }

    /// Rewrites the log as the latest snapshot of each approval kept (the caller holds the
    /// store's lock, so no decision is half logged meanwhile), then appends to it as before.
    fn compact_log(&self, g: &Inner) -> Result<(), String> {
        let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&Approval> = g.entries.values().map(|e| &e.approval).collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        *f = rewrite_log(&self.path, all)?;
        self.appended.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Approval> {
        self.lock().entries.get(id).map(|e| e.approval.clone())
    }

    /// Newest first, optionally only in `state`.
    pub fn list(&self, state: Option<State>, limit: usize) -> Vec<Approval> {
        self.sweep();
        let mut v: Vec<Approval> = self
            .lock()
            .entries
            .values()
            .filter(|e| state.is_none_or(|s| e.approval.state == s))
            .map(|e| e.approval.clone())
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        v.truncate(limit);
        v
    }

    /// An approver's decision on `id`.
    pub fn decide(
        &self,
        id: &str,
        who: &Identity,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, Refused> {
        self.sweep();
        let reason = check_reason(reason)?;
        let mut g = self.lock();
        let Some(e) = g.entries.get_mut(id) else {
            return Err(refused(404, format!("no approval {id}")));
        };
        let now = now_ms();
        let next = apply_decision(&e.approval, who, approve, reason, now)?;
        // On disk before anyone acts on it.
        if let Err(err) = self.persist(&next, true) {
            return Err(refused(
                503,
                format!("the decision could not be stored: {err}"),
            ));
        }
        e.approval = next.clone();
        let _ = e.tx.send(next.state);
        if let (State::Approved, Some(w)) = (next.state, next.grant_window_s) {
            g.grants
                .insert(grant_key(&next), (next.id.clone(), now + w * 1000));
        }
        drop(g);
        if next.state != State::Pending {
            finished(&next);
        }
        Ok(next)
    }

    /// A retry that carries an approval id (ticket mode).
    pub fn redeem(&self, id: &str, who: &Identity, rule: &str, request: &Bound<'_>) -> Redeem {
        self.sweep();
        let mut g = self.lock();
        let Some(e) = g.entries.get_mut(id) else {
            return Redeem::Refused(403, format!("no approval {id}"));
        };
        let r = redeem_step(&e.approval, who, rule, request, now_ms());
        if let Redeem::Proceed(snap) = &r {
            e.approval = snap.clone();
            drop(g);
            let _ = self.persist(snap, false);
        }
        r
    }
}

/// The reason of a decision, trimmed, or why it is refused.
pub(super) fn check_reason(reason: &str) -> Result<&str, Refused> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(refused(400, "a decision needs a reason"));
    }
    if reason.len() > 2000 {
        return Err(refused(400, "the reason is longer than 2000 bytes"));
    }
    Ok(reason)
}

/// The approval rules of a decision, whatever keeps the approval: `a` as it becomes when `who`
/// approves or denies it at `now`, or why they may not.
pub(super) fn apply_decision(
    a: &Approval,
    who: &Identity,
    approve: bool,
    reason: &str,
    now: u64,
) -> Result<Approval, Refused> {
    let id = &a.id;
    if a.state != State::Pending {
        return Err(refused(
            409,
            format!("approval {id} is already {}", a.state.as_str()),
        ));
    }
    if !who.groups.iter().any(|g| a.approver_groups.contains(g)) {
        return Err(refused(
            403,
            format!(
                "{} is not in an approver group of rule `{}` ({})",
                who.subject,
                a.rule,
                a.approver_groups.join(", ")
            ),
        ));
    }
    if who.person.is_none() {
        return Err(refused(
            403,
            format!(
                "`{}` ({}) is not a person: approvals are decided by people, so that one person is \
                 never counted twice toward min_approvals. Decide in the console or with your own \
                 access token, or give the service account `person: {{issuer, subject}}` to decide as that person",
                who.subject, who.issuer
            ),
        ));
    }
    if a.requester.same(who) {
        return Err(refused(
            403,
            "a requester cannot decide on their own request",
        ));
    }
    if a.decisions.iter().any(|d| d.by.same(who)) {
        let p = Person::of(who);
        return Err(refused(
            409,
            format!(
                "{} ({}) has already decided on approval {id}",
                p.subject, p.issuer
            ),
        ));
    }
    let mut next = a.clone();
    next.decisions.push(Decision {
        by: Person::of(who),
        decision: if approve { "approve" } else { "deny" }.into(),
        reason: reason.to_string(),
        at_ms: now,
    });
    if !approve {
        next.state = State::Denied;
    } else if next.approvals() >= next.min_approvals {
        next.state = State::Approved;
    }
    if next.state != State::Pending {
        next.decided_ms = Some(now);
    }
    Ok(next)
}

/// The ticket rules, whatever keeps the approval: what a retry carrying `a`'s id gets at `now`
/// (`Proceed` carries `a` as it becomes: redeemed).
pub(super) fn redeem_step(
    a: &Approval,
    who: &Identity,
    rule: &str,
    request: &Bound<'_>,
    now: u64,
) -> Redeem {
    let id = &a.id;
    if !a.requester.same(who) || a.rule != rule {
        return Redeem::Refused(403, format!("approval {id} is for another caller or rule"));
    }
    if let Some(what) = request.differs_from(a) {
        return Redeem::Refused(403, format!(
            "approval {id} was given for a different request {what}; send the request that was approved"
        ));
    }
    match a.state {
        State::Pending => Redeem::StillPending(a.clone()),
        State::Approved if a.redeemed && a.grant_window_s.is_none() => {
            Redeem::Refused(403, format!("approval {id} was already used (grant: once)"))
        }
        State::Approved
            if a
                .grant_window_s
                .zip(a.decided_ms)
                .is_some_and(|(w, d)| now >= d + w * 1000) =>
        {
            Redeem::Refused(403, format!(
                "approval {id}'s window ({} s) is over; send the request again without {APPROVAL_HEADER} to ask anew",
                a.grant_window_s.unwrap_or_default()
            ))
        }
        State::Approved => {
            let mut snap = a.clone();
            snap.redeemed = true;
            Redeem::Proceed(snap)
        }
        State::Interrupted => Redeem::Refused(503, format!(
            "the gateway stopped while approval {id} was pending; send the request again without {} to ask anew",
            APPROVAL_HEADER
        )),
        s => Redeem::Refused(403, format!("approval {id} is {}", s.as_str())),
    }
}

/// Pending approvals one caller may have at once: past it, a new one is refused (429), so one
/// agent cannot fill approvers' queues, memory and the log.
pub const MAX_PENDING_PER_REQUESTER: usize = 100;

/// Metrics for an approval that left `pending`.
pub(super) fn finished(a: &Approval) {
    crate::metrics::APPROVALS_PENDING.dec();
    crate::metrics::APPROVAL_DECISIONS
        .with_label_values(&[&a.rule, a.state.as_str()])
        .inc();
    if let Some(d) = a.decided_ms {
        crate::metrics::APPROVAL_WAIT
            .with_label_values(&[&a.rule])
            .observe(d.saturating_sub(a.created_ms) as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests;
