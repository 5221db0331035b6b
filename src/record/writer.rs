//! The recorder: a bounded queue the proxy submits `Draft`s to without ever blocking, and one
//! writer thread that masks each draft (every body, header value and path through the masking
//! engine with all detectors set to redact), renders it in the record format and appends it, in
//! batches, to the hash-chained store; it also runs retention. Under `on_failure: reject` a
//! failed write keeps its records and refuses new requests until the disk takes them again.

use super::capture::{Chunks, Draft, Headers};
use super::checkpointer::Checkpointer;
use super::format::{
    Body, Decisions, Event, HeaderFields, Record, Request, Response, Tls, TlsLegs,
};
use super::store::{IndexEntry, Store};
use super::Mode;
use crate::config::RecordingConfig;
use crate::mask::{Action, Engine, Rules};
use crate::metrics;
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

enum Msg {
    Record(Box<Draft>),
    Flush(Sender<()>),
}

pub struct Recorder {
    dir: PathBuf,
    /// Sends records to the shared store (`store.postgres`).
    shipper: Option<Arc<super::shared::Shipper>>,
    tx: SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    reject: bool,
}

impl Recorder {
    /// Opens the store in `dir` (the resolved `recording.dir`) and starts the writer thread,
    /// which signs checkpoints with `key`.
    /// With `db` (`store.postgres`), every committed record and checkpoint is also sent there.
    pub fn start(
        dir: PathBuf,
        settings: RecordingConfig,
        engine: Arc<Engine>,
        key: Arc<crate::util::ed25519::SigningKey>,
        db: Option<Arc<crate::db::Database>>,
    ) -> Result<Arc<Recorder>, String> {
        let store = Store::open(&dir, settings.segment_size)
            .map_err(|e| format!("recording store {}: {e}", dir.display()))?;
        let mut checkpoints = Checkpointer::new(&store, key, settings.checkpoints.clone())?;
        let shipper =
            db.map(|db| super::shared::Shipper::start(db, dir.clone(), store.id().to_string()));
        if let Some(s) = &shipper {
            checkpoints.send_to_postgres(s.clone());
        }
        log::info!(
            "recording store {} (id {}): checkpoints signed by key {} every {} records or {:?}",
            dir.display(),
            store.id(),
            checkpoints.key_id(),
            settings.checkpoints.every_records,
            settings.checkpoints.every
        );
        let (tx, rx) = sync_channel(settings.queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let depth = Arc::new(AtomicUsize::new(0));
        for r in ["queue_full", "disk_full", "io"] {
            metrics::RECORD_FAILURES.with_label_values(&[r]);
        }
        metrics::RECORD_STORE_BYTES.set(store.total() as i64);
        let writer = Writer {
            store,
            engine,
            rules: Rules::all(Action::Redact),
            settings: settings.clone(),
            healthy: healthy.clone(),
            depth: depth.clone(),
            retained_at_segment: 0,
            last_retention: Instant::now(),
            memo: Default::default(),
            checkpoints,
            checkpoint_failed: None,
            shipper: shipper.clone(),
        };
        std::thread::Builder::new()
            .name("agentgate recorder".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("starting the recorder: {e}"))?;
        Ok(Arc::new(Recorder {
            dir,
            shipper,
            tx,
            healthy,
            depth,
            capacity: settings.queue,
            reject: settings.reject_on_failure,
        }))
    }

    /// The records directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether new requests on recorded routes may proceed (`on_failure: reject` refuses them
    /// while records cannot be written or the queue is 80% full).
    /// So does a shared store whose queue overflowed (`store.postgres.queue`).
    pub fn accepting(&self) -> bool {
        !self.reject
            || (self.healthy.load(Ordering::Relaxed)
                && self.depth.load(Ordering::Relaxed) * 5 < self.capacity * 4
                && !self.shipper.as_ref().is_some_and(|s| s.overflowed()))
    }

    /// Queues a record; never blocks the request.
    pub fn submit(&self, draft: Draft) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        metrics::RECORD_QUEUE_DEPTH.inc();
        match self.tx.try_send(Msg::Record(Box::new(draft))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                metrics::RECORD_QUEUE_DEPTH.dec();
                metrics::RECORD_FAILURES
                    .with_label_values(&["queue_full"])
                    .inc();
                if self.reject {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                log::error!("recording queue full: a record was lost");
            }
        }
    }

    /// Waits (up to `timeout`) until every queued record is written.
    pub fn flush(&self, timeout: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let until = Instant::now() + timeout;
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
        if let Some(s) = &self.shipper {
            s.drain(until.saturating_duration_since(Instant::now()));
        }
    }
}

/// Header values the writer found nothing to mask in, by their bytes: most values (host,
/// content type, user agent, an SDK's own headers) are the same in every record, and looking
/// one up costs a fraction of checking it again. Values that were masked are not kept (the memo
/// would otherwise hold raw secrets for as long as it lives); they are masked each time.
/// Bounded: emptied when full, as values that never repeat (dates, upstream request ids) fill it
/// in time. Emptied too when the engine changes (a reload): a value clean for one engine may hold
/// another's detector.
#[derive(Default)]
struct HeaderMemo {
    clean: HashSet<Box<[u8]>>,
}

/// Longer values are checked each time (seldom repeated, and costly to hash and keep).
const MEMO_VALUE_MAX: usize = 256;
/// Values the memo holds before it is emptied (at most ~300 KB).
const MEMO_ENTRIES: usize = 1024;

impl HeaderMemo {
    fn mask<'a>(&mut self, engine: &Engine, rules: &Rules, v: &'a [u8]) -> Cow<'a, str> {
        if v.len() > MEMO_VALUE_MAX {
            return mask_value(engine, rules, v);
        }
        if self.clean.contains(v) {
            // Only values read as UTF-8 whole and left as they were are kept.
            if let Ok(s) = std::str::from_utf8(v) {
                return Cow::Borrowed(s);
            }
        }
        let out = mask_value(engine, rules, v);
        if let Cow::Borrowed(_) = out {
            if self.clean.len() >= MEMO_ENTRIES {
                self.clean.clear();
            }
            self.clean.insert(v.into());
        }
        out
    }
}

/// A header value or a path masked on its own (bytes that are not UTF-8 are read lossily
/// first); borrowed when masking leaves it as it is.
fn mask_value<'a>(engine: &Engine, rules: &Rules, v: &'a [u8]) -> Cow<'a, str> {
    let s = String::from_utf8_lossy(v);
    if !engine.any_candidate(s.as_bytes()) {
        return s;
    }
    let masked = engine.mask(&s, rules, None, false).0;
    match s {
        Cow::Borrowed(b) if masked == b => Cow::Borrowed(b),
        _ => Cow::Owned(masked),
    }
}

struct Writer {
    store: Store,
    engine: Arc<Engine>,
    rules: Rules,
    settings: RecordingConfig,
    healthy: Arc<AtomicBool>,
    depth: Arc<AtomicUsize>,
    /// The segment being written when retention last ran.
    retained_at_segment: u64,
    last_retention: Instant,
    memo: std::cell::RefCell<HeaderMemo>,
    checkpoints: Checkpointer,
    /// When writing a checkpoint last failed (they are retried a second later).
    checkpoint_failed: Option<Instant>,
    shipper: Option<Arc<super::shared::Shipper>>,
}

/// Records written with one `write` at most (the queue holds more when the writer is behind;
/// the store also ends a batch at 1 MiB).
const BATCH: usize = 64;

fn io_reason(e: &std::io::Error) -> &'static str {
    // ENOSPC, EDQUOT, EFBIG: the disk (or the file size limit) is full.
    match e.raw_os_error() {
        Some(28) | Some(122) | Some(27) => "disk_full",
        _ => "io",
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        // Poll rather than block: a sender then never has to wake this thread per record (on a
        // 2-core machine a wake-up per request costs more than writing the record). Every 1 ms,
        // not longer: a longer nap makes a burst of records (5 ms of traffic took ~1 ms of CPU
        // at once) that the requests sharing the cores wait behind (p99 at c=1: 1.6 ms).
        let mut batch: Vec<Draft> = Vec::with_capacity(BATCH);
        loop {
            let mut handled = 0;
            let mut open = true;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Record(d)) => {
                        batch.push(*d);
                        if batch.len() == BATCH {
                            handled += self.write_batch(&mut batch);
                        }
                    }
                    Ok(Msg::Flush(done)) => {
                        handled += self.write_batch(&mut batch);
                        self.checkpoint("flush");
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            handled += self.write_batch(&mut batch);
            if !open {
                self.checkpoint("flush");
                return;
            }
            // By size as soon as a closed segment could go (retention never deletes the segment
            // being written); by age every few seconds. Not per record: it lists the directory.
            let over = self.store.total() > self.settings.max_size
                && self.store.current_segment() != self.retained_at_segment;
            if over || self.last_retention.elapsed() > Duration::from_secs(5) {
                self.retention();
            }
            let retry = self
                .checkpoint_failed
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
            if let (true, Some(reason)) = (retry, self.checkpoints.due(&self.store)) {
                self.checkpoint(reason);
            }
            if handled == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Masks with `engine` from now on (the draft's configuration), forgetting what the memo
    /// found clean under the previous one.
    fn adopt(&mut self, engine: &Arc<Engine>) {
        if !Arc::ptr_eq(&self.engine, engine) {
            self.engine = engine.clone();
            self.memo.get_mut().clean.clear();
        }
    }

    /// Signs and sends a checkpoint of the store as it is now.
    fn checkpoint(&mut self, reason: &str) {
        match self.checkpoints.write(&self.store, reason, false) {
            Ok(()) => self.checkpoint_failed = None,
            Err(e) => {
                if self.checkpoint_failed.is_none() {
                    log::error!("recording: {e}");
                }
                self.checkpoint_failed = Some(Instant::now());
            }
        }
    }

    fn retention(&mut self) {
        self.retained_at_segment = self.store.current_segment();
        self.last_retention = Instant::now();
        match self
            .store
            .retain(self.settings.max_age, self.settings.max_size)
        {
            Ok(events) if !events.is_empty() => {
                log::info!("recording retention removed {} segment(s)", events.len());
                if let (Some(s), Some(seq)) = (&self.shipper, events.iter().map(|e| e.seq).max()) {
                    s.retained(seq);
                }
                self.checkpoints.retained(events);
            }
            Ok(_) => {}
            Err(e) => log::warn!("recording retention: {e}"),
        }
        metrics::RECORD_STORE_BYTES.set(self.store.total() as i64);
    }

    /// Writes the records queued since the last batch (and empties `batch`): one `write` to
    /// the segment and one to the index per batch. A batch whose write fails leaves nothing on
    /// disk (the store cuts the files back): under `on_failure: continue` its records are lost
    /// and counted; under `reject` they are kept and written again, in order, once the disk
    /// takes them, while new requests are refused. Returns the records taken off the queue.
    fn write_batch(&mut self, batch: &mut Vec<Draft>) -> usize {
        let n = batch.len();
        let mut done = 0;
        while done < n {
            let mut staged = 0;
            let mut failed = None;
            for d in &batch[done..] {
                if self.store.batch_full() {
                    break;
                }
                if let Some(e) = &d.engine {
                    self.adopt(e);
                }
                let (mut record, entry) = self.render(d);
                let r = self.store.stage(
                    |seq, prev, buf| {
                        record.seq = seq;
                        record.prev.clear();
                        record.prev.push_str(prev);
                        record.write_json(buf)
                    },
                    entry,
                );
                match r {
                    Ok(()) => staged += 1,
                    Err(e) => {
                        // Rendering does not fail; opening the next segment can. This record
                        // and those staged before it share the failure.
                        self.store.discard();
                        staged += 1;
                        failed = Some(e);
                        break;
                    }
                }
            }
            let written = match failed {
                Some(e) => Err(e),
                None => self.store.commit(),
            };
            match written {
                Ok(lines) => {
                    if let Some(s) = &self.shipper {
                        s.push(lines);
                    }
                    if self.settings.stdout {
                        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            crate::session_log::emit_line(
                                String::from_utf8_lossy(line).into_owned(),
                            );
                        }
                    }
                    metrics::RECORDS_WRITTEN.inc_by(staged as u64);
                    metrics::RECORD_STORE_BYTES.set(self.store.total() as i64);
                    self.healthy.store(true, Ordering::Relaxed);
                    done += staged;
                }
                Err(e) => {
                    let reason = io_reason(&e);
                    metrics::RECORD_FAILURES
                        .with_label_values(&[reason])
                        .inc_by(staged as u64);
                    if !self.settings.reject_on_failure {
                        log::error!("recording: cannot write {staged} record(s) ({e}); they are lost (on_failure: continue)");
                        done += staged;
                        continue;
                    }
                    // reject: refuse new requests and keep these records until they can be written.
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        log::error!("recording: cannot write ({e}); refusing new requests until records can be written again");
                    }
                    self.retention();
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        batch.clear();
        self.depth.fetch_sub(n, Ordering::Relaxed);
        metrics::RECORD_QUEUE_DEPTH.sub(n as i64);
        n
    }

    /// `s` masked; borrowed when masking leaves it as it is (most paths).
    fn mask_text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        mask_value(&self.engine, &self.rules, s.as_bytes())
    }

    fn mask_body<'a>(&self, b: &'a [u8]) -> Body<'a> {
        match self.engine.mask_body(b, &self.rules) {
            Some(m) => Body::Text(m),
            None => Body::Binary(b.len()),
        }
    }

    fn mask_chunks<'a>(&self, c: &'a Chunks) -> Body<'a> {
        match c.contiguous() {
            Cow::Borrowed(b) => self.mask_body(b),
            Cow::Owned(joined) => match self.mask_body(&joined) {
                Body::Text(m) => Body::Text(Cow::Owned(m.into_owned())),
                Body::Binary(n) => Body::Binary(n),
            },
        }
    }

    /// Header values masked one by one (through the memo: most values repeat from record to
    /// record); one field per name, the last one sent winning, sorted by name. Values with
    /// nothing to mask are borrowed from the draft. `own_id`, for the response, is this
    /// exchange's request id: agentgate's own `x-request-id` (32 hex digits, random, then a
    /// counter whose leading zeros make a digit run the card detector checks and turns down at
    /// every start) is written as it is, as the record's `id` is.
    fn headers<'a>(&self, h: &'a Headers, own_id: Option<&'a str>) -> HeaderFields<'a> {
        let mut memo = self.memo.borrow_mut();
        let mut fields: Vec<(&str, Cow<'a, str>)> = h
            .iter()
            .map(|(k, v)| {
                let value = match own_id {
                    Some(id) if k.as_str() == "x-request-id" && v.as_bytes() == id.as_bytes() => {
                        Cow::Borrowed(id)
                    }
                    _ => memo.mask(&self.engine, &self.rules, v.as_bytes()),
                };
                (k.as_str(), value)
            })
            .collect();
        // Stable: of fields with one name, the last sent stays last.
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(&str, Cow<'a, str>)> = Vec::with_capacity(fields.len());
        for f in fields {
            match out.last_mut() {
                Some(last) if last.0 == f.0 => *last = f,
                _ => out.push(f),
            }
        }
        HeaderFields(out)
    }

    /// The record (masked) and its index line. Serialized straight from these structs, most
    /// fields borrowed from the draft: no JSON tree is built per record.
    fn render<'a>(&self, d: &'a Draft) -> (Record<'a>, IndexEntry) {
        let full = d.mode == Mode::Full;
        let path = self.mask_text(&d.path);
        let tls = |t: &'a Option<(String, String)>| {
            t.as_ref().map(|(version, cipher)| Tls { version, cipher })
        };
        let events = if full {
            d.events.as_ref().map(|ev| {
                ev.iter()
                    .map(|(t, data)| Event {
                        t_ms: (t * 1000.0).round() / 1000.0,
                        data: self.mask_body(data.as_bytes()),
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            None
        };
        let entry = IndexEntry {
            id: d.id.clone(),
            seq: 0,
            ts_ms: d.ts_ms,
            route: d.route.clone(),
            subject: d.identity.as_ref().map(|i| i.subject.clone()),
            conversation: d.conversation.clone(),
            status: d.status,
            method: d.method.clone(),
            path: path.to_string(),
            segment: 0,
            offset: 0,
            len: 0,
            hash: String::new(),
        };
        let record = Record {
            kind: "exchange",
            id: &d.id,
            ts: &d.ts,
            conversation: &d.conversation,
            identity: d.identity.as_deref(),
            route: d.route.as_deref(),
            recording: d.mode.as_str(),
            method: &d.method,
            path,
            request: Request {
                headers: self.headers(&d.request_headers, None),
                body: if full {
                    d.request_body.as_ref().map(|b| self.mask_chunks(b))
                } else {
                    None
                },
                bytes: d.request_bytes,
                truncated: d.request_truncated,
            },
            response: Response {
                status: d.status,
                headers: self.headers(&d.response_headers, Some(&d.id)),
                body: if full && events.is_none() {
                    d.response_body.as_ref().map(|b| self.mask_chunks(b))
                } else {
                    None
                },
                events,
                bytes: d.response_bytes,
                truncated: d.response_truncated,
            },
            usage: d.usage.as_ref(),
            decisions: Decisions {
                masked: d.masked.as_ref(),
                guardrail: d.guardrail.as_deref(),
                approval: d.approval.as_ref(),
                error: d.error.as_deref(),
            },
            tls: TlsLegs {
                downstream: tls(&d.downstream_tls),
                upstream: tls(&d.upstream_tls),
            },
            duration_ms: d.duration_ms,
            upstream_ttfb_ms: d.ttfb_ms,
            seq: 0,
            prev: String::new(),
        };
        (record, entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::record::store;
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue};

    /// A recorder with the built-in detectors writing to a fresh directory named after `name`.
    fn recorder(name: &str) -> (std::path::PathBuf, Arc<Recorder>) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings: RecordingConfig = serde_json::from_str("{}").unwrap();
        let engine = Arc::new(Engine::new(&[], [1; 32]).unwrap());
        let key = Arc::new(crate::util::ed25519::SigningKey::generate().unwrap());
        let rec = Recorder::start(dir.clone(), settings, engine, key, None).unwrap();
        (dir, rec)
    }

    /// A record as written: every field, masked, in the layout readers parse (the writer
    /// builds the JSON by hand, so this pins it down).
    #[test]
    fn a_record_has_every_field_masked() {
        let (dir, rec) = recorder("agentgate-record");
        let h = |v: &[(&'static str, &'static str)]| -> Headers {
            v.iter()
                .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
                .collect()
        };
        let email = "jane.doe@example.com";
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123";
        let request = format!(r#"{{"messages":[{{"content":"mail {email} \"q\"\n"}}]}}"#);
        let base = Draft {
            id: "r-1".into(),
            ts: "2026-11-29T13:00:00.000Z".into(),
            ts_ms: 1,
            conversation: "c\"1".into(),
            identity: Some(Arc::new(Identity {
                subject: "agent".into(),
                issuer: "service-account".into(),
                method: crate::identity::AuthMethod::ServiceAccount,
                groups: vec!["a".into(), "b".into()],
                person: None,
            })),
            route: Some("openai".into()),
            mode: Mode::Full,
            method: "POST".into(),
            path: format!("/v1/x?to={email}"),
            request_headers: h(&[
                ("x-b", "2"),
                ("x-a", "1"),
                ("x-a", "last"),
                ("x-tab", "a\tb"),
            ]),
            request_body: Some(Chunks(vec![
                Bytes::copy_from_slice(&request.as_bytes()[..10]),
                Bytes::copy_from_slice(&request.as_bytes()[10..]),
            ])),
            request_bytes: request.len() as u64,
            status: 200,
            response_headers: h(&[
                ("content-type", "application/octet-stream"),
                ("x-note", "key sk-proj-abcdefghijklmnopqrstuvwxyz0123 end"),
            ]),
            response_body: Some(Chunks::from(vec![0xff, 0xfe, 0])),
            response_bytes: 3,
            response_truncated: true,
            masked: Some(serde_json::json!({"request": {"email": 1}})),
            guardrail: Some("no-keys".into()),
            approval: Some(serde_json::json!({"id": "ap-1", "decision": "approved"})),
            error: Some("upstream_timeout".into()),
            downstream_tls: Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
            upstream_tls: None,
            duration_ms: 1.25,
            ttfb_ms: None,
            ..Draft::default()
        };
        rec.submit(base);
        rec.submit(Draft {
            id: "r-2".into(),
            mode: Mode::Full,
            events: Some(vec![
                (0.5, format!("{{\"t\":\"{key}\"}}")),
                (1.0, "[DONE]".into()),
            ]),
            ..Draft::default()
        });
        rec.flush(Duration::from_secs(10));
        let segment = store::segments(&dir).unwrap()[0];
        let text = std::fs::read_to_string(store::segment_path(&dir, segment)).unwrap();
        assert!(!text.contains(email) && !text.contains(key), "{text}");
        let idx = store::read_index(&dir);
        let mut r = store::read_record(&dir, &idx[0]).unwrap();
        for k in ["seq", "prev", "hash"] {
            assert!(r.as_object_mut().unwrap().remove(k).is_some(), "{k}");
        }
        let body = r["request"]["body"].as_str().unwrap().to_string();
        assert_eq!(body, request.replace(email, "[REDACTED:EMAIL]"));
        let masked_path = r["path"].as_str().unwrap().to_string();
        // A header value with a key: masked, the other values of the message as they were.
        let note = r["response"]["headers"]["x-note"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            note.starts_with("key [REDACTED:") && note.ends_with(" end"),
            "{note}"
        );
        assert!(masked_path.starts_with("/v1/x?to=") && !masked_path.contains(email));
        assert_eq!(
            r,
            serde_json::json!({
                "kind": "exchange", "id": "r-1", "ts": "2026-11-29T13:00:00.000Z",
                "conversation": "c\"1",
                "identity": {"subject": "agent", "issuer": "service-account", "method": "service_account", "groups": ["a", "b"]},
                "route": "openai", "recording": "full", "method": "POST", "path": masked_path,
                "request": {
                    "headers": {"x-a": "last", "x-b": "2", "x-tab": "a\tb"},
                    "body": body, "bytes": request.len(), "truncated": false
                },
                "response": {
                    "status": 200, "headers": {"content-type": "application/octet-stream", "x-note": note},
                    "body": {"binary_bytes": 3}, "events": null, "bytes": 3, "truncated": true
                },
                "decisions": {
                    "masked": {"request": {"email": 1}}, "guardrail": "no-keys",
                    "approval": {"id": "ap-1", "decision": "approved"}, "error": "upstream_timeout"
                },
                "tls": {"downstream": {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}, "upstream": null},
                "duration_ms": 1.25, "upstream_ttfb_ms": null
            })
        );
        let sse = store::read_record(&dir, &idx[1]).unwrap();
        assert_eq!(sse["response"]["body"], serde_json::Value::Null);
        let events = sse["response"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["t_ms"], 0.5);
        assert!(!events[0]["data"].as_str().unwrap().contains(key));
        assert_eq!(events[1]["data"], "[DONE]");
        assert_eq!(crate::record::verify::verify(&dir).unwrap().verified, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Header values through the memo: the same as masking each value afresh, first time and
    /// from memory, for values masked, clean, not UTF-8 and too long to keep; only clean values
    /// are kept, and the memo stays bounded.
    #[test]
    fn header_values_are_masked_on_their_own_and_remembered() {
        let engine = Engine::new(&[], [1; 32]).unwrap();
        let rules = Rules::all(Action::Redact);
        let fresh = |v: &[u8]| -> String {
            let s = String::from_utf8_lossy(v);
            engine.mask(&s, &rules, None, false).0
        };
        let long_key = format!(
            "x{} sk-proj-abcdefghijklmnopqrstuvwxyz0123",
            " ".repeat(300)
        );
        let table: Vec<(&[u8], bool)> = vec![
            // Loopback: a candidate the ipv4 detector's check turns down.
            (b"127.0.0.1:8443", false),
            (b"10.0.0.7:8443", true),
            (b"application/json", false),
            (b"key sk-proj-abcdefghijklmnopqrstuvwxyz0123 end", true),
            (b"card 4111 1111 1111 1111", true),
            // 16 digits failing Luhn: a candidate, nothing masked.
            (b"0000000000000042", false),
            (b"mail jane.doe@example.com", true),
            (b"caf\xe9 jane.doe@example.com", true),
            (long_key.as_bytes(), true),
            (b"", false),
        ];
        let mut memo = HeaderMemo::default();
        for round in 0..2 {
            for (v, masked) in &table {
                let got = memo.mask(&engine, &rules, v);
                let want = fresh(v);
                assert_eq!(got, want, "round {round}: {:?}", String::from_utf8_lossy(v));
                assert_eq!(got.as_bytes() != *v, *masked, "{got}");
                // Written as it is only when it is the value itself.
                assert_eq!(matches!(got, Cow::Borrowed(_)), !masked, "{got}");
            }
        }
        // Kept: the clean values alone (a raw secret is not held on to; the long one was never
        // a candidate).
        let mut kept: Vec<&[u8]> = memo.clean.iter().map(|v| &v[..]).collect();
        kept.sort();
        let mut want: Vec<&[u8]> = table.iter().filter(|(_, m)| !m).map(|(v, _)| *v).collect();
        want.sort();
        assert_eq!(kept, want);
        for i in 0..3 * MEMO_ENTRIES {
            let v = format!(
                "Sun, 29 Nov 2026 13:{:02}:{:02} GMT {i}",
                i / 60 % 60,
                i % 60
            );
            assert_eq!(
                memo.mask(&engine, &rules, v.as_bytes()),
                fresh(v.as_bytes())
            );
            assert!(memo.clean.len() <= MEMO_ENTRIES);
        }
    }

    /// agentgate's own request id is written as it is in the `x-request-id` response header,
    /// and only there and only when it is this record's id: the same value in another header or
    /// in the request, or another value in `x-request-id`, is masked like any.
    #[test]
    fn only_the_records_own_request_id_skips_masking() {
        let (dir, rec) = recorder("agentgate-record-id");
        // A 16-digit run that passes Luhn: masked anywhere but as the record's own id.
        let id = "r-4111111111111111";
        let hv = |s: &str| HeaderValue::from_str(s).unwrap();
        rec.submit(Draft {
            id: id.into(),
            mode: Mode::Full,
            request_headers: vec![(HeaderName::from_static("x-request-id"), hv(id))],
            response_headers: vec![
                (HeaderName::from_static("x-request-id"), hv(id)),
                (HeaderName::from_static("x-upstream-request-id"), hv(id)),
            ],
            ..Draft::default()
        });
        rec.submit(Draft {
            id: "r-2".into(),
            mode: Mode::Full,
            response_headers: vec![(HeaderName::from_static("x-request-id"), hv(id))],
            ..Draft::default()
        });
        rec.flush(Duration::from_secs(10));
        let idx = store::read_index(&dir);
        let one = store::read_record(&dir, &idx[0]).unwrap();
        let two = store::read_record(&dir, &idx[1]).unwrap();
        assert_eq!(one["id"], id);
        assert_eq!(one["response"]["headers"]["x-request-id"], id);
        for masked in [
            &one["request"]["headers"]["x-request-id"],
            &one["response"]["headers"]["x-upstream-request-id"],
            &two["response"]["headers"]["x-request-id"],
        ] {
            let v = masked.as_str().unwrap();
            assert!(
                v.contains("[REDACTED:") && !v.contains("4111111111111111"),
                "{v}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A body cut at `recording.max_body` is not JSON any more and is masked as text: a key
    /// escaped twice in it (a tool call's `arguments`, JSON inside a JSON string) was written
    /// as it came, while the same body whole, masked as JSON, had it redacted (issue 22).
    #[test]
    fn a_twice_escaped_value_in_a_body_that_is_not_json_is_masked() {
        let (dir, rec) = recorder("agentgate-record-escaped");
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
        let whole = format!(
            r#"{{"function":{{"arguments":"{{\"text\": \"\\u0073\\u006b{}\"}}"}},"pad":"xx"}}"#,
            &key[2..]
        );
        let cut = &whole[..whole.len() - 6];
        for (id, body) in [("whole", whole.as_str()), ("cut", cut)] {
            rec.submit(Draft {
                id: id.into(),
                mode: Mode::Full,
                request_body: Some(Chunks::from(body.as_bytes().to_vec())),
                request_bytes: body.len() as u64,
                ..Draft::default()
            });
        }
        rec.flush(Duration::from_secs(10));
        let idx = store::read_index(&dir);
        for entry in &idx {
            let r = store::read_record(&dir, entry).unwrap();
            let body = r["request"]["body"].as_str().unwrap().to_string();
            assert!(
                body.contains("[REDACTED:OPENAI_KEY]"),
                "{}: {body}",
                r["id"]
            );
            assert!(
                !body.contains("u006b-proj") && !body.contains(key),
                "{body}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
