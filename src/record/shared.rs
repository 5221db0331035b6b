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
    /// Retention removed this chain's records up to this seq on disk: so do the rows.
    prune_upto: Option<u64>,
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
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
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
        status: v
            .pointer("/response/status")
            .and_then(|x| x.as_i64())
            .unwrap_or(0) as i32,
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

    /// Retention removed the records up to `seq` from the local store: their rows go too (the
    /// signed checkpoint that carries the retention event vouches for the new start).
    pub fn retained(&self, seq: u64) {
        let mut q = self.q();
        q.prune_upto = Some(q.prune_upto.map_or(seq, |p| p.max(seq)));
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
            let (lines, cps, behind, dropped, prune) = {
                let q = self.q();
                (
                    q.lines.iter().take(BATCH).cloned().collect::<Vec<_>>(),
                    q.checkpoints.iter().cloned().collect::<Vec<_>>(),
                    q.behind,
                    q.dropped,
                    q.prune_upto,
                )
            };
            if lines.is_empty() && cps.is_empty() && !behind && prune.is_none() {
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
                if let Some(upto) = prune {
                    self.prune(upto).await?;
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
                    if q.prune_upto == prune {
                        q.prune_upto = None;
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
                let rows: Vec<Row> = lines.into_iter().filter_map(row_of).collect();
                let col = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
                let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                let (ids, prevs, hashes) = (col(|r| r.id.clone()), col(|r| r.prev.clone()), col(|r| r.hash.clone()));
                let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
                let (routes, subjects, convs) = (
                    col(|r| r.route.clone()),
                    col(|r| r.subject.clone()),
                    col(|r| r.conversation.clone()),
                );
                let statuses: Vec<i32> = rows.iter().map(|r| r.status).collect();
                let (methods, paths, lines) =
                    (col(|r| r.method.clone()), col(|r| r.path.clone()), col(|r| r.line.clone()));
                let c = pool.get().await?;
                // One statement for the batch; rows already there are compared after.
                let inserted: std::collections::HashSet<i64> = c
                    .query(
                        "INSERT INTO agentgate.records
                         (chain, replica, seq, id, prev, hash, ts_ms, route, subject, conversation,
                          status, method, path, line)
                         SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[],
                             $7::bigint[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
                             $13::text[], $14::text[])
                         ON CONFLICT (chain, seq) DO NOTHING RETURNING seq",
                        &[
                            &chain, &replica, &seqs, &ids, &prevs, &hashes, &ts, &routes, &subjects,
                            &convs, &statuses, &methods, &paths, &lines,
                        ],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let others: Vec<i64> = seqs.iter().copied().filter(|s| !inserted.contains(s)).collect();
                let (mut present, mut conflicts) = (0u64, Vec::new());
                if !others.is_empty() {
                    let there = c
                        .query(
                            "SELECT seq, line FROM agentgate.records WHERE chain = $1 AND seq = ANY($2)",
                            &[&chain, &others],
                        )
                        .await?;
                    for r in there {
                        let (seq, line): (i64, String) = (r.get(0), r.get(1));
                        match rows.iter().find(|x| x.seq == seq) {
                            Some(x) if x.line == line => present += 1,
                            _ => conflicts.push(seq),
                        }
                    }
                }
                Ok((inserted.len() as u64, present, conflicts))
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

    async fn prune(&self, upto: u64) -> Result<(), DbError> {
        let chain = self.chain.clone();
        let upto = upto as i64;
        self.db
            .run("record_retention", move |pool| async move {
                let c = pool.get().await?;
                c.execute(
                    "DELETE FROM agentgate.records WHERE chain = $1 AND seq <= $2",
                    &[&chain, &upto],
                )
                .await?;
                Ok(())
            })
            .await
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

/// Which rows `list` returns.
pub use super::query::Filter;

/// The listing of exchanges on every replica, newest first: index-shaped entries with the
/// replica that recorded each.
pub async fn list(db: &Database, f: &Filter) -> Result<Vec<serde_json::Value>, DbError> {
    let (since, route, subject, conv) = (
        f.since_ms as i64,
        f.route.clone(),
        f.subject.clone(),
        f.conversation.clone(),
    );
    let limit = f.limit.min(10_000) as i64;
    db.run("record_list", move |pool| async move {
        let c = pool.get().await?;
        let rows = c
            .query(
                "SELECT replica, id, seq, ts_ms, route, subject, conversation, status, method, path, hash
                 FROM agentgate.records
                 WHERE ts_ms >= $1 AND ($2::text IS NULL OR route = $2)
                   AND ($3::text IS NULL OR subject = $3) AND ($4::text IS NULL OR conversation = $4)
                 ORDER BY ts_ms DESC, seq DESC LIMIT $5",
                &[&since, &route, &subject, &conv, &limit],
            )
            .await?;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        Ok(rows
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "replica": r.get::<_, String>(0),
                    "id": r.get::<_, String>(1),
                    "seq": r.get::<_, i64>(2),
                    "ts_ms": r.get::<_, i64>(3),
                    "route": opt(r.get(4)),
                    "subject": opt(r.get(5)),
                    "conversation": r.get::<_, String>(6),
                    "status": r.get::<_, i32>(7),
                    "method": r.get::<_, String>(8),
                    "path": r.get::<_, String>(9),
                    "hash": r.get::<_, String>(10),
                })
            })
            .collect())
    })
    .await
}

/// Why `find` found no single exchange.
#[derive(Debug)]
pub enum FindError {
    Unknown,
    Ambiguous {
        prefix: String,
        ids: usize,
    },
    /// The row is not the record it says (edited in the database).
    Tampered(String),
    Db(DbError),
}

impl std::fmt::Display for FindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FindError::Unknown => f.write_str("no such recorded exchange"),
            FindError::Ambiguous { prefix, ids } => write!(
                f,
                "{prefix} is the start of {ids} recorded exchanges' ids; give more of the id"
            ),
            FindError::Tampered(why) | FindError::Db(DbError(why)) => f.write_str(why),
        }
    }
}

/// `%`, `_` and `\` taken literally in a `LIKE` pattern.
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The record `id` names on any replica (the whole id, or an unambiguous prefix of at least
/// `MIN_PREFIX` characters), checked: its line hashes to the hash it states and to its row's,
/// and is the id and seq the row says. Carries `replica`.
pub async fn find(db: &Database, id: &str) -> Result<serde_json::Value, FindError> {
    let (exact, prefix) = (id.to_string(), format!("{}%", like_literal(id)));
    let by_prefix = id.len() >= super::query::MIN_PREFIX;
    let rows = db
        .run("record_find", move |pool| async move {
            let c = pool.get().await?;
            let rows = c
                .query(
                    "SELECT replica, id, seq, hash, line FROM agentgate.records
                     WHERE id = $1 OR ($2 AND id LIKE $3)
                     ORDER BY (id = $1) DESC, ts_ms DESC LIMIT 50",
                    &[&exact, &by_prefix, &prefix],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, String>(3),
                        r.get::<_, String>(4),
                    )
                })
                .collect::<Vec<_>>())
        })
        .await
        .map_err(FindError::Db)?;
    let Some(first) = rows.first() else {
        return Err(FindError::Unknown);
    };
    if first.1 != id {
        let mut ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            return Err(FindError::Ambiguous {
                prefix: id.to_string(),
                ids: ids.len(),
            });
        }
    }
    let (replica, rid, seq, hash, line) = first;
    let bad = |why: &str| {
        FindError::Tampered(format!(
            "the database row of {rid} (replica {replica}, seq {seq}) {why}; run `agentgate audit verify`"
        ))
    };
    let (body, stated) = unseal(line).ok_or_else(|| bad("is not a sealed record"))?;
    if crate::util::hex::hex(&boring::sha::sha256(body.as_bytes())) != stated || stated != hash {
        return Err(bad("was modified"));
    }
    let mut v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad("is not JSON"))?;
    if v["id"].as_str() != Some(rid.as_str()) || v["seq"].as_i64() != Some(*seq) {
        return Err(bad("holds another record"));
    }
    v["replica"] = replica.clone().into();
    Ok(v)
}

/// One chain's check in the database.
#[derive(Debug, Default)]
pub struct ChainReport {
    pub chain: String,
    pub replica: String,
    pub records: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Walks every chain in the database: each row's line hashes to what it states and to the
/// row's `hash`, holds the row's id, seq and `prev`, follows the previous row (seq + 1, `prev`
/// its hash), and the newest checkpoint signed by one of `keys` for the chain names a record
/// the chain still has, with that hash (records cut from the end are caught).
pub async fn verify(
    db: &Database,
    keys: &[crate::util::ed25519::PublicKey],
) -> Result<Vec<ChainReport>, DbError> {
    let chains: Vec<(String, String)> = db
        .run("verify_chains", |pool| async move {
            let c = pool.get().await?;
            let rows = c
                .query(
                    "SELECT chain, min(replica) FROM agentgate.records GROUP BY chain
                     UNION SELECT chain, min(replica) FROM agentgate.checkpoints GROUP BY chain
                     ORDER BY 2, 1",
                    &[],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (chain, replica) in chains {
        if !seen.insert(chain.clone()) {
            continue;
        }
        out.push(verify_chain(db, chain, replica, keys).await?);
    }
    Ok(out)
}

async fn verify_chain(
    db: &Database,
    chain: String,
    replica: String,
    keys: &[crate::util::ed25519::PublicKey],
) -> Result<ChainReport, DbError> {
    let mut rep = ChainReport {
        chain: chain.clone(),
        replica,
        ..Default::default()
    };
    // The newest signed checkpoint of this chain: the chain must still reach it.
    let ch = chain.clone();
    let lines: Vec<String> = db
        .run("verify_checkpoints", move |pool| async move {
            let c = pool.get().await?;
            let rows = c
                .query(
                    "SELECT line FROM agentgate.checkpoints WHERE chain = $1 ORDER BY n DESC",
                    &[&ch],
                )
                .await?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
        .await?;
    let signed: Vec<super::checkpoint::Checkpoint> = lines
        .iter()
        .filter_map(|l| super::checkpoint::Checkpoint::parse(l).and_then(Result::ok))
        .filter(|c| c.store == chain && c.signed_by(keys))
        .collect();
    // Where retention may have moved the chain's start: (last removed seq, its hash), signed.
    let retained: std::collections::HashSet<(u64, String)> = signed
        .iter()
        .flat_map(|c| c.retention.iter().map(|e| (e.seq, e.hash.clone())))
        .collect();
    let newest = signed.into_iter().next();
    let want = newest.as_ref().and_then(|c| c.seq).map(|s| s as i64);
    let mut at_checkpoint: Option<String> = None;
    let mut after = -1i64;
    let mut prev: Option<(i64, String)> = None;
    loop {
        let ch = chain.clone();
        let page: Vec<(i64, String, String, String, String, String)> = db
            .run("verify_page", move |pool| async move {
                let c = pool.get().await?;
                let rows = c
                    .query(
                        "SELECT seq, id, prev, hash, line, replica FROM agentgate.records
                         WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT 1000",
                        &[&ch, &after],
                    )
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                    .collect())
            })
            .await?;
        if page.is_empty() {
            break;
        }
        for (seq, id, row_prev, hash, line, replica) in page {
            after = seq;
            let at = format!("seq {seq} ({id})");
            if replica != rep.replica && rep.problems.len() < 20 {
                rep.problems.push(format!(
                    "{at}: the row says replica `{replica}`, the chain's other rows `{}`",
                    rep.replica
                ));
            }
            let Some((body, stated)) = unseal(&line) else {
                rep.problems
                    .push(format!("{at}: the row's line is not a sealed record"));
                continue;
            };
            let actual = crate::util::hex::hex(&boring::sha::sha256(body.as_bytes()));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let mut wrong = Vec::new();
            if actual != stated {
                wrong.push(format!(
                    "its record was modified (hash {actual}, it states {stated})"
                ));
            }
            if stated != hash {
                wrong.push(format!(
                    "the row's hash column {hash} is not the record's {stated}"
                ));
            }
            if v["seq"].as_i64() != Some(seq) || v["id"].as_str() != Some(id.as_str()) {
                wrong.push("the row's id or seq is not the record's".into());
            }
            if v["prev"].as_str() != Some(row_prev.as_str()) {
                wrong.push("the row's prev column is not the record's".into());
            }
            match &prev {
                None if rep.first_seq.is_none() && seq != 0 => {
                    let prev_of = (seq as u64 - 1, row_prev.clone());
                    if retained.contains(&prev_of) {
                        rep.notes.push(format!(
                            "the chain starts at seq {seq}: retention removed the records before it (a signed checkpoint says so)"
                        ));
                    } else if keys.is_empty() {
                        rep.notes.push(format!(
                            "the chain starts at seq {seq}; without a signing key, records removed from its start cannot be told from retention"
                        ));
                    } else {
                        wrong.push(format!(
                            "records 0..{} are missing before it, and no signed checkpoint records a retention that removed them",
                            seq - 1
                        ));
                    }
                }
                Some((p, _)) if *p + 1 != seq => wrong.push(format!(
                    "records {}..{} are missing before it",
                    p + 1,
                    seq - 1
                )),
                Some((_, ph)) if v["prev"].as_str() != Some(ph.as_str()) => wrong.push(format!(
                    "it does not follow the previous record (prev {}, the previous record's hash {ph}): a record was removed, inserted or replaced",
                    v["prev"].as_str().unwrap_or("?")
                )),
                _ => {}
            }
            if rep.first_seq.is_none() {
                rep.first_seq = Some(seq);
            }
            rep.last_seq = Some(seq);
            if wrong.is_empty() {
                rep.records += 1;
            } else if rep.problems.len() < 20 {
                rep.problems.push(format!("{at}: {}", wrong.join("; ")));
            }
            if want == Some(seq) {
                at_checkpoint = Some(stated.to_string());
            }
            prev = Some((seq, stated.to_string()));
        }
    }
    match newest {
        None if keys.is_empty() => rep.notes.push(
            "no signing key given (--pubkey, or --config's recording.signing_key): records cut from the end cannot be ruled out".into(),
        ),
        None => rep.notes.push(
            "no checkpoint signed by the given key(s) in the database: records cut from the end cannot be ruled out".into(),
        ),
        Some(c) => {
            let Some(s) = c.seq else { return Ok(rep) };
            match &at_checkpoint {
                Some(h) if *h == c.head => rep.notes.push(format!(
                    "checkpoint {} (seq {s}) signed by key {}: the chain reaches it",
                    c.n, c.key
                )),
                Some(h) => rep.problems.push(format!(
                    "the signed checkpoint {} names seq {s} with hash {}, the database holds {h}: records were replaced",
                    c.n, c.head
                )),
                None => rep.problems.push(format!(
                    "the signed checkpoint {} names seq {s}, which the database no longer holds: records were cut from the end (or not sent yet)",
                    c.n
                )),
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_an_id_literally() {
        for (id, want) in [
            ("abc", "abc"),
            ("a%b", "a\\%b"),
            ("a_b", "a\\_b"),
            ("a\\b", "a\\\\b"),
            ("%_%", "\\%\\_\\%"),
        ] {
            assert_eq!(like_literal(id), want, "{id}");
        }
    }

    #[test]
    fn a_row_is_made_of_the_sealed_line_only() {
        let body = r#"{"kind":"exchange","id":"r1","ts":"2026-11-28T00:00:00.500Z","conversation":"c","identity":{"subject":"ci"},"route":"mock","method":"POST","path":"/v1/x","response":{"status":201},"seq":7,"prev":"p"}"#;
        let (line, hash) = super::super::store::seal(body);
        let r = row_of(line.clone()).expect("a sealed record");
        assert_eq!((r.seq, r.id.as_str(), r.prev.as_str()), (7, "r1", "p"));
        assert_eq!((r.hash, r.line), (hash, line.clone()));
        assert_eq!((r.ts_ms, r.status), (1_795_824_000_500, 201));
        assert_eq!(
            (r.route.as_str(), r.subject.as_str(), r.path.as_str()),
            ("mock", "ci", "/v1/x")
        );
        // A line that is not sealed, or has no seq, is no row.
        assert!(row_of(body.to_string()).is_none());
        assert!(row_of(super::super::store::seal(r#"{"id":"x"}"#).0).is_none());
    }
}
