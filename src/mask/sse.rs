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
    #[error("{0}")]
    Unmaskable(String),
}

pub struct SseMasker {
    docs: Documents,
    /// Bytes of an incomplete event, line ends already made `\n`.
    pending: Vec<u8>,
    /// The last byte read was a CR (a LF next belongs to it).
    after_cr: bool,
    /// Bytes read so far (a BOM is dropped only at the start).
    read: usize,
    pub tally: Tally,
}

/// Appends `chunk` with every line end (CRLF, CR, LF: all three end a line in SSE) made a LF,
/// so that what the masker parses and what a client parses are the same lines.
fn push_normalized(out: &mut Vec<u8>, chunk: &[u8], after_cr: &mut bool) {
    for &b in chunk {
        match b {
            b'\r' => {
                out.push(b'\n');
                *after_cr = true;
            }
            b'\n' if *after_cr => *after_cr = false,
            _ => {
                out.push(b);
                *after_cr = false;
            }
        }
    }
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
            after_cr: false,
            read: 0,
            tally: Tally::default(),
        }
    }

    /// Also stars the route's own credentials, split across documents too.
    pub fn with_secrets(mut self, secrets: Option<Arc<super::injected::SecretSet>>) -> Self {
        self.docs = self.docs.with_secrets(secrets);
        self
    }

    /// Each event is a whole message (MCP's JSON-RPC): masked whole, never joined to the next.
    pub fn whole_events(mut self) -> Self {
        self.docs = self.docs.whole_documents();
        self
    }

    /// Text held back across all channels.
    pub fn held(&self) -> usize {
        self.docs.held() + self.pending.len()
    }

    /// Adds bytes from the upstream; returns the bytes to send to the client now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SseError> {
        // A BOM at the start of the stream is not part of the first line (clients drop it).
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let mut chunk = chunk;
        let start = self.read;
        self.read += chunk.len();
        if start < BOM.len() {
            let n = (BOM.len() - start).min(chunk.len());
            if chunk[..n] == BOM[start..start + n] {
                chunk = &chunk[n..];
            } else {
                self.read = BOM.len().max(self.read);
            }
        }
        push_normalized(&mut self.pending, chunk, &mut self.after_cr);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let raw: Vec<u8> = self.pending.drain(..end).collect();
            self.event(&raw, &mut out);
        }
        self.take_tally();
        if let Some(why) = self.docs.refused.take() {
            return Err(SseError::Unmaskable(why));
        }
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

    /// Stops framing (a stream that only has its credentials scrubbed, past a bound): the text
    /// channels held, then the bytes of the unfinished event as they came (normalized line
    /// ends); the caller passes the rest of the stream through its byte scrubber.
    pub fn give_up(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let rest = self.docs.finish();
        emit(&[], rest, &mut out);
        out.append(&mut self.pending);
        self.take_tally();
        out
    }

    fn take_tally(&mut self) {
        self.tally.merge(std::mem::take(&mut self.docs.tally));
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(raw);
        let ev = parse_event(&text);
        // Every other line (`event:`, `id:`, comments) is masked too: a client reads them.
        let other: Vec<String> = ev.other.iter().map(|l| self.mask_line(l)).collect();
        let other: Vec<&str> = other.iter().map(String::as_str).collect();
        if ev.data_lines == 0 {
            // A comment or keep-alive.
            for l in &other {
                out.extend_from_slice(l.as_bytes());
                out.push(b'\n');
            }
            out.push(b'\n');
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
                emit(&other, docs, out);
            }
            Err(_) => {
                // `[DONE]` or other text: the open channels end here; then it, masked as text.
                let rest = self.docs.finish();
                emit(&[], rest, out);
                let data = self.docs.mask_text(&ev.data);
                render(&other, &data, out);
            }
        }
    }

    /// A field line other than `data:` (or a comment), its value masked as it stands.
    fn mask_line(&mut self, line: &str) -> String {
        match line.split_once(':') {
            Some((field, value)) => format!("{field}:{}", self.docs.mask_text(value)),
            None => self.docs.mask_text(line),
        }
    }
}
