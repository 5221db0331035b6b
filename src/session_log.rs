//! One JSON line per exchange on stdout (target `agentgate::session`), for the cluster's log
//! pipeline, and the process logger that writes everything else to stderr.
//!
//! Invariant: a session line holds no header values and no bodies, so no credential can reach it.

use crate::mask::injected::SecretSet;
use crate::metrics;
use crate::util::time::rfc3339;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{Duration, SystemTime};

pub const TARGET: &str = "agentgate::session";

#[derive(serde::Serialize, Clone, Copy)]
pub struct Tls<'a> {
    pub version: &'a str,
    pub cipher: &'a str,
}

/// One exchange. Serialized straight from borrowed fields: no intermediate JSON tree.
#[derive(serde::Serialize)]
pub struct SessionRecord<'a> {
    pub ts: String,
    pub kind: &'static str,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ttfb_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub http_version: &'static str,
    pub downstream_tls: Option<Tls<'a>>,
    pub upstream_tls: Option<Tls<'a>>,
    pub upstream_reused: Option<bool>,
    /// Who called: subject, issuer, auth method, groups.
    pub identity: Option<&'a crate::identity::Identity>,
    /// What masking did, per direction (`detector/action` -> count).
    pub masked: Option<&'a serde_json::Value>,
    /// Approvals this request needed: id, rule, state, decisions, how long it waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a serde_json::Value>,
    /// Tokens and cost of a model call: model, input, output, cached_input, reasoning, cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'a serde_json::Value>,
    pub error: Option<&'a str>,
}

pub fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// Bytes of session lines held between flushes; past this (stdout stalled), lines are dropped
/// and counted rather than making a request wait on stdout or memory grow without bound.
const MAX_PENDING: usize = 8 << 20;
/// How often the writer thread flushes pending lines: requests never wake it.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Lines appended by request threads (a memcpy under an uncontended lock), written in one `write`
/// per flush by the writer thread.
static PENDING: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
/// Whether the writer thread runs; without it, lines go out synchronously through the logger.
static WRITER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Starts the thread that writes pending session lines to stdout every `FLUSH_EVERY`.
pub fn start_writer() {
    WRITER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("agentgate session log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        match spawned {
            Ok(_) => true,
            Err(e) => {
                log::error!(
                    "cannot start the session log writer; writing lines synchronously: {e}"
                );
                false
            }
        }
    });
}

/// Writes every pending line to stdout: the writer's tick, and once more before exit.
pub fn flush() {
    let batch = match PENDING.lock() {
        Ok(mut pending) if !pending.is_empty() => std::mem::take(&mut *pending),
        _ => return,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&batch);
    let _ = out.flush();
}

pub fn emit(r: &SessionRecord<'_>) {
    if WRITER.get() == Some(&true) {
        // Serialized straight into the pending buffer (no line allocated and copied).
        match PENDING.lock() {
            Ok(mut pending) if pending.len() < MAX_PENDING - MAX_LINE => {
                let at = pending.len();
                // Serializing a struct of plain fields into a `Vec` cannot fail.
                if serde_json::to_writer(&mut *pending, r).is_ok() {
                    pending.push(b'\n');
                } else {
                    pending.truncate(at);
                }
            }
            _ => metrics::SESSION_LOG_DROPPED.inc(),
        }
        return;
    }
    if let Ok(line) = serde_json::to_string(r) {
        emit_line(line);
    }
}

/// Room kept for one session line when it is serialized into the pending buffer (identities
/// with many groups make long lines; the buffer's bound is loose by this much).
const MAX_LINE: usize = 64 << 10;

/// Queues one JSON line for stdout (session lines, streamed records).
pub fn emit_line(line: String) {
    if WRITER.get() != Some(&true) {
        log::info!(target: TARGET, "{line}");
        return;
    }
    match PENDING.lock() {
        Ok(mut pending) if pending.len() + line.len() < MAX_PENDING => {
            pending.extend_from_slice(line.as_bytes());
            pending.push(b'\n');
        }
        _ => metrics::SESSION_LOG_DROPPED.inc(),
    }
}

/// Every route's injected credentials, for the log's last check (`set_confidential`).
static CONFIDENTIAL: std::sync::RwLock<Option<std::sync::Arc<SecretSet>>> =
    std::sync::RwLock::new(None);

/// The credentials no log line may show: the running configuration's (set at start-up and on
/// every reload). Pingora's own lines quote upstream bytes, where an echoed key can hide.
pub fn set_confidential(set: Option<std::sync::Arc<SecretSet>>) {
    match CONFIDENTIAL.write() {
        Ok(mut g) => *g = set,
        Err(p) => *p.into_inner() = set,
    }
}

/// One log message as one line with no credential in it: injected credentials are starred out
/// and control characters escaped (free text from agents, upstreams or approvers cannot forge
/// a line).
pub fn confine(message: String) -> String {
    let mut bytes = message.into_bytes();
    if let Ok(g) = CONFIDENTIAL.read() {
        if let Some(set) = g.as_ref() {
            set.mask_in_place(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if !text.chars().any(char::is_control) {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// Session lines to stdout, the rest to stderr. `AGENTGATE_LOG` = error|warn|info|debug|trace
/// sets agentgate's level (default info); Pingora's own logs stay at warn unless it is debug or trace.
pub struct Logger {
    ours: LevelFilter,
    theirs: LevelFilter,
}

impl Logger {
    pub fn install() {
        let ours = std::env::var("AGENTGATE_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LevelFilter::Info);
        let theirs = if ours >= LevelFilter::Debug {
            ours
        } else {
            LevelFilter::Warn
        };
        let logger = Box::new(Logger { ours, theirs });
        if log::set_boxed_logger(logger).is_ok() {
            log::set_max_level(ours.max(theirs).max(LevelFilter::Info));
        }
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        if m.target() == TARGET {
            return true;
        }
        let limit = if m.target().starts_with("agentgate") {
            self.ours
        } else {
            self.theirs
        };
        m.level() <= limit
    }

    fn log(&self, record: &Record) {
        if record.target() == TARGET {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", record.args());
            return;
        }
        // Pingora reports failed downstream handshakes only as a log line; count them here.
        if record.level() == Level::Error
            && record
                .target()
                .starts_with("pingora_core::services::listening")
            && record
                .args()
                .to_string()
                .starts_with("Downstream handshake")
        {
            metrics::TLS_HANDSHAKE_FAILURES
                .with_label_values(&["downstream"])
                .inc();
        }
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{} {:<5} {}: {}",
                rfc3339(SystemTime::now()),
                record.level(),
                record.target(),
                confine(record.args().to_string())
            );
        }
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_message_is_one_line_without_credentials() {
        set_confidential(SecretSet::new(["sk-route-secret-0123".to_string()]).unwrap());
        let table = [
            ("plain", "plain"),
            (
                "reason: ok\n2026-12-04T00:00:00Z INFO forged",
                "reason: ok\\n2026-12-04T00:00:00Z INFO forged",
            ),
            ("a\r\nb\tc\u{1b}[31m", "a\\r\\nb\\tc\\u{1b}[31m"),
            (
                "bad header: Bearer sk-route-secret-0123!",
                "bad header: Bearer ********************!",
            ),
        ];
        for (raw, want) in table {
            assert_eq!(confine(raw.to_string()), want, "{raw:?}");
        }
        set_confidential(None);
    }
}
