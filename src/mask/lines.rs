//! Masking a stream of JSON texts one per line: NDJSON / JSON Lines (`application/x-ndjson`,
//! `application/jsonl`) and JSON text sequences (`application/json-seq`, RFC 7464: each text
//! after an RS byte). Each line's JSON goes through `Documents` (every string leaf, split-safe
//! per path); a line that is not JSON ends the open channels and is masked as text.

use super::documents::{Documents, Out};
use super::sse::{SseError, MAX_EVENT};
use super::{Engine, Rules, Tally, Vault};
use serde_json::Value;
use std::sync::Arc;

const RS: u8 = 0x1E;

pub struct LinesMasker {
    docs: Documents,
    pending: Vec<u8>,
    /// JSON text sequences: every text written after an RS byte.
    seq: bool,
    pub tally: Tally,
}

impl LinesMasker {
    pub fn new(
        engine: Arc<Engine>,
        rules: Arc<Rules>,
        vault: Option<Arc<Vault>>,
        restore: bool,
        seq: bool,
    ) -> Self {
        LinesMasker {
            docs: Documents::new(engine, rules, vault, restore),
            pending: Vec::new(),
            seq,
            tally: Tally::default(),
        }
    }

    /// Also stars the route's own credentials, split across documents too.
    pub fn with_secrets(mut self, secrets: Option<Arc<super::injected::SecretSet>>) -> Self {
        self.docs = self.docs.with_secrets(secrets);
        self
    }

    pub fn held(&self) -> usize {
        self.docs.held() + self.pending.len()
    }

    /// Adds bytes from the upstream; returns the bytes to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SseError> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(n) = memchr::memchr(b'\n', &self.pending[start..]) {
            let line = self.pending[start..start + n].to_vec();
            self.line(&line, &mut out);
            start += n + 1;
        }
        self.pending.drain(..start);
        self.tally.merge(std::mem::take(&mut self.docs.tally));
        if let Some(why) = self.docs.refused.take() {
            return Err(SseError::Unmaskable(why));
        }
        if self.pending.len() > MAX_EVENT {
            return Err(SseError::EventTooLarge);
        }
        Ok(out)
    }

    /// The end of the stream: a last line without its newline, and held text.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, &mut out);
        }
        let rest = self.docs.finish();
        self.emit(rest, &mut out);
        self.tally.merge(std::mem::take(&mut self.docs.tally));
        out
    }

    /// Stops framing (see `SseMasker::give_up`): held text, then the unfinished line as it came.
    pub fn give_up(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let rest = self.docs.finish();
        self.emit(rest, &mut out);
        out.append(&mut self.pending);
        self.tally.merge(std::mem::take(&mut self.docs.tally));
        out
    }

    fn emit(&self, docs: Vec<Out>, out: &mut Vec<u8>) {
        for d in docs {
            let (Out::Arrived(v) | Out::Flushed(_, v)) = d;
            if self.seq {
                out.push(RS);
            }
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let body = line.strip_prefix(&[RS]).unwrap_or(line);
        if body.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(raw);
            out.push(b'\n');
            return;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => {
                let docs = self.docs.document("", v);
                self.emit(docs, out);
            }
            Err(_) => {
                let rest = self.docs.finish();
                self.emit(rest, out);
                let text = self.docs.mask_text(&String::from_utf8_lossy(line));
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            }
        }
    }
}
