//! Approvals in PostgreSQL (`store.postgres`), so that every replica sees and decides the same
//! ones: a row per approval (its JSON, with the columns queries need), window grants in their
//! own table.
//!
//! The rules are `store.rs`'s own (`apply_decision`, `redeem_step`); this file only keeps them
//! atomic across replicas: a decision or a redemption reads its row `FOR UPDATE`, applies the
//! rule, and writes it back in one transaction, so two approvers on two replicas, or one ticket
//! sent to two replicas at once, are decided one after the other.
//!
//! A request waits on the replica that holds it (`holder`: that process). A decision made on
//! any replica is announced with `NOTIFY` in the same transaction; the holder hears it and reads
//! the row again (a notification is never believed: anyone who can connect may send one).
//! Every `POLL`, waiting approvals are read again anyway, for notifications lost while the
//! listening connection was down. A holder whose lease ran out (killed, partitioned) is gone:
//! any replica's sweep marks its waiting approvals `interrupted`.
//!
//! Fail closed: while the database cannot be reached, opening, redeeming or deciding an
//! approval answers 503, and a waiting request that reaches its deadline is refused as expired.

use super::store::{
    apply_decision, check_reason, finished, identity_key, new_id, person_key, redeem_step, refused,
};
use super::{now_ms, Approval, Bound, Redeem, Refused, State, RETENTION};
use crate::db::{Database, DbError, APPROVALS_CHANNEL};
use crate::identity::Identity;
use crate::policy::{ApprovalRule, Grant, Mode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Waiting approvals are read again this often, whatever was heard.
const POLL: Duration = Duration::from_secs(2);
/// `GET /v1/approvals` reads at most this many rows.
const LIST_LIMIT: i64 = 10_000;

pub struct SharedApprovals {
    db: Arc<Database>,
    /// Approvals a request of this process waits on: the channel that wakes it.
    waiters: Mutex<HashMap<String, watch::Sender<State>>>,
    /// Sweeps done; retention runs on every 60th.
    sweeps: std::sync::atomic::AtomicU64,
    /// Since when this process's sweeps reach the database without a break. Other processes'
    /// leases are judged only after one lease of that: after an outage every replica first gets
    /// the time to renew its own.
    reachable_since: Mutex<Option<std::time::Instant>>,
}

fn doc(a: &Approval) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(a).map_err(|e| DbError(e.to_string()))
}

fn parse(v: serde_json::Value) -> Result<Approval, DbError> {
    serde_json::from_value(v).map_err(|e| DbError(format!("an approval row does not parse: {e}")))
}

fn unavailable(e: DbError) -> Refused {
    refused(
        503,
        format!("the approval store (PostgreSQL) cannot be reached: {e}"),
    )
}

/// What a `NOTIFY` on the approvals channel carries: which approval changed, and when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Announcement {
    id: String,
    at_ms: u64,
}

impl SharedApprovals {
    /// The store over `db`; starts the task that wakes this process's waiting requests.
    pub fn new(db: Arc<Database>) -> Arc<SharedApprovals> {
        let s = Arc::new(SharedApprovals {
            db: db.clone(),
            waiters: Mutex::new(HashMap::new()),
            sweeps: std::sync::atomic::AtomicU64::new(0),
            reachable_since: Mutex::new(None),
        });
        db.spawn(s.clone().watch());
        s
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<State>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes waiting requests: on a notification naming one of them, after the listening
    /// connection was re-made, and every `POLL`.
    async fn watch(self: Arc<Self>) {
        let mut notices = self.db.subscribe();
        let mut tick = tokio::time::interval(POLL);
        loop {
            let ids: Vec<String> = tokio::select! {
                n = notices.recv() => match n {
                    Ok(crate::db::Notice { payload: Some(p) }) => {
                        let Ok(a) = serde_json::from_str::<Announcement>(&p) else {
                            continue;
                        };
                        crate::metrics::STORE_NOTIFY_LAG
                            .observe(now_ms().saturating_sub(a.at_ms) as f64 / 1000.0);
                        if !self.waiters().contains_key(&a.id) {
                            continue;
                        }
                        vec![a.id]
                    }
                    // Re-listened, or fell behind: everything may have changed.
                    Ok(_) | Err(_) => self.waiters().keys().cloned().collect(),
                },
                _ = tick.tick() => self.waiters().keys().cloned().collect(),
            };
            if !ids.is_empty() {
                self.wake(ids).await;
            }
        }
    }

    /// Reads `ids` again and wakes those no longer pending.
    async fn wake(&self, ids: Vec<String>) {
        let states = self
            .db
            .run("approval_poll", move |pool| async move {
                let c = pool.get().await?;
                let rows = c
                    .query(
                        "SELECT id, state FROM agentgate.approvals WHERE id = ANY($1)",
                        &[&ids],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect::<Vec<_>>())
            })
            .await;
        let Ok(states) = states else { return };
        let w = self.waiters();
        for (id, state) in states {
            match (State::parse(&state), w.get(&id)) {
                (Some(s), Some(tx)) if s != State::Pending => {
                    let _ = tx.send(s);
                }
                _ => {}
            }
        }
    }

    /// A window grant of `rule` for `who` still running: the approval that granted it.
    pub async fn active_grant(
        &self,
        who: &Identity,
        rule: &str,
        route: &str,
    ) -> Result<Option<Approval>, DbError> {
        let key = person_key(who);
        let (rule, route) = (rule.to_string(), route.to_string());
        self.db
            .run("approval_grant", move |pool| async move {
                let c = pool.get().await?;
                let row = c
                    .query_opt(
                        "SELECT a.doc FROM agentgate.grants g
                         JOIN agentgate.approvals a ON a.id = g.approval_id
                         WHERE g.requester = $1 AND g.rule = $2 AND g.route = $3 AND g.until_ms > $4",
                        &[&key, &rule, &route, &(now_ms() as i64)],
                    )
                    .await?;
                row.map(|r| parse(r.get(0))).transpose()
            })
            .await
    }

    /// Approvals of `who` still pending, on every replica.
    pub async fn pending_of(&self, who: &Identity) -> Result<usize, DbError> {
        let key = person_key(who);
        self.db
            .run("approval_count", move |pool| async move {
                let c = pool.get().await?;
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM agentgate.approvals WHERE requester = $1 AND state = 'pending'",
                        &[&key],
                    )
                    .await?
                    .get(0);
                Ok(n as usize)
            })
            .await
    }

    /// Opens a pending approval; a waiting request (wait mode) is held by this process.
    pub async fn create(
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
        let holder = (rule.mode == Mode::Wait).then(|| self.db.instance.clone());
        let (tx, rx) = watch::channel(State::Pending);
        // Listed before the row exists, so a decision that comes at once is not missed.
        self.waiters().insert(a.id.clone(), tx);
        let row = (
            a.id.clone(),
            identity_key(&a.requester.issuer, &a.requester.subject),
            a.mode.clone(),
            a.created_ms as i64,
            a.expires_ms as i64,
            doc(&a).map_err(|e| e.0)?,
        );
        let r = self
            .db
            .run("approval_create", move |pool| async move {
                let c = pool.get().await?;
                c.execute(
                    "INSERT INTO agentgate.approvals
                     (id, state, requester, mode, holder, created_ms, expires_ms, doc)
                     VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7)",
                    &[&row.0, &row.1, &row.2, &holder, &row.3, &row.4, &row.5],
                )
                .await?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            self.waiters().remove(&a.id);
            return Err(e.0);
        }
        crate::metrics::APPROVALS_PENDING.inc();
        Ok((a, rx))
    }

    /// Moves a pending approval to `state` (expired, abandoned, interrupted); the approval as
    /// it is (`None` if it cannot be read).
    async fn settle(&self, id: &str, state: State) -> Option<Approval> {
        self.waiters().remove(id);
        let (id, s) = (id.to_string(), state.as_str());
        let r = self
            .db
            .run("approval_settle", move |pool| async move {
                let c = pool.get().await?;
                let now = now_ms() as i64;
                let changed = c
                    .query_opt(
                        "UPDATE agentgate.approvals
                         SET state = $2, holder = NULL,
                             doc = doc || jsonb_build_object('state', $2::text, 'decided_ms', $3::bigint)
                         WHERE id = $1 AND state = 'pending' RETURNING doc",
                        &[&id, &s, &now],
                    )
                    .await?;
                if let Some(r) = changed {
                    return Ok((true, Some(parse(r.get(0))?)));
                }
                let row = c
                    .query_opt("SELECT doc FROM agentgate.approvals WHERE id = $1", &[&id])
                    .await?;
                Ok((false, row.map(|r| parse(r.get(0))).transpose()?))
            })
            .await;
        match r {
            Ok((changed, a)) => {
                if changed {
                    if let Some(a) = &a {
                        finished(a);
                    }
                }
                a
            }
            Err(e) => {
                log::error!("approval: could not store `{}`: {e}", state.as_str());
                None
            }
        }
    }

    /// Waits until `id` is decided (on any replica) or expires; the final approval.
    pub async fn wait(
        &self,
        id: &str,
        mut rx: watch::Receiver<State>,
        expires_ms: u64,
    ) -> Option<Approval> {
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let decided = tokio::time::timeout(left, rx.wait_for(|s| *s != State::Pending))
            .await
            .is_ok();
        match decided {
            true => {
                self.waiters().remove(id);
                self.get(id).await.ok().flatten()
            }
            false => self.settle(id, State::Expired).await,
        }
    }

    pub async fn abandon(&self, id: &str) -> Option<Approval> {
        self.settle(id, State::Abandoned).await
    }

    pub async fn interrupt(&self, id: &str) -> Option<Approval> {
        self.settle(id, State::Interrupted).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Approval>, DbError> {
        let id = id.to_string();
        self.db
            .run("approval_get", move |pool| async move {
                let c = pool.get().await?;
                let row = c
                    .query_opt("SELECT doc FROM agentgate.approvals WHERE id = $1", &[&id])
                    .await?;
                row.map(|r| parse(r.get(0))).transpose()
            })
            .await
    }

    /// Newest first, optionally only in `state`.
    pub async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Approval>, DbError> {
        let state = state.map(|s| s.as_str().to_string());
        let limit = limit.min(LIST_LIMIT as usize) as i64;
        self.db
            .run("approval_list", move |pool| async move {
                let c = pool.get().await?;
                let rows = c
                    .query(
                        "SELECT doc FROM agentgate.approvals
                         WHERE ($1::text IS NULL OR state = $1)
                         ORDER BY created_ms DESC, id DESC LIMIT $2",
                        &[&state, &limit],
                    )
                    .await?;
                rows.into_iter().map(|r| parse(r.get(0))).collect()
            })
            .await
    }

    /// An approver's decision on `id`, through any replica.
    pub async fn decide(
        &self,
        id: &str,
        who: &Identity,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, Refused> {
        let reason = check_reason(reason)?.to_string();
        let (id, who) = (id.to_string(), who.clone());
        let r = self
            .db
            .run("approval_decide", move |pool| async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT doc FROM agentgate.approvals WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?;
                let Some(row) = row else {
                    return Ok(Err(refused(404, format!("no approval {id}"))));
                };
                let mut a = parse(row.get(0))?;
                let now = now_ms();
                if a.state == State::Pending && a.expires_ms <= now {
                    // Its time ran out before the sweep saw it: expired, as the local store says.
                    a.state = State::Expired;
                    a.decided_ms = Some(now);
                    store_row(&tx, &a).await?;
                    tx.commit().await?;
                    finished(&a);
                    return Ok(Err(refused(409, format!("approval {id} is already expired"))));
                }
                let next = match apply_decision(&a, &who, approve, &reason, now) {
                    Ok(n) => n,
                    Err(r) => return Ok(Err(r)),
                };
                store_row(&tx, &next).await?;
                if let (State::Approved, Some(w)) = (next.state, next.grant_window_s) {
                    tx.execute(
                        "INSERT INTO agentgate.grants (requester, rule, route, approval_id, until_ms)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (requester, rule, route)
                         DO UPDATE SET approval_id = EXCLUDED.approval_id, until_ms = EXCLUDED.until_ms",
                        &[
                            &identity_key(&next.requester.issuer, &next.requester.subject),
                            &next.rule,
                            &next.route,
                            &next.id,
                            &((now + w * 1000) as i64),
                        ],
                    )
                    .await?;
                }
                let note = serde_json::to_string(&Announcement {
                    id: next.id.clone(),
                    at_ms: now,
                })
                .map_err(|e| DbError(e.to_string()))?;
                // Delivered when (and only if) the transaction commits.
                tx.execute("SELECT pg_notify($1, $2)", &[&APPROVALS_CHANNEL, &note])
                    .await?;
                tx.commit().await?;
                Ok(Ok(next))
            })
            .await;
        let next = r.map_err(unavailable)??;
        if next.state != State::Pending {
            finished(&next);
        }
        // A request of this process waiting on it wakes now, without the round trip.
        if let Some(tx) = self.waiters().get(&next.id) {
            let _ = tx.send(next.state);
        }
        Ok(next)
    }

    /// A retry that carries an approval id (ticket mode), on any replica.
    pub async fn redeem(
        &self,
        id: &str,
        who: &Identity,
        rule: &str,
        request: &Bound<'_>,
    ) -> Redeem {
        let (id, who, rule) = (id.to_string(), who.clone(), rule.to_string());
        let bound = (
            request.route.to_string(),
            request.method.to_string(),
            request.target_sha256.to_string(),
            request.body_sha256.to_string(),
        );
        let r = self
            .db
            .run("approval_redeem", move |pool| async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT doc FROM agentgate.approvals WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?;
                let Some(row) = row else {
                    return Ok(Redeem::Refused(403, format!("no approval {id}")));
                };
                let a = parse(row.get(0))?;
                let request = Bound {
                    route: &bound.0,
                    method: &bound.1,
                    target_sha256: &bound.2,
                    body_sha256: &bound.3,
                };
                let r = redeem_step(&a, &who, &rule, &request, now_ms());
                if let Redeem::Proceed(snap) = &r {
                    store_row(&tx, snap).await?;
                    tx.commit().await?;
                }
                Ok(r)
            })
            .await;
        match r {
            Ok(r) => r,
            Err(e) => Redeem::Refused(
                503,
                format!("the approval store (PostgreSQL) cannot be reached: {e}"),
            ),
        }
    }

    /// Expires approvals whose time ran out, interrupts those held by a process whose lease
    /// ran out, and (every minute) forgets decided ones older than `RETENTION`.
    pub async fn sweep(&self) {
        let n = self
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = self.db.instance.clone();
        let lease = self.db.lease.as_millis() as i64;
        let judge_leases = self
            .reachable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() >= self.db.lease);
        let r = self
            .db
            .run("approval_sweep", move |pool| async move {
                let c = pool.get().await?;
                let now = now_ms() as i64;
                let mut done = Vec::new();
                for (state, rows) in [
                    (
                        "expired",
                        c.query(
                            "UPDATE agentgate.approvals
                             SET state = 'expired', holder = NULL,
                                 doc = doc || jsonb_build_object('state', 'expired', 'decided_ms', $1::bigint)
                             WHERE state = 'pending' AND expires_ms <= $1 RETURNING doc",
                            &[&now],
                        )
                        .await?,
                    ),
                    (
                        "interrupted",
                        if !judge_leases {
                            Vec::new()
                        } else {
                        c.query(
                            "UPDATE agentgate.approvals a
                             SET state = 'interrupted', holder = NULL,
                                 doc = doc || jsonb_build_object('state', 'interrupted', 'decided_ms', $1::bigint)
                             WHERE a.state = 'pending' AND a.holder IS NOT NULL AND a.holder <> $2
                               -- A process writes its lease as it starts: judge it after one lease.
                               AND a.created_ms < $1::bigint - $3::bigint
                               AND NOT EXISTS (SELECT 1 FROM agentgate.instances i
                                               WHERE i.instance = a.holder AND i.seen_ms > $1::bigint - $3::bigint)
                             RETURNING doc",
                            &[&now, &me, &lease],
                        )
                        .await?
                        },
                    ),
                ] {
                    for r in rows {
                        let a = parse(r.get(0))?;
                        if state == "interrupted" {
                            log::warn!(
                                "approval {}: the replica process that held its request ({}) is gone; marked interrupted",
                                a.id,
                                a.requester.subject
                            );
                        }
                        done.push(a);
                    }
                }
                if n.is_multiple_of(60) {
                    let keep_after = now - RETENTION.as_millis() as i64;
                    c.execute(
                        "DELETE FROM agentgate.approvals WHERE state <> 'pending' AND created_ms < $1",
                        &[&keep_after],
                    )
                    .await?;
                    c.execute("DELETE FROM agentgate.grants WHERE until_ms < $1", &[&now])
                        .await?;
                }
                let pending: i64 = c
                    .query_one(
                        "SELECT count(*) FROM agentgate.approvals WHERE state = 'pending'",
                        &[],
                    )
                    .await?
                    .get(0);
                Ok((done, pending))
            })
            .await;
        {
            let mut since = self
                .reachable_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match (&r, *since) {
                (Ok(_), None) => *since = Some(std::time::Instant::now()),
                (Err(_), _) => *since = None,
                _ => {}
            }
        }
        match r {
            Ok((done, pending)) => {
                for a in &done {
                    finished(a);
                }
                crate::metrics::APPROVALS_PENDING.set(pending);
            }
            // Said once per outage: the sweep runs every second.
            Err(e) if n.is_multiple_of(60) => log::warn!("approvals: sweep: {e}"),
            Err(_) => {}
        }
    }
}

/// Writes `a` back to its row (state, holder released when it left pending, the JSON).
async fn store_row(tx: &deadpool_postgres::Transaction<'_>, a: &Approval) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agentgate.approvals
         SET state = $2, doc = $3, holder = CASE WHEN $2 = 'pending' THEN holder ELSE NULL END
         WHERE id = $1",
        &[&a.id, &a.state.as_str(), &doc(a)?],
    )
    .await?;
    Ok(())
}
