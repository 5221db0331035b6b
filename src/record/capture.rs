//! What the proxy collects of an exchange while it runs, and the `Draft` it hands to the
//! recorder when the exchange ends. Bounded: each body keeps at most `max` bytes (the record says
//! `truncated` for the rest), SSE responses are kept as events with their time, and an event that
//! never ends cannot grow memory past `max`. Nothing here masks or formats: the writer does both,
//! off the request's path.

use super::Mode;
use crate::identity::Identity;
use crate::mask::Engine;
use crate::util::sse;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::borrow::Cow;
use std::sync::Arc;

/// A body as it passed through: the chunks themselves (shared with the proxy, not copied).
/// HTTP/1.1 chunks are Pingora's own exact-size copies; an HTTP/2 DATA frame may share its
/// connection's read buffer, which then stays allocated until the record is written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Chunks(pub Vec<Bytes>);

impl Chunks {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// Keeps what fits under `max` bytes in all; whether some of `b` did not fit.
    fn push_bounded(&mut self, b: &Bytes, max: usize) -> bool {
        let room = max.saturating_sub(self.len());
        if b.len() <= room {
            self.0.push(b.clone());
            return false;
        }
        if room > 0 {
            self.0.push(b.slice(..room));
        }
        true
    }

    /// The body as one slice: its only chunk as it is, or the chunks joined.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.0.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }
}

impl From<Vec<u8>> for Chunks {
    fn from(v: Vec<u8>) -> Chunks {
        Chunks(vec![Bytes::from(v)])
    }
}

/// Header fields as they passed (credentials already left out): shared values, not copies.
pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// One exchange as the proxy saw it (nothing masked or formatted yet: the writer does it, off
/// the request's path).
#[derive(Debug, Default)]
pub struct Draft {
    /// The masking engine of the configuration the exchange ran under (a reload's custom
    /// detectors and deny words apply to the records of the requests that started after it);
    /// `None`: the one the writer has.
    pub engine: Option<Arc<Engine>>,
    pub id: String,
    pub ts: String,
    pub ts_ms: u64,
    pub conversation: String,
    pub identity: Option<std::sync::Arc<Identity>>,
    pub route: Option<String>,
    pub mode: Mode,
    pub method: String,
    pub path: String,
    pub request_headers: Headers,
    pub request_body: Option<Chunks>,
    pub request_bytes: u64,
    pub request_truncated: bool,
    pub status: u16,
    pub response_headers: Headers,
    pub response_body: Option<Chunks>,
    pub response_bytes: u64,
    pub response_truncated: bool,
    /// SSE events sent to the agent: (milliseconds since the request began, data).
    pub events: Option<Vec<(f64, String)>>,
    pub masked: Option<serde_json::Value>,
    pub guardrail: Option<String>,
    pub approval: Option<serde_json::Value>,
    /// Tokens and cost of a model call (the session line's `usage`).
    pub usage: Option<serde_json::Value>,
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
    pub request_headers: Headers,
    pub request_body: Chunks,
    pub request_truncated: bool,
    pub status: u16,
    pub response_headers: Headers,
    pub response_body: Chunks,
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

    pub fn request_chunk(&mut self, b: &Bytes) {
        if self.mode != Mode::Full {
            return;
        }
        self.request_truncated |= self.request_body.push_bounded(b, self.max);
    }

    /// A chunk of the response as the agent got it; SSE is kept as events with their time.
    pub fn response_chunk(&mut self, b: &Bytes, t_ms: f64) {
        if self.mode != Mode::Full {
            return;
        }
        if !self.sse {
            self.response_truncated |= self.response_body.push_bounded(b, self.max);
            return;
        }
        self.sse_pending.extend_from_slice(b);
        loop {
            // Only the bytes not searched yet (and a terminator split across chunks).
            let from = self.sse_scanned.saturating_sub(sse::TERMINATOR_OVERLAP);
            let Some(at) = sse::event_end(&self.sse_pending[from..]) else {
                self.sse_scanned = self.sse_pending.len();
                break;
            };
            let end = from + at;
            self.sse_scanned = 0;
            if std::mem::take(&mut self.sse_skipping) {
                // The rest of an event too large to keep.
                self.sse_pending.drain(..end);
                continue;
            }
            let raw: Vec<u8> = self.sse_pending.drain(..end).collect();
            let text = String::from_utf8_lossy(&raw);
            let event = sse::parse(&text);
            if event.data_lines == 0 {
                continue;
            }
            let data = event.data;
            if self.events_bytes + data.len() > self.max {
                self.response_truncated = true;
                continue;
            }
            self.events_bytes += data.len();
            self.events.push((t_ms, data));
        }
        if self.sse_pending.len() > self.max {
            // An event larger than a record keeps (a hostile upstream may never end one): drop
            // what came so far and skip to its end, holding the bytes a split terminator may
            // have begun with.
            let gone = self
                .sse_pending
                .len()
                .saturating_sub(sse::TERMINATOR_OVERLAP + 1);
            self.sse_pending.drain(..gone);
            self.sse_scanned = self.sse_pending.len();
            self.sse_skipping = true;
            self.response_truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(b: &[u8]) -> Bytes {
        Bytes::copy_from_slice(b)
    }
    #[test]
    fn capture_keeps_sse_events_with_their_time_and_bounds_bodies() {
        let mut c = Capture::new(Mode::Full, 13, "c".into());
        c.sse = true;
        c.response_chunk(&by(b"data: {\"a\":1}\n\ndata: [DO"), 1.5);
        c.response_chunk(&by(b"NE]\n\n: keep-alive\n\n"), 3.0);
        assert_eq!(
            c.events,
            vec![(1.5, "{\"a\":1}".to_string()), (3.0, "[DONE]".to_string())]
        );
        assert!(!c.response_truncated);
        c.request_chunk(&by(b"0123456789abcdef"));
        assert_eq!(c.request_body.contiguous(), &b"0123456789abc"[..]);
        assert!(c.request_truncated);
        // An event larger than the bound is dropped (the record says truncated), also when it
        // arrives in pieces and never ends; events after it are kept; memory stays bounded.
        let mut c = Capture::new(Mode::Full, 64, "c".into());
        c.sse = true;
        c.response_chunk(&by(b"data: first\n"), 1.0);
        c.response_chunk(&by(b"\ndata: "), 2.0);
        for _ in 0..100 {
            c.response_chunk(&by(&[b'A'; 50]), 3.0);
            assert!(c.sse_pending.len() <= 64 + 50);
        }
        assert!(c.response_truncated);
        c.response_chunk(&by(b"AAA\n"), 4.0);
        c.response_chunk(&by(b"\ndata: after\n\n"), 5.0);
        assert_eq!(
            c.events,
            vec![(2.0, "first".to_string()), (5.0, "after".to_string())]
        );
        // The total kept is bounded too.
        let mut c = Capture::new(Mode::Full, 10, "c".into());
        c.sse = true;
        c.response_chunk(&by(b"data: 123456\n\ndata: 7890ab\n\ndata: c\n\n"), 1.0);
        assert_eq!(
            c.events,
            vec![(1.0, "123456".to_string()), (1.0, "c".to_string())]
        );
        let mut m = Capture::new(Mode::Metadata, 10, "c".into());
        m.request_chunk(&by(b"abc"));
        assert!(m.request_body.is_empty());
    }

    /// CRLF-framed streams are kept as events like LF ones (the masker reads both), wherever
    /// the chunks are cut, and an over-large event ending in a split `\r\n\r\n` is skipped
    /// to its end and no further.
    #[test]
    fn crlf_events_are_kept_at_every_cut() {
        let stream = b"data: {\"a\":1}\r\n\r\n: ping\r\n\r\nevent: x\r\ndata: two\r\n\r\n";
        for cut in 0..=stream.len() {
            for second in cut..=stream.len() {
                let mut c = Capture::new(Mode::Full, 1024, "c".into());
                c.sse = true;
                c.response_chunk(&by(&stream[..cut]), 1.0);
                c.response_chunk(&by(&stream[cut..second]), 1.0);
                c.response_chunk(&by(&stream[second..]), 1.0);
                let got: Vec<&str> = c.events.iter().map(|(_, d)| d.as_str()).collect();
                assert_eq!(got, vec!["{\"a\":1}", "two"], "cut at {cut} and {second}");
            }
        }
        let mut c = Capture::new(Mode::Full, 16, "c".into());
        c.sse = true;
        c.response_chunk(&by(b"data: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\r"), 1.0);
        c.response_chunk(&by(b"\ndata: next\r\n\r\n"), 2.0);
        assert_eq!(c.events, vec![(2.0, "next".to_string())]);
        assert!(c.response_truncated);
    }
}
