//! Masking a text that arrives in pieces (SSE deltas, TCP chunks). Each push releases all text
//! that can no longer be part of a match and holds back only the tail that could still become
//! one (`Engine::hold_from`: as it stands, decoded, or an escape cut short), so a value split at any offset is caught, no prefix of it is
//! released first, and the released text equals masking the whole text at once.

use super::{Engine, Rules, Tally, Vault};
use std::sync::Arc;

/// Bytes of already-released text kept as look-behind (`\b`) for the next scan.
const CONTEXT: usize = 4;

pub struct StreamMasker {
    engine: Arc<Engine>,
    rules: Arc<Rules>,
    vault: Option<Arc<Vault>>,
    restore: bool,
    /// `buf[..ctx]` was released already (look-behind only); `buf[ctx..]` is held.
    buf: String,
    ctx: usize,
    pub tally: Tally,
}

impl StreamMasker {
    pub fn new(
        engine: Arc<Engine>,
        rules: Arc<Rules>,
        vault: Option<Arc<Vault>>,
        restore: bool,
    ) -> Self {
        StreamMasker {
            engine,
            rules,
            vault,
            restore,
            buf: String::new(),
            ctx: 0,
            tally: Tally::default(),
        }
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() - self.ctx
    }

    /// Adds `chunk` and returns the text that is safe to release now (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        self.buf.push_str(chunk);
        if !self.restore && self.rules.allows_all() {
            // Nothing to find (a route that only scrubs its credentials): all of it goes on.
            return self.release(self.buf.len(), &[]);
        }
        // An escape the chunk cut short may finish a value: the text is read as if it ended
        // before it (values touching that end are open), and it is held.
        let whole = self.buf.as_bytes();
        let limit = super::encoded::open_escape(whole).map_or(whole.len(), |i| i.max(self.ctx));
        let bytes = &whole[..limit];
        let findings = self.engine.scan_from(bytes, self.ctx);
        let mut cut = self.engine.hold_from(bytes, self.ctx);
        for f in &findings {
            if f.anchor < cut && (f.end > cut || f.open) {
                cut = f.anchor;
            }
        }
        cut = super::encoded::escape_start(bytes, cut).max(self.ctx);
        while !self.buf.is_char_boundary(cut) {
            cut -= 1;
        }
        self.release(cut, &findings)
    }

    /// The end of the text: releases everything still held, masked.
    pub fn finish(&mut self) -> String {
        let findings = self.engine.scan_from(self.buf.as_bytes(), self.ctx);
        self.release(self.buf.len(), &findings)
    }

    fn release(&mut self, cut: usize, findings: &[super::Finding]) -> String {
        if cut <= self.ctx {
            return String::new();
        }
        let ready: Vec<super::Finding> = findings
            .iter()
            .filter(|f| f.end <= cut)
            .map(|f| super::Finding {
                start: f.start - self.ctx,
                end: f.end - self.ctx,
                anchor: f.anchor.max(self.ctx) - self.ctx,
                ..*f
            })
            .collect();
        let (out, tally) = self.engine.apply(
            &self.buf[self.ctx..cut],
            &ready,
            &self.rules,
            self.vault.as_deref(),
            self.restore,
        );
        self.tally.merge(tally);
        // Keep up to CONTEXT bytes before the cut (on a character boundary) as look-behind.
        let mut keep_from = cut.saturating_sub(CONTEXT);
        while !self.buf.is_char_boundary(keep_from) {
            keep_from -= 1;
        }
        self.buf.drain(..keep_from);
        self.ctx = cut - keep_from;
        out
    }
}
