//! Records in PostgreSQL (`store.postgres`): each replica keeps its own hash chain on disk, and
//! every committed line is also written to the database as a row keyed by (chain, seq) — the
//! chain is the local store's id, so a rescheduled pod with a fresh disk starts a new chain
//! instead of colliding with its predecessor's. `sessions`, `GET /v1/sessions` and
//! `audit verify` read every replica's rows there.
//!
//! Sending never blocks the writer thread: lines go to a bounded queue (`store.postgres.queue`)
//! that a task on the database runtime drains. When the queue is full, lines are not queued and
//! the shipper is *behind*: under `recording.on_failure: reject` new requests on recorded routes
//! are refused meanwhile. Nothing is lost: the lines are on disk, and a behind shipper (and every
//! shipper at start) reads the ones the database lacks back from the local store. Nothing is
//! duplicated: a row is inserted only if (chain, seq) is free; a row already there is accepted
//! only if it is the same line, else it is a conflict (someone else wrote this chain's sequence
//! number), logged, counted, and left for `audit verify` to name.

use super::store::{read_index, read_line, unseal};
use crate::db::{Database, DbError};
use crate::metrics;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rows inserted per transaction.
const BATCH: usize = 500;

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    checkpoints: VecDeque<String>,
    /// Lines were dropped (queue full) or may be missing (start-up): read the store back.
    behind: bool,
    /// Lines dropped so far (a catch-up that saw none dropped while it ran clears `behind`).
    dropped: u64,
}

pub struct Shipper {
    db: Arc<Database>,
    dir: PathBuf,
    chain: String,
    q: Mutex<Queue>,
    wake: tokio::sync::Notify,
    cap: usize,
}

/// One record as a row.
struct Row {
    seq: i64,
    id: String,
    prev: String,
    hash: String,
    ts_ms: i64,
    route: String,
    subject: String,
    conversation: String,
    status: i32,
    method: String,
    path: String,
    line: String,
}

fn row_of(line: String) -> Option<Row> {
    let (_, hash) = unseal(&line)?;
    let hash = hash.to_string();
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("").to_string();
    Some(Row {
        seq: v["seq"].as_i64()?,
        id: s("/id"),
        prev: s("/prev"),
        hash,
        ts_ms: crate::util::time::parse_rfc3339_ms(v["ts"].as_str().unwrap_or("")).unwrap_or(0)
            as i64,
        route: s("/route"),
        subject: s("/identity/subject"),
        conversation: s("/conversation"),
        status: v.pointer("/response/status").and_then(|x| x.as_i64()).unwrap_or(0) as i32,
        method: s("/method"),
        path: s("/path"),
        line,
    })
}

impl Shipper {
    /// Starts sending the store in `dir` (whose id is `chain`) to `db`; first it sends what
    /// the database lacks of it.
    pub fn start(db: Arc<Database>, dir: PathBuf, chain: String) -> Arc<Shipper> {
        for o in ["inserted", "present", "conflict", "dropped"] {
            metrics::STORE_RECORDS.with_label_values(&[o]);
        }
        let s = Arc::new(Shipper {
            cap: db.queue,
            db: db.clone(),
            dir,
            chain,
            q: Mutex::new(Queue {
                behind: true,
                ..Queue::default()
            }),
            wake: tokio::sync::Notify::new(),
        });
        db.spawn(s.clone().run());
        s
    }

    fn q(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues committed lines (`\n`-separated); never blocks. Lines past the bound are left
    /// on disk for the catch-up.
    pub fn push(&self, lines: &[u8]) {
        let mut q = self.q();
        for l in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if q.lines.len() >= self.cap {
                if !q.behind {
                    log::warn!(
                        "store.postgres: {} records wait for the database (store.postgres.queue); \
                         later ones stay on disk until it answers",
                        self.cap
                    );
                }
                q.behind = true;
                q.dropped += 1;
                metrics::STORE_RECORDS.with_label_values(&["dropped"]).inc();
                continue;
            }
            q.lines.push_back(String::from_utf8_lossy(l).into_owned());
        }
        metrics::STORE_RECORD_QUEUE.set(q.lines.len() as i64);
        drop(q);
        self.wake.notify_one();
    }

    /// A signed checkpoint line, for the `checkpoints` table.
    pub fn push_checkpoint(&self, line: &str) {
        let mut q = self.q();
        if q.checkpoints.len() < 1024 {
            q.checkpoints.push_back(line.to_string());
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Whether lines were left on disk because the queue was full (`on_failure` applies).
    pub fn overflowed(&self) -> bool {
        let q = self.q();
        q.behind && q.dropped > 0
    }

    /// Waits (up to `timeout`) until the queue is empty: at shutdown.
    pub fn drain(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let q = self.q();
            if q.lines.is_empty() && q.checkpoints.is_empty() {
                return;
            }
            drop(q);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let (lines, cps, behind, dropped) = {
                let q = self.q();
                (
                    q.lines.iter().take(BATCH).cloned().collect::<Vec<_>>(),
                    q.checkpoints.iter().cloned().collect::<Vec<_>>(),
                    q.behind,
                    q.dropped,
                )
            };
            if lines.is_empty() && cps.is_empty() && !behind {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let r = async {
                if !lines.is_empty() {
                    self.insert(lines.clone()).await?;
                }
                if !cps.is_empty() {
                    self.insert_checkpoints(cps.clone()).await?;
                }
                if lines.is_empty() && behind {
                    self.catch_up().await?;
                }
                Ok::<(), DbError>(())
            }
            .await;
            match r {
                Ok(()) => {
                    let mut q = self.q();
                    for _ in 0..lines.len() {
                        q.lines.pop_front();
                    }
                    for _ in 0..cps.len() {
                        q.checkpoints.pop_front();
                    }
                    if lines.is_empty() && behind && q.dropped == dropped {
                        q.behind = false;
                        q.dropped = 0;
                    }
                    metrics::STORE_RECORD_QUEUE.set(q.lines.len() as i64);
                }
                Err(e) => {
                    log::debug!("store.postgres: records wait: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Sends what the local store holds past the database's newest row of this chain.
    async fn catch_up(&self) -> Result<(), DbError> {
        let chain = self.chain.clone();
        let have: Option<i64> = self
            .db
            .run("record_head", move |pool| async move {
                let c = pool.get().await?;
                Ok(c.query_one(
                    "SELECT max(seq) FROM agentgate.records WHERE chain = $1",
                    &[&chain],
                )
                .await?
                .get(0))
            })
            .await?;
        let dir = self.dir.clone();
        let from = have.map_or(0, |h| h as u64 + 1);
        let missing: Vec<String> = tokio::task::spawn_blocking(move || {
            read_index(&dir)
                .into_iter()
                .filter(|e| e.seq >= from)
                .filter_map(|e| read_line(&dir, &e).ok())
                .collect()
        })
        .await
        .map_err(|e| DbError(e.to_string()))?;
        if !missing.is_empty() {
            log::info!(
                "store.postgres: sending {} record(s) the database lacks (from seq {from})",
                missing.len()
            );
        }
        for chunk in missing.chunks(BATCH) {
            self.insert(chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn insert(&self, lines: Vec<String>) -> Result<(), DbError> {
        let (chain, replica) = (self.chain.clone(), self.db.replica.clone());
        let outcome = self
            .db
            .run("record_insert", move |pool| async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let ins = tx
                    .prepare(
                        "INSERT INTO agentgate.records
                         (chain, seq, replica, id, prev, hash, ts_ms, route, subject, conversation,
                          status, method, path, line)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                         ON CONFLICT (chain, seq) DO NOTHING",
                    )
                    .await?;
                let (mut inserted, mut present, mut conflicts) = (0u64, 0u64, Vec::new());
                for line in lines {
                    let Some(r) = row_of(line) else { continue };
                    let n = tx
                        .execute(
                            &ins,
                            &[
                                &chain, &r.seq, &replica, &r.id, &r.prev, &r.hash, &r.ts_ms,
                                &r.route, &r.subject, &r.conversation, &r.status, &r.method,
                                &r.path, &r.line,
                            ],
                        )
                        .await?;
                    if n == 1 {
                        inserted += 1;
                        continue;
                    }
                    let there: String = tx
                        .query_one(
                            "SELECT line FROM agentgate.records WHERE chain = $1 AND seq = $2",
                            &[&chain, &r.seq],
                        )
                        .await?
                        .get(0);
                    if there == r.line {
                        present += 1;
                    } else {
                        conflicts.push(r.seq);
                    }
                }
                tx.commit().await?;
                Ok((inserted, present, conflicts))
            })
            .await?;
        let (inserted, present, conflicts) = outcome;
        metrics::STORE_RECORDS
            .with_label_values(&["inserted"])
            .inc_by(inserted);
        metrics::STORE_RECORDS
            .with_label_values(&["present"])
            .inc_by(present);
        if !conflicts.is_empty() {
            metrics::STORE_RECORDS
                .with_label_values(&["conflict"])
                .inc_by(conflicts.len() as u64);
            log::error!(
                "store.postgres: the database already holds other records at seq {:?} of this replica's chain {}: \
                 someone else wrote them; `agentgate audit verify` names them",
                conflicts,
                self.chain
            );
        }
        Ok(())
    }

    async fn insert_checkpoints(&self, lines: Vec<String>) -> Result<(), DbError> {
        let (chain, replica) = (self.chain.clone(), self.db.replica.clone());
        self.db
            .run("checkpoint_insert", move |pool| async move {
                let c = pool.get().await?;
                for line in lines {
                    let n = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["n"].as_i64());
                    let Some(n) = n else { continue };
                    c.execute(
                        "INSERT INTO agentgate.checkpoints (chain, n, replica, line)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (chain, n) DO NOTHING",
                        &[&chain, &n, &replica, &line],
                    )
                    .await?;
                }
                Ok(())
            })
            .await
    }
}
