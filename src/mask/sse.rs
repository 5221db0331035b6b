//! Masking a Server-Sent Events stream event by event: each event's JSON goes through
//! `Documents` (every string leaf of every event, whatever its type, split-safe per path),
//! comments and keep-alives pass as they are, and data that is not JSON (`[DONE]`) ends the open
//! channels and is masked as text. Framing stays valid SSE.

use super::documents::{Documents, Out};
use super::{Engine, Rules, Tally, Vault};
use crate::util::sse::{event_end, parse as parse_event};
use serde_json::Value;
use std::sync::Arc;

/// An event larger than this is refused (the stream ends with an error event).
pub const MAX_EVENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an SSE event is larger than {MAX_EVENT} bytes")]
    EventTooLarge,
}

pub struct SseMasker {
    docs: Documents,
    /// Bytes of an incomplete event.
    pending: Vec<u8>,
    pub tally: Tally,
}

fn render(other: &[&str], data: &str, out: &mut Vec<u8>) {
    for l in other {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    for l in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Renders documents as events: the one that arrived with its own lines, copies carrying held
/// text with their channel's event name.
fn emit(other: &[&str], docs: Vec<Out>, out: &mut Vec<u8>) {
    for d in docs {
        match d {
            Out::Arrived(v) => render(other, &v.to_string(), out),
            Out::Flushed(kind, v) if kind.is_empty() => render(&[], &v.to_string(), out),
            Out::Flushed(kind, v) => render(&[&format!("event: {kind}")], &v.to_string(), out),
        }
    }
}

impl SseMasker {
    pub fn new(
        engine: Arc<Engine>,
        rules: Arc<Rules>,
        vault: Option<Arc<Vault>>,
        restore: bool,
    ) -> Self {
        SseMasker {
            docs: Documents::new(engine, rules, vault, restore),
            pending: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Also stars the route's own credentials, split across documents too.
    pub fn with_secrets(mut self, secrets: Option<Arc<super::injected::SecretSet>>) -> Self {
        self.docs = self.docs.with_secrets(secrets);
        self
    }

    /// Text held back across all channels.
    pub fn held(&self) -> usize {
        self.docs.held() + self.pending.len()
    }

    /// Adds bytes from the upstream; returns the bytes to send to the client now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SseError> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let raw: Vec<u8> = self.pending.drain(..end).collect();
            self.event(&raw, &mut out);
        }
        self.take_tally();
        if self.pending.len() > MAX_EVENT {
            return Err(SseError::EventTooLarge);
        }
        Ok(out)
    }

    /// The end of the stream: flushes held text and any incomplete last event.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let mut raw = std::mem::take(&mut self.pending);
            raw.extend_from_slice(b"\n\n");
            self.event(&raw, &mut out);
        }
        let rest = self.docs.finish();
        emit(&[], rest, &mut out);
        self.take_tally();
        out
    }

    fn take_tally(&mut self) {
        self.tally.merge(std::mem::take(&mut self.docs.tally));
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(raw);
        let ev = parse_event(&text);
        if ev.data_lines == 0 {
            // A comment or keep-alive: pass it on as it is.
            out.extend_from_slice(raw);
            return;
        }
        let kind = ev
            .other
            .iter()
            .find_map(|l| l.strip_prefix("event:"))
            .map(str::trim)
            .unwrap_or("");
        match serde_json::from_str::<Value>(&ev.data) {
            Ok(v) => {
                let docs = self.docs.document(kind, v);
                emit(&ev.other, docs, out);
            }
            Err(_) => {
                // `[DONE]` or other text: the open channels end here; then it, masked as text.
                let rest = self.docs.finish();
                emit(&[], rest, out);
                let data = self.docs.mask_text(&ev.data);
                render(&ev.other, &data, out);
            }
        }
    }
}
