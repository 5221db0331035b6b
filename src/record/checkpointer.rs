//! The writer's checkpoints: when one is due (every `every_records` records, every `every` when
//! something changed, after a retention run deleted segments, at a flush such as shutdown, and
//! once at start), and where it goes: the store's `checkpoints.jsonl`, a JSON line on stdout
//! for the cluster's log pipeline, and optionally an HTTPS endpoint.
//!
//! Invariant: a checkpoint is written only after the records it names are durable (the store's
//! segment and index are synced first), so a checkpoint on disk ahead of the chain means
//! records were removed, never a crash.
//!
//! `Sink` is the seam for other destinations (the shared store's `checkpoints` table with
//! `store.postgres`): each gets every signed line, in order, and must not block the writer.

use super::checkpoint::{Checkpoint, RetentionEvent, SigningKey, KIND};
use super::store::{self, Store, GENESIS};
use crate::config::CheckpointSettings;
use crate::metrics;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Somewhere signed checkpoint lines go besides the store.
pub trait Sink: Send {
    fn name(&self) -> &'static str;
    /// Hands a line over; must not block the writer thread.
    fn send(&mut self, line: &str);
}

struct Stdout;

impl Sink for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }
    fn send(&mut self, line: &str) {
        crate::session_log::emit_line(line.to_string());
        metrics::CHECKPOINTS
            .with_label_values(&["stdout", "ok"])
            .inc();
    }
}

/// POSTs each line to an HTTPS endpoint from a thread of its own (retried with backoff; a line
/// the queue cannot take is counted as an error and left to the other sinks).
struct Https {
    tx: SyncSender<String>,
}

const HTTPS_ATTEMPTS: u32 = 5;

impl Https {
    fn start(url: String, ca_file: Option<std::path::PathBuf>) -> Result<Https, String> {
        let (tx, rx) = sync_channel::<String>(1024);
        std::thread::Builder::new()
            .name("agentgate checkpoints".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    log::error!("checkpoints: cannot start the HTTPS sender");
                    return;
                };
                let fetcher =
                    crate::upstream::client::Fetcher::new(ca_file, Duration::from_secs(10));
                for line in rx {
                    let mut backoff = Duration::from_millis(500);
                    for attempt in 1..=HTTPS_ATTEMPTS {
                        let req = http::Request::post(&url)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(line.clone().into_bytes());
                        let outcome = match req {
                            Ok(req) => match rt.block_on(fetcher.send(req)) {
                                Ok(r) if r.status().is_success() => Ok(()),
                                Ok(r) => Err(format!("answered {}", r.status())),
                                Err(e) => Err(e.0),
                            },
                            Err(e) => Err(e.to_string()),
                        };
                        match outcome {
                            Ok(()) => {
                                metrics::CHECKPOINTS.with_label_values(&["https", "ok"]).inc();
                                break;
                            }
                            Err(e) if attempt == HTTPS_ATTEMPTS => {
                                metrics::CHECKPOINTS
                                    .with_label_values(&["https", "error"])
                                    .inc();
                                log::error!("checkpoints: POST {url} failed {attempt} times ({e}); this checkpoint is only in the store and on stdout");
                            }
                            Err(_) => {
                                std::thread::sleep(backoff);
                                backoff *= 2;
                            }
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the checkpoint sender: {e}"))?;
        Ok(Https { tx })
    }
}

impl Sink for Https {
    fn name(&self) -> &'static str {
        "https"
    }
    fn send(&mut self, line: &str) {
        if let Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) =
            self.tx.try_send(line.to_string())
        {
            metrics::CHECKPOINTS
                .with_label_values(&["https", "error"])
                .inc();
        }
    }
}

/// Inserts each line into the shared store's `checkpoints` table (through the record shipper's
/// queue, drained on the database runtime).
struct Postgres(Arc<super::shared::Shipper>);

impl Sink for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn send(&mut self, line: &str) {
        self.0.push_checkpoint(line);
        metrics::CHECKPOINTS
            .with_label_values(&["postgres", "ok"])
            .inc();
    }
}

pub struct Checkpointer {
    key: Arc<SigningKey>,
    settings: CheckpointSettings,
    next_n: u64,
    prev: String,
    /// The newest record the last checkpoint named (`None`: none yet, or no checkpoint).
    covered: Option<Option<u64>>,
    retention: Vec<RetentionEvent>,
    last_at: Instant,
    sinks: Vec<Box<dyn Sink>>,
}

impl Checkpointer {
    /// Goes on from the store's own last checkpoint (number and hash).
    pub fn new(
        store: &Store,
        key: Arc<SigningKey>,
        settings: CheckpointSettings,
    ) -> Result<Checkpointer, String> {
        let last = store::local_checkpoints(store.dir()).pop();
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if settings.stdout {
            sinks.push(Box::new(Stdout));
        }
        if let Some(url) = &settings.url {
            sinks.push(Box::new(Https::start(
                url.clone(),
                settings.ca_file.clone(),
            )?));
        }
        for (sink, result) in [
            ("store", "ok"),
            ("store", "error"),
            ("stdout", "ok"),
            ("https", "ok"),
            ("https", "error"),
        ] {
            metrics::CHECKPOINTS.with_label_values(&[sink, result]);
        }
        Ok(Checkpointer {
            key,
            next_n: last.as_ref().map_or(0, |c| c.n + 1),
            prev: last.as_ref().map_or(GENESIS.to_string(), |c| c.hash()),
            covered: None,
            retention: Vec::new(),
            last_at: Instant::now(),
            settings,
            sinks,
        })
    }

    /// Sends every checkpoint to the shared store too.
    pub fn send_to_postgres(&mut self, shipper: Arc<super::shared::Shipper>) {
        metrics::CHECKPOINTS.with_label_values(&["postgres", "ok"]);
        self.sinks.push(Box::new(Postgres(shipper)));
    }

    pub fn key_id(&self) -> String {
        self.key.public().id()
    }

    /// Retention events to sign in the next checkpoint.
    pub fn retained(&mut self, events: Vec<RetentionEvent>) {
        self.retention.extend(events);
    }

    fn changed(&self, store: &Store) -> bool {
        !self.retention.is_empty() || self.covered != Some(store.next_seq.checked_sub(1))
    }

    /// Why a checkpoint is due now, if one is.
    pub fn due(&self, store: &Store) -> Option<&'static str> {
        let covered = self.covered.flatten().map_or(0, |s| s + 1);
        if self.covered.is_none() {
            Some("start")
        } else if !self.retention.is_empty() {
            Some("retention")
        } else if store.next_seq.saturating_sub(covered) >= self.settings.every_records {
            Some("records")
        } else if self.last_at.elapsed() >= self.settings.every && self.changed(store) {
            Some("interval")
        } else {
            None
        }
    }

    /// Signs and writes a checkpoint of what `store` holds now (if anything changed since the
    /// last one, or `force`).
    pub fn write(&mut self, store: &Store, reason: &str, force: bool) -> Result<(), String> {
        if !force && self.covered.is_some() && !self.changed(store) {
            return Ok(());
        }
        let fail = |e: String| {
            metrics::CHECKPOINTS
                .with_label_values(&["store", "error"])
                .inc();
            e
        };
        store
            .sync()
            .map_err(|e| fail(format!("syncing records before a checkpoint: {e}")))?;
        let seq = store.next_seq.checked_sub(1);
        let mut c = Checkpoint {
            kind: KIND.into(),
            v: 1,
            store: store.id().to_string(),
            n: self.next_n,
            seq,
            head: store.last_hash.clone(),
            ts: crate::util::time::rfc3339(std::time::SystemTime::now()),
            prev: self.prev.clone(),
            retention: self.retention.clone(),
            reason: reason.into(),
            key: String::new(),
            sig: String::new(),
        };
        c.sign(&self.key).map_err(fail)?;
        let line = c.line();
        store
            .append_checkpoint(&line)
            .map_err(|e| fail(format!("writing checkpoint #{}: {e}", c.n)))?;
        metrics::CHECKPOINTS
            .with_label_values(&["store", "ok"])
            .inc();
        for s in &mut self.sinks {
            s.send(&line);
            log::debug!("checkpoint #{} sent to {}", c.n, s.name());
        }
        self.next_n += 1;
        self.prev = c.hash();
        self.covered = Some(seq);
        self.retention.clear();
        self.last_at = Instant::now();
        Ok(())
    }
}
