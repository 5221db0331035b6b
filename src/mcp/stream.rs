//! The server's answer as a sequence of JSON-RPC messages: a JSON body (one message or a batch)
//! gathered whole, or an SSE stream read event by event. Each message goes through a filter;
//! events the filter leaves alone go out byte for byte, edited ones are written again, dropped
//! ones not at all.
//!
//! Invariant: no byte of an event (or of a JSON body) goes out before the whole of it was
//! filtered; at most `max` bytes are held (a longer event or body ends the answer with an
//! error, never passes unfiltered).

use super::filter::Verdict;
use crate::util::sse;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Json,
    Sse,
}

pub struct MessageStream {
    framing: Framing,
    buf: Vec<u8>,
    /// How far `buf` was searched for an event's end.
    scanned: usize,
    max: usize,
    /// Ended with an error: the rest is dropped.
    failed: bool,
    /// Methods of server requests dropped (for the log and the record).
    pub dropped: Vec<String>,
}

/// What the filter does to one message.
pub type Filter<'a> = dyn FnMut(&mut Value) -> Verdict + 'a;

impl MessageStream {
    pub fn new(framing: Framing, max: usize) -> MessageStream {
        MessageStream {
            framing,
            buf: Vec::new(),
            scanned: 0,
            max,
            failed: false,
            dropped: Vec::new(),
        }
    }

    /// Bytes held back now (an event or a JSON body not yet whole).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Takes `chunk` (the stream ended after it when `end`) and returns what may go out now.
    pub fn push(&mut self, chunk: &[u8], end: bool, f: &mut Filter) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        self.buf.extend_from_slice(chunk);
        match self.framing {
            Framing::Json => {
                if self.buf.len() > self.max {
                    return self.fail();
                }
                if !end {
                    return Vec::new();
                }
                let whole = std::mem::take(&mut self.buf);
                self.json(whole, f)
            }
            Framing::Sse => {
                let mut out = Vec::new();
                loop {
                    let from = self.scanned.saturating_sub(sse::TERMINATOR_OVERLAP);
                    let Some(len) = sse::event_end(&self.buf[from..]).map(|e| from + e) else {
                        self.scanned = self.buf.len();
                        break;
                    };
                    let rest = self.buf.split_off(len);
                    let event = std::mem::replace(&mut self.buf, rest);
                    self.scanned = 0;
                    self.event(event, f, &mut out);
                }
                if end && !self.buf.is_empty() {
                    let event = std::mem::take(&mut self.buf);
                    self.event(event, f, &mut out);
                }
                if self.buf.len() > self.max {
                    out.extend(self.fail());
                }
                out
            }
        }
    }

    fn fail(&mut self) -> Vec<u8> {
        self.failed = true;
        self.buf = Vec::new();
        let msg = format!(
            "an MCP message from the server is larger than server.max_body ({} bytes); the gateway cannot check it, so the answer ends here",
            self.max
        );
        let e = serde_json::json!({"error": {"message": msg, "type": "upstream_error", "code": "response_too_large"}});
        match self.framing {
            Framing::Json => e.to_string().into_bytes(),
            Framing::Sse => format!("event: error\ndata: {e}\n\n").into_bytes(),
        }
    }

    /// A whole JSON body: each message filtered, written again only when something changed.
    fn json(&mut self, whole: Vec<u8>, f: &mut Filter) -> Vec<u8> {
        let Ok(mut v) = serde_json::from_slice::<Value>(&whole) else {
            return whole;
        };
        let changed = match &mut v {
            Value::Array(items) => {
                let mut changed = false;
                let mut kept = Vec::with_capacity(items.len());
                for mut m in std::mem::take(items) {
                    match f(&mut m) {
                        Verdict::Keep => kept.push(m),
                        Verdict::Changed => {
                            changed = true;
                            kept.push(m);
                        }
                        Verdict::Drop(method) => {
                            changed = true;
                            self.dropped.push(method);
                        }
                    }
                }
                *items = kept;
                changed
            }
            m => match f(m) {
                Verdict::Keep => false,
                Verdict::Changed => true,
                Verdict::Drop(method) => {
                    self.dropped.push(method);
                    return Vec::new();
                }
            },
        };
        if changed {
            serde_json::to_vec(&v).unwrap_or(whole)
        } else {
            whole
        }
    }

    /// One raw event (its blank line included, or the stream's last bytes).
    fn event(&mut self, raw: Vec<u8>, f: &mut Filter, out: &mut Vec<u8>) {
        let Ok(text) = std::str::from_utf8(&raw) else {
            out.extend_from_slice(&raw);
            return;
        };
        let ev = sse::parse(text);
        if ev.data_lines == 0 {
            out.extend_from_slice(&raw);
            return;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            out.extend_from_slice(&raw);
            return;
        };
        let verdict = match &mut v {
            // A batch in one event: each message on its own.
            Value::Array(items) => {
                let mut changed = false;
                items.retain_mut(|m| match f(m) {
                    Verdict::Keep => true,
                    Verdict::Changed => {
                        changed = true;
                        true
                    }
                    Verdict::Drop(method) => {
                        changed = true;
                        self.dropped.push(method);
                        false
                    }
                });
                if changed {
                    Verdict::Changed
                } else {
                    Verdict::Keep
                }
            }
            m => f(m),
        };
        match verdict {
            Verdict::Keep => out.extend_from_slice(&raw),
            Verdict::Changed => {
                for line in &ev.other {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                out.extend_from_slice(b"\n\n");
            }
            Verdict::Drop(method) => self.dropped.push(method),
        }
    }
}
