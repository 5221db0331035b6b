//! Finds usage in a response body as it streams to the agent, without holding the stream back:
//! an SSE body is read line by line (only a line not ended yet is kept, and only `data:` lines
//! that mention `"usage"` are parsed); a JSON answer is kept until its end (up to a bound) and
//! parsed once.
//!
//! When the gateway itself asked a Chat Completions stream for usage (the agent did not), the
//! extra chunk that carries it (`"choices": []` and a `usage` object) is removed from what the
//! agent receives: only then is a line held until its end, so that no part of it goes out.
//!
//! Invariant: the bytes the agent receives are the upstream's, except the removed usage lines;
//! a usage line split at any byte across reads is read whole.

use super::Observed;
use memchr::{memchr_iter, memmem};

/// How the body is framed, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Json,
}

/// A line (SSE) or body (JSON) longer than this is not read for usage; the exchange then
/// counts as one that did not report it (and a limit charges what it reserved).
pub const MAX_DOCUMENT: usize = 16 << 20;

pub struct UsageScanner {
    framing: Framing,
    pub observed: Observed,
    /// The line not ended yet (SSE), or the body so far (JSON).
    carry: Vec<u8>,
    /// Past `MAX_DOCUMENT`: the rest of this line (or body) is skipped.
    overflow: bool,
    /// Remove the usage-only chunk of a Chat Completions stream.
    strip: bool,
    /// The first `data:` line was read for the model (every later one only if it has usage).
    first_read: bool,
}

impl UsageScanner {
    pub fn new(framing: Framing, strip: bool) -> UsageScanner {
        UsageScanner {
            framing,
            observed: Observed::default(),
            carry: Vec::new(),
            overflow: false,
            strip: strip && framing == Framing::Sse,
            first_read: false,
        }
    }

    /// Reads one chunk. `None`: the chunk goes to the agent as it is; `Some(bytes)`: these go
    /// instead (a usage line removed, or a line's start held until its end).
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        match self.framing {
            Framing::Json => {
                self.gather(chunk);
                if end && !self.overflow {
                    let body = std::mem::take(&mut self.carry);
                    self.observed.document(&body);
                }
                None
            }
            Framing::Sse => self.lines(chunk, end),
        }
    }

    fn gather(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.carry.len() + bytes.len() > MAX_DOCUMENT {
            self.overflow = true;
            self.carry = Vec::new();
            return;
        }
        self.carry.extend_from_slice(bytes);
    }

    fn lines(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        let mut out = self.strip.then(|| Vec::with_capacity(chunk.len()));
        let mut start = 0;
        for nl in memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..=nl];
            if self.carry.is_empty() && !self.overflow {
                self.line(piece, &mut out);
            } else {
                let mut whole = std::mem::take(&mut self.carry);
                whole.extend_from_slice(piece);
                if std::mem::take(&mut self.overflow) {
                    // Its start went out when it grew too long.
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(piece);
                    }
                } else if whole.len() > MAX_DOCUMENT {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(&whole);
                    }
                } else {
                    self.line(&whole, &mut out);
                }
            }
            start = nl + 1;
        }
        let tail = &chunk[start..];
        if !tail.is_empty() {
            if self.overflow {
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(tail);
                }
            } else if self.carry.len() + tail.len() > MAX_DOCUMENT {
                // Too long to be read: what was held goes out now, and so does the rest of it.
                self.overflow = true;
                let held = std::mem::take(&mut self.carry);
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&held);
                    o.extend_from_slice(tail);
                }
            } else {
                self.carry.extend_from_slice(tail);
            }
        }
        if end && !self.carry.is_empty() {
            // A last line without its newline.
            let whole = std::mem::take(&mut self.carry);
            self.line(&whole, &mut out);
        }
        out
    }

    /// One whole line (with its newline): read for usage, and copied to `out` unless it is
    /// the usage-only chunk the agent did not ask for.
    fn line(&mut self, line: &[u8], out: &mut Option<Vec<u8>>) {
        let data = line.strip_prefix(b"data:").filter(|d| {
            // The first event names the model even when the stream reports no usage.
            !std::mem::replace(&mut self.first_read, true) || has_usage_object(d)
        });
        if let Some(data) = data {
            let carried = self.observed.document(data);
            if carried && self.strip && usage_only_chunk(data) {
                return;
            }
        }
        if let Some(o) = out.as_mut() {
            o.extend_from_slice(line);
        }
    }
}

/// Whether a `"usage"` key in `data` opens an object: a stream that asked for usage carries
/// `"usage":null` on every chunk, and those are not worth a parse (bench: usage.rs).
pub(crate) fn has_usage_object(data: &[u8]) -> bool {
    memmem::find_iter(data, b"\"usage\"").any(|at| {
        let rest = &data[at + 7..];
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|r| r.trim_ascii_start().starts_with(b"{"))
    })
}

/// A Chat Completions chunk with no choices: the one `include_usage` adds.
fn usage_only_chunk(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        object: Option<String>,
    }
    serde_json::from_slice::<Chunk>(data).is_ok_and(|c| {
        c.choices.is_some_and(|v| v.is_empty())
            && c.object
                .as_deref()
                .is_none_or(|o| o == "chat.completion.chunk")
    })
}
