//! Recording every exchange (masked) for audit and replay: the proxy hands a `Draft` to a
//! bounded queue; one writer thread masks it (every body, header value and path goes through the
//! masking engine with all detectors set to redact, so the store never holds a secret or
//! personal value, whatever the route's own policy) and appends it to the hash-chained store.

pub mod render;
pub mod store;
pub mod verify;

use crate::config::RecordingConfig;
use crate::identity::Identity;
use crate::mask::{Action, Engine, Rules};
use crate::metrics;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{IndexEntry, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Headers, bodies and SSE events (masked).
    #[default]
    Full,
    /// Everything but bodies and events.
    Metadata,
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "full" => Mode::Full,
            "metadata" => Mode::Metadata,
            "off" => Mode::Off,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Metadata => "metadata",
            Mode::Off => "off",
        }
    }
}

/// One exchange as the proxy saw it (bodies not masked yet).
#[derive(Debug, Default)]
pub struct Draft {
    pub id: String,
    pub ts: String,
    pub ts_ms: u64,
    pub conversation: String,
    pub identity: Option<Identity>,
    pub route: Option<String>,
    pub mode: Mode,
    pub method: String,
    pub path: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<Vec<u8>>,
    pub request_bytes: u64,
    pub request_truncated: bool,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<Vec<u8>>,
    pub response_bytes: u64,
    pub response_truncated: bool,
    /// SSE events sent to the agent: (milliseconds since the request began, data).
    pub events: Option<Vec<(f64, String)>>,
    pub masked: Option<serde_json::Value>,
    pub guardrail: Option<String>,
    pub approval: Option<serde_json::Value>,
    pub error: Option<String>,
    pub downstream_tls: Option<(String, String)>,
    pub upstream_tls: Option<(String, String)>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
}

/// What the proxy collects of an exchange while it runs (bounded by `max` bytes per body).
#[derive(Debug, Default)]
pub struct Capture {
    pub mode: Mode,
    pub max: usize,
    pub conversation: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub request_truncated: bool,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub response_truncated: bool,
    pub sse: bool,
    sse_pending: Vec<u8>,
    /// How much of `sse_pending` was searched for an event's end already.
    sse_scanned: usize,
    /// Dropping the rest of an event larger than `max`.
    sse_skipping: bool,
    events_bytes: usize,
    pub events: Vec<(f64, String)>,
}

impl Capture {
    pub fn new(mode: Mode, max: usize, conversation: String) -> Capture {
        Capture {
            mode,
            max,
            conversation,
            ..Capture::default()
        }
    }

    pub fn request_chunk(&mut self, b: &[u8]) {
        if self.mode != Mode::Full {
            return;
        }
        let room = self.max.saturating_sub(self.request_body.len());
        self.request_body.extend_from_slice(&b[..b.len().min(room)]);
        self.request_truncated |= b.len() > room;
    }

    /// A chunk of the response as the agent got it; SSE is kept as events with their time.
    pub fn response_chunk(&mut self, b: &[u8], t_ms: f64) {
        if self.mode != Mode::Full {
            return;
        }
        if !self.sse {
            let room = self.max.saturating_sub(self.response_body.len());
            self.response_body
                .extend_from_slice(&b[..b.len().min(room)]);
            self.response_truncated |= b.len() > room;
            return;
        }
        self.sse_pending.extend_from_slice(b);
        loop {
            // Only the bytes not searched yet (one back, for a "\n\n" split across chunks).
            let from = self.sse_scanned.saturating_sub(1);
            let Some(at) = self.sse_pending[from..]
                .windows(2)
                .position(|w| w == b"\n\n")
            else {
                self.sse_scanned = self.sse_pending.len();
                break;
            };
            let end = from + at + 2;
            self.sse_scanned = 0;
            if std::mem::take(&mut self.sse_skipping) {
                // The rest of an event too large to keep.
                self.sse_pending.drain(..end);
                continue;
            }
            let raw: Vec<u8> = self.sse_pending.drain(..end).collect();
            let text = String::from_utf8_lossy(&raw);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            if self.events_bytes + data.len() > self.max {
                self.response_truncated = true;
                continue;
            }
            self.events_bytes += data.len();
            self.events.push((t_ms, data));
        }
        if self.sse_pending.len() > self.max {
            // An event larger than a record keeps (a hostile upstream may never end one): drop
            // what came so far and skip to its end, holding one byte to find a split "\n\n".
            let last = self.sse_pending.pop();
            self.sse_pending.clear();
            self.sse_pending.extend(last);
            self.sse_scanned = self.sse_pending.len();
            self.sse_skipping = true;
            self.response_truncated = true;
        }
    }
}

enum Msg {
    Record(Box<Draft>),
    Flush(Sender<()>),
}

pub struct Recorder {
    dir: PathBuf,
    tx: SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    reject: bool,
}

impl Recorder {
    /// Opens the store in `dir` (the resolved `recording.dir`) and starts the writer thread.
    pub fn start(
        dir: PathBuf,
        settings: RecordingConfig,
        engine: Arc<Engine>,
    ) -> Result<Arc<Recorder>, String> {
        let store = Store::open(&dir, settings.segment_size)
            .map_err(|e| format!("recording store {}: {e}", dir.display()))?;
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
        };
        std::thread::Builder::new()
            .name("agentgate recorder".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("starting the recorder: {e}"))?;
        Ok(Arc::new(Recorder {
            dir,
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
    pub fn accepting(&self) -> bool {
        !self.reject
            || (self.healthy.load(Ordering::Relaxed)
                && self.depth.load(Ordering::Relaxed) * 5 < self.capacity * 4)
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
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
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
}

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
        loop {
            let mut handled = 0;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Record(d)) => {
                        self.write(*d);
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        metrics::RECORD_QUEUE_DEPTH.dec();
                        handled += 1;
                    }
                    Ok(Msg::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            // By size as soon as a closed segment could go (retention never deletes the segment
            // being written); by age every few seconds. Not per record: it lists the directory.
            let over = self.store.total() > self.settings.max_size
                && self.store.current_segment() != self.retained_at_segment;
            if over || self.last_retention.elapsed() > Duration::from_secs(5) {
                self.retention();
            }
            if handled == 0 {
                std::thread::sleep(Duration::from_millis(1));
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
            Ok(n) if n > 0 => log::info!("recording retention removed {n} segment(s)"),
            Ok(_) => {}
            Err(e) => log::warn!("recording retention: {e}"),
        }
        metrics::RECORD_STORE_BYTES.set(self.store.total() as i64);
    }

    fn write(&mut self, d: Draft) {
        let (mut record, entry) = self.render(d);
        loop {
            let rendered = self.store.append_with(
                |seq, prev, buf| {
                    record.seq = seq;
                    record.prev.clear();
                    record.prev.push_str(prev);
                    serde_json::to_writer(buf, &record)
                },
                entry.clone(),
            );
            match rendered {
                Ok(line) => {
                    if self.settings.stdout {
                        crate::session_log::emit_line(line.to_string());
                    }
                    metrics::RECORDS_WRITTEN.inc();
                    metrics::RECORD_STORE_BYTES.set(self.store.total() as i64);
                    self.healthy.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    let reason = io_reason(&e);
                    metrics::RECORD_FAILURES.with_label_values(&[reason]).inc();
                    if !self.settings.reject_on_failure {
                        log::error!("recording: cannot write a record ({e}); it is lost (on_failure: continue)");
                        return;
                    }
                    // reject: refuse new requests and keep this record until it can be written.
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        log::error!("recording: cannot write ({e}); refusing new requests until records can be written again");
                    }
                    self.retention();
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn mask_text(&self, s: &str) -> String {
        self.engine.mask(s, &self.rules, None, false).0
    }

    fn mask_body(&self, b: &[u8]) -> serde_json::Value {
        match self.engine.mask_body(b, &self.rules) {
            Some(m) => serde_json::Value::String(
                String::from_utf8(m)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            None => serde_json::json!({"binary_bytes": b.len()}),
        }
    }

    /// Header values masked in one pass (joined by NUL, which no detector matches across).
    fn headers(&self, h: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
        let joined: String = h
            .iter()
            .map(|(_, v)| v.replace('\0', " "))
            .collect::<Vec<_>>()
            .join("\0");
        let masked = self.mask_text(&joined);
        let mut m = serde_json::Map::new();
        for ((k, _), v) in h.iter().zip(masked.split('\0')) {
            m.insert(k.clone(), serde_json::Value::String(v.to_string()));
        }
        m
    }

    /// The record (masked) and its index line. Serialized straight from these structs: no
    /// JSON tree is built per record.
    fn render(&self, d: Draft) -> (Record, IndexEntry) {
        let full = d.mode == Mode::Full;
        let path = self.mask_text(&d.path);
        let tls = |t: Option<(String, String)>| t.map(|(version, cipher)| Tls { version, cipher });
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
            path: path.clone(),
            segment: 0,
            offset: 0,
            len: 0,
        };
        let record = Record {
            kind: "exchange",
            id: d.id,
            ts: d.ts,
            conversation: d.conversation,
            identity: d.identity,
            route: d.route,
            recording: d.mode.as_str(),
            method: d.method,
            path,
            request: Request {
                headers: self.headers(&d.request_headers),
                body: if full {
                    d.request_body.as_deref().map(|b| self.mask_body(b))
                } else {
                    None
                },
                bytes: d.request_bytes,
                truncated: d.request_truncated,
            },
            response: Response {
                status: d.status,
                headers: self.headers(&d.response_headers),
                body: if full && events.is_none() {
                    d.response_body.as_deref().map(|b| self.mask_body(b))
                } else {
                    None
                },
                events,
                bytes: d.response_bytes,
                truncated: d.response_truncated,
            },
            decisions: Decisions {
                masked: d.masked,
                guardrail: d.guardrail,
                approval: d.approval,
                error: d.error,
            },
            tls: TlsLegs {
                downstream: tls(d.downstream_tls),
                upstream: tls(d.upstream_tls),
            },
            duration_ms: d.duration_ms,
            upstream_ttfb_ms: d.ttfb_ms,
            seq: 0,
            prev: String::new(),
        };
        (record, entry)
    }
}

/// One stored exchange, as written (then sealed with its `hash`). Readers parse it as JSON.
#[derive(serde::Serialize)]
struct Record {
    kind: &'static str,
    id: String,
    ts: String,
    conversation: String,
    identity: Option<Identity>,
    route: Option<String>,
    recording: &'static str,
    method: String,
    path: String,
    request: Request,
    response: Response,
    decisions: Decisions,
    tls: TlsLegs,
    duration_ms: f64,
    upstream_ttfb_ms: Option<f64>,
    seq: u64,
    prev: String,
}

#[derive(serde::Serialize)]
struct Request {
    headers: serde_json::Map<String, serde_json::Value>,
    body: Option<serde_json::Value>,
    bytes: u64,
    truncated: bool,
}

#[derive(serde::Serialize)]
struct Response {
    status: u16,
    headers: serde_json::Map<String, serde_json::Value>,
    body: Option<serde_json::Value>,
    events: Option<Vec<Event>>,
    bytes: u64,
    truncated: bool,
}

#[derive(serde::Serialize)]
struct Event {
    t_ms: f64,
    data: serde_json::Value,
}

#[derive(serde::Serialize)]
struct Decisions {
    masked: Option<serde_json::Value>,
    guardrail: Option<String>,
    approval: Option<serde_json::Value>,
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct TlsLegs {
    downstream: Option<Tls>,
    upstream: Option<Tls>,
}

#[derive(serde::Serialize)]
struct Tls {
    version: String,
    cipher: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_sse_events_with_their_time_and_bounds_bodies() {
        let mut c = Capture::new(Mode::Full, 13, "c".into());
        c.sse = true;
        c.response_chunk(b"data: {\"a\":1}\n\ndata: [DO", 1.5);
        c.response_chunk(b"NE]\n\n: keep-alive\n\n", 3.0);
        assert_eq!(
            c.events,
            vec![(1.5, "{\"a\":1}".to_string()), (3.0, "[DONE]".to_string())]
        );
        assert!(!c.response_truncated);
        c.request_chunk(b"0123456789abcdef");
        assert_eq!(c.request_body, b"0123456789abc");
        assert!(c.request_truncated);
        // An event larger than the bound is dropped (the record says truncated), also when it
        // arrives in pieces and never ends; events after it are kept; memory stays bounded.
        let mut c = Capture::new(Mode::Full, 64, "c".into());
        c.sse = true;
        c.response_chunk(b"data: first\n", 1.0);
        c.response_chunk(b"\ndata: ", 2.0);
        for _ in 0..100 {
            c.response_chunk(&[b'A'; 50], 3.0);
            assert!(c.sse_pending.len() <= 64 + 50);
        }
        assert!(c.response_truncated);
        c.response_chunk(b"AAA\n", 4.0);
        c.response_chunk(b"\ndata: after\n\n", 5.0);
        assert_eq!(
            c.events,
            vec![(2.0, "first".to_string()), (5.0, "after".to_string())]
        );
        // The total kept is bounded too.
        let mut c = Capture::new(Mode::Full, 10, "c".into());
        c.sse = true;
        c.response_chunk(b"data: 123456\n\ndata: 7890ab\n\ndata: c\n\n", 1.0);
        assert_eq!(
            c.events,
            vec![(1.0, "123456".to_string()), (1.0, "c".to_string())]
        );
        let mut m = Capture::new(Mode::Metadata, 10, "c".into());
        m.request_chunk(b"abc");
        assert!(m.request_body.is_empty());
    }
}
