//! Finds usage in a response body as it streams to the agent, without holding the stream back:
//! an SSE body is read line by line (only a line not ended yet is kept, and only `data:` lines
//! that mention `"usage"` are parsed); a JSON answer is kept until its end (up to a bound) and
//! parsed once.
//!
//! When the gateway itself asked a Chat Completions stream for usage (the agent did not), the
//! extra chunk that carries it (`"choices": []` and a `usage` object) is removed from what the
//! agent receives: only then is a line held until its end, so that no part of it goes out.
//!
//! With a cap (a `cut_streams` limit), every `data:` line is read for the text it generates
//! (content, reasoning, refusal and tool-call argument deltas of the three APIs), estimated in
//! tokens; once the estimate passes the cap, the stream is cut: the line that passed it is
//! replaced by the given error event and nothing after it reaches the agent.
//!
//! Invariant: the bytes the agent receives are the upstream's, except the removed usage lines
//! and what follows a cut; a usage line split at any byte across reads is read whole.

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
    cap: Option<Cap>,
    /// Count generated text without a cap (a limit charges what an unreported stream generated).
    count: bool,
    /// Generated text seen so far: ASCII bytes, and other characters.
    generated: (u64, u64),
    /// With a cap: the open event's lines before its first `data:` line (`event:`, `id:`...),
    /// held so that a cut at that data line leaves no event without data behind.
    pending: Vec<u8>,
    /// A `data:` line of the open event went out.
    mid_event: bool,
    /// The stream passed its cap: the rest is dropped.
    pub cut: bool,
}

/// Where a stream is cut, and the event that ends it.
struct Cap {
    tokens: u64,
    event: Vec<u8>,
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
            cap: None,
            count: false,
            generated: (0, 0),
            pending: Vec::new(),
            mid_event: false,
            cut: false,
        }
    }

    /// Cuts an SSE stream once it has generated more than `tokens` (estimated), ending it with
    /// `event` (a whole SSE event).
    pub fn with_cap(mut self, tokens: u64, event: Vec<u8>) -> UsageScanner {
        if self.framing == Framing::Sse {
            self.cap = Some(Cap { tokens, event });
        }
        self
    }

    /// Counts the text an SSE stream generates (`generated_tokens`), without cutting it.
    pub fn with_counting(mut self) -> UsageScanner {
        self.count = self.framing == Framing::Sse;
        self
    }

    /// The output tokens generated so far: what the stream reported, or the estimate from its
    /// text (one token per 4 ASCII bytes, one per other character), the larger.
    pub fn generated_tokens(&self) -> u64 {
        let reported = self.observed.usage().map_or(0, |u| u.output);
        self.estimate().max(reported)
    }

    /// The output tokens estimated from the text generated so far. A cut follows this alone:
    /// a count reported at the stream's end comes after the content it counts.
    fn estimate(&self) -> u64 {
        let (ascii, other) = self.generated;
        ascii.div_ceil(4).saturating_add(other)
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
        if self.cut {
            return Some(Vec::new());
        }
        let mut out = (self.strip || self.cap.is_some()).then(|| Vec::with_capacity(chunk.len()));
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
                        o.append(&mut self.pending);
                        o.extend_from_slice(piece);
                    }
                } else if whole.len() > MAX_DOCUMENT {
                    if let Some(o) = out.as_mut() {
                        o.append(&mut self.pending);
                        o.extend_from_slice(&whole);
                    }
                } else {
                    self.line(&whole, &mut out);
                }
            }
            start = nl + 1;
            if self.cut {
                self.carry = Vec::new();
                return out;
            }
        }
        let tail = &chunk[start..];
        if !tail.is_empty() {
            if self.overflow {
                if let Some(o) = out.as_mut() {
                    o.append(&mut self.pending);
                    o.extend_from_slice(tail);
                }
            } else if self.carry.len() + tail.len() > MAX_DOCUMENT {
                // Too long to be read: what was held goes out now, and so does the rest of it.
                self.overflow = true;
                let held = std::mem::take(&mut self.carry);
                if let Some(o) = out.as_mut() {
                    o.append(&mut self.pending);
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
        if end && !self.cut {
            if let Some(o) = out.as_mut() {
                o.append(&mut self.pending);
            }
        }
        out
    }

    /// One whole line (with its newline): read for usage, and copied to `out` unless it is
    /// the usage-only chunk the agent did not ask for.
    fn line(&mut self, line: &[u8], out: &mut Option<Vec<u8>>) {
        if self.cut {
            return;
        }
        let is_data = line.starts_with(b"data:");
        if self.cap.is_some() || self.count {
            if is_data {
                let (ascii, other) = generated_text(&line[5..]);
                self.generated.0 += ascii;
                self.generated.1 += other;
            } else if self.cap.is_some() && !self.mid_event && !line.trim_ascii().is_empty() {
                // A field before the event's data: held until the data is read.
                self.pending.extend_from_slice(line);
                return;
            }
        }
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
        if let Some(cap) = &self.cap {
            if self.estimate() > cap.tokens {
                self.cut = true;
                // The open event's held fields go, never to be sent.
                self.pending = Vec::new();
                if let Some(o) = out.as_mut() {
                    if self.mid_event {
                        // Part of this event's data went out: it ends here, then the error.
                        o.push(b'\n');
                    }
                    o.extend_from_slice(&cap.event);
                }
                return;
            }
        }
        if let Some(o) = out.as_mut() {
            o.append(&mut self.pending);
            o.extend_from_slice(line);
        }
        self.mid_event = is_data || (self.mid_event && !line.trim_ascii().is_empty());
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

/// The generated text a stream's `data:` document carries (ASCII bytes, other characters): every
/// string of a Chat Completions `choices[].delta` (content, refusal, reasoning, tool-call and
/// legacy function-call arguments, an audio transcript...), the Responses API's `*.delta`
/// events, Anthropic's `content_block_delta` (text, thinking, partial JSON). Base64 payloads
/// (`data`, `*_b64`: audio, images) are priced apart from text and not counted; documents that
/// repeat earlier text (`response.completed`, `*.done`) count nothing.
pub fn generated_text(data: &[u8]) -> (u64, u64) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
        return (0, 0);
    };
    let mut n = (0u64, 0u64);
    if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
        for c in choices {
            if let Some(d) = c.get("delta") {
                strings(d, &mut n);
            }
        }
    } else if let Some(t) = v.get("type").and_then(|t| t.as_str()) {
        // Anthropic's deltas, and the Responses API's (`response.audio.delta` is base64 audio;
        // its transcript's deltas are text).
        let text_delta = t == "content_block_delta"
            || (t.ends_with(".delta") && (!t.contains("audio") || t.contains("transcript")));
        if let Some(d) = v.get("delta").filter(|_| text_delta) {
            strings(d, &mut n);
        }
    }
    n
}

/// Adds the text of every string under `v`, but for keys that are not generated text.
fn strings(v: &serde_json::Value, n: &mut (u64, u64)) {
    match v {
        serde_json::Value::String(s) => {
            let ascii = s.bytes().filter(u8::is_ascii).count();
            n.0 += ascii as u64;
            n.1 += s.chars().count().saturating_sub(ascii) as u64;
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, n)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                let skip = matches!(k.as_str(), "role" | "type" | "id" | "data" | "index")
                    || k.ends_with("_b64");
                if !skip {
                    strings(x, n);
                }
            }
        }
        _ => {}
    }
}
