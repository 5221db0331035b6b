//! Removes the route's injected credentials from everything that flows back to the agent.
//!
//! An upstream may echo the key it received (error messages, debug endpoints). The gateway
//! knows the exact secret values, so it replaces each occurrence with `*` of the same length:
//! the length is unchanged, so `Content-Length` stays valid and nothing must be re-framed.
//!
//! An echo may also be escaped: a JSON serializer writes `\u0073k-...` or `\/`, a URL carries
//! `%73k-...`, an HTML page `&#115;k-...`, and the agent's parser or browser reads the key back.
//! Each secret is also matched in those forms, every byte in any of them (`encoded_pattern`), and
//! the whole escaped span is starred.
//!
//! Invariant: no prefix of a secret that ends a chunk is emitted until the next chunk shows
//! whether the secret continues; only that possible prefix is held back, so streams stay streams.

use super::encoded::has_marker;
use super::{live_from, syntax_config, CachePool};
use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use regex_automata::hybrid::dfa::DFA;
use regex_automata::meta::Regex;
use regex_automata::Input;
use std::sync::Arc;

/// The compiled set of secret values of one route.
pub struct SecretSet {
    matcher: AhoCorasick,
    secrets: Vec<Vec<u8>>,
    /// Every secret in its escaped forms (only searched in text that has an escape marker).
    escaped: Regex,
    /// The same, anchored, stepped byte by byte to tell whether a text's end may begin one.
    escaped_dfa: DFA,
    caches: CachePool,
    /// The longest escaped form of any secret, in bytes.
    escaped_max: usize,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        write!(f, "SecretSet({} values)", self.secrets.len())
    }
}

/// Leading zeros accepted in a numeric HTML reference (`&#0115;`); more are not matched.
const MAX_ZEROS: usize = 3;

/// One byte in any form a JSON string, a URL or HTML may give it: itself, `\u00HH`, `%HH`,
/// `&#DDD;`, `&#xHH;` (hex digits in either case, up to `MAX_ZEROS` leading zeros), and JSON's
/// short escapes for `/`, `"` and `\`. The longest form is 7 + `MAX_ZEROS` bytes.
fn byte_pattern(b: u8) -> String {
    let hex = |c: u8| -> String {
        let d = format!("{c:02x}");
        d.chars()
            .map(|ch| {
                if ch.is_ascii_alphabetic() {
                    format!("[{}{}]", ch, ch.to_ascii_uppercase())
                } else {
                    ch.to_string()
                }
            })
            .collect()
    };
    let mut alts = vec![format!(r"\x{b:02x}"), format!(r"%{}", hex(b))];
    if b.is_ascii() {
        alts.push(format!(r"\\u00{}", hex(b)));
        alts.push(format!(r"&#0{{0,{MAX_ZEROS}}}{b};"));
        alts.push(format!(
            r"&#[xX]0{{0,{MAX_ZEROS}}}{};",
            hex(b).trim_start_matches('0')
        ));
    }
    if matches!(b, b'/' | b'"' | b'\\') {
        alts.push(format!(r"\\\x{b:02x}"));
    }
    format!("(?:{})", alts.join("|"))
}

/// A secret with every byte in any of its forms (`byte_pattern`).
fn encoded_pattern(secret: &[u8]) -> String {
    secret.iter().map(|&b| byte_pattern(b)).collect()
}

impl SecretSet {
    /// `Ok(None)` when there is nothing to scrub (a route without credentials). An automaton that
    /// cannot be built is an error, never a silent "no scrubbing".
    pub fn new<I: IntoIterator<Item = String>>(
        values: I,
    ) -> Result<Option<Arc<SecretSet>>, String> {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .collect();
        secrets.sort();
        secrets.dedup();
        if secrets.is_empty() {
            return Ok(None);
        }
        let matcher = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&secrets)
            .map_err(|e| format!("cannot build the credential scrubber: {e}"))?;
        let patterns: Vec<String> = secrets.iter().map(|s| encoded_pattern(s)).collect();
        let failed = |e: String| format!("cannot build the escaped-credential scrubber: {e}");
        let escaped = Regex::builder()
            .syntax(syntax_config())
            .build_many(&patterns)
            .map_err(|e| failed(e.to_string()))?;
        let escaped_dfa = DFA::builder()
            .syntax(syntax_config())
            .configure(DFA::config().cache_capacity(1 << 20))
            .build_many(&patterns)
            .map_err(|e| failed(e.to_string()))?;
        let escaped_max = secrets.iter().map(Vec::len).max().unwrap_or(0) * (7 + MAX_ZEROS);
        Ok(Some(Arc::new(SecretSet {
            matcher,
            secrets,
            escaped,
            escaped_dfa,
            caches: CachePool::default(),
            escaped_max,
        })))
    }

    pub fn contains_secret(&self, haystack: &[u8]) -> bool {
        self.matcher.is_match(haystack)
            || (has_marker(haystack) && self.escaped.is_match(Input::new(haystack)))
    }

    /// Masks every whole occurrence in place, as it stands or escaped.
    pub fn mask_in_place(&self, buf: &mut [u8]) {
        let mut spans: Vec<_> = self.matcher.find_iter(&*buf).map(|m| m.range()).collect();
        if has_marker(buf) {
            spans.extend(self.escaped.find_iter(Input::new(&*buf)).map(|m| m.range()));
        }
        for r in spans {
            buf[r].fill(b'*');
        }
    }

    /// Length of the longest suffix of `buf` that may begin a secret, as it stands or escaped
    /// (a proper prefix of one: a whole one is masked).
    pub fn partial_suffix_len(&self, buf: &[u8]) -> usize {
        let mut best = 0;
        for s in &self.secrets {
            let max = (s.len() - 1).min(buf.len());
            for k in (best + 1..=max).rev() {
                if buf.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        // An escaped prefix has a marker in it; without one in the tail, the literal check
        // above has seen every prefix there is.
        let from = buf.len().saturating_sub(self.escaped_max);
        if has_marker(&buf[from..]) {
            best = best.max(buf.len() - live_from(&self.escaped_dfa, &self.caches, buf, from));
        }
        best
    }
}

/// Scrubs one response body, chunk by chunk.
#[derive(Debug)]
pub struct StreamScrubber {
    set: Arc<SecretSet>,
    held: BytesMut,
}

impl StreamScrubber {
    pub fn new(set: Arc<SecretSet>) -> Self {
        StreamScrubber {
            set,
            held: BytesMut::new(),
        }
    }

    /// Takes the next chunk (or `None`) and returns what may be sent now. At `end`, flushes all.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        let fast = self.held.is_empty()
            && chunk.as_ref().is_some_and(|c| {
                !self.set.contains_secret(c) && (end || self.set.partial_suffix_len(c) == 0)
            });
        if fast {
            // The common case: nothing to mask, nothing to hold; no copy.
            return chunk;
        }
        if let Some(c) = chunk {
            self.held.extend_from_slice(&c);
        }
        self.set.mask_in_place(&mut self.held);
        let keep = if end {
            0
        } else {
            self.set.partial_suffix_len(&self.held)
        };
        let out = self.held.split_to(self.held.len() - keep).freeze();
        if out.is_empty() && !end {
            None
        } else {
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let set = SecretSet::new([KEY.to_string(), "tok-2".to_string()])
            .unwrap()
            .unwrap();
        let mut s = StreamScrubber::new(set);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            if let Some(b) = s.push(Some(Bytes::copy_from_slice(c)), end) {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    #[test]
    fn masks_whole_values_keeping_length() {
        let table: &[(&[u8], &[u8])] = &[
            (b"no secret here", b"no secret here"),
            (
                b"key=sk-live-0123456789abcdef!",
                b"key=************************!",
            ),
            (b"tok-2 and tok-2", b"***** and *****"),
            (
                b"sk-live-0123 is only a prefix",
                b"sk-live-0123 is only a prefix",
            ),
        ];
        for (input, want) in table {
            assert_eq!(run(&[input]), *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn value_split_at_every_offset_is_caught_and_no_prefix_leaks_early() {
        let text = format!("data: {{\"echo\":\"Bearer {KEY}\"}}\n\n");
        let bytes = text.as_bytes();
        let key_at = text.find(KEY).unwrap();
        for cut in 0..=bytes.len() {
            let set = SecretSet::new([KEY.to_string()]).unwrap().unwrap();
            let mut s = StreamScrubber::new(set);
            let first = s
                .push(Some(Bytes::copy_from_slice(&bytes[..cut])), false)
                .unwrap_or_default();
            // Whatever is emitted before the rest arrives never contains a started key.
            if cut > key_at && cut < key_at + KEY.len() {
                assert!(
                    first.len() <= key_at,
                    "cut {cut}: emitted a prefix of the key early"
                );
            }
            assert!(
                !String::from_utf8_lossy(&first).contains("sk-"),
                "cut {cut}: leaked early"
            );
            let second = s
                .push(Some(Bytes::copy_from_slice(&bytes[cut..])), true)
                .unwrap_or_default();
            let mut all = first.to_vec();
            all.extend_from_slice(&second);
            assert_eq!(all.len(), bytes.len(), "cut {cut}");
            assert!(
                !String::from_utf8_lossy(&all).contains("sk-live"),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn unrelated_tail_is_not_held() {
        let set = SecretSet::new([KEY.to_string()]).unwrap().unwrap();
        let mut s = StreamScrubber::new(set);
        let out = s
            .push(Some(Bytes::from_static(b"data: hello\n\n")), false)
            .unwrap();
        assert_eq!(&out[..], b"data: hello\n\n");
    }

    #[test]
    fn held_prefix_that_does_not_continue_is_released() {
        let set = SecretSet::new([KEY.to_string()]).unwrap().unwrap();
        let mut s = StreamScrubber::new(set);
        assert_eq!(
            s.push(Some(Bytes::from_static(b"abc sk-li")), false)
                .unwrap(),
            &b"abc "[..]
        );
        assert_eq!(
            s.push(Some(Bytes::from_static(b"ke")), false).unwrap(),
            &b"sk-like"[..]
        );
        assert_eq!(s.push(None, true), Some(Bytes::new()));
    }

    /// What the agent would read: escapes decoded (JSON, percent, HTML).
    fn decoded(b: &[u8]) -> String {
        match crate::mask::encoded::decode(b) {
            Some(d) => String::from_utf8_lossy(&d.text).into_owned(),
            None => String::from_utf8_lossy(b).into_owned(),
        }
    }

    fn json_u(s: &str) -> String {
        s.bytes().map(|b| format!("\\u{:04x}", b)).collect()
    }

    /// An upstream that echoes the key escaped (a JSON serializer's `\u0073`, an escaped
    /// slash, a URL, an HTML page) is starred as when it echoes it plain: the escaped span
    /// whole, its length kept, whatever mix of forms and hex case.
    #[test]
    fn escaped_echoes_are_starred() {
        let slash_key = "sk/live/0123456789";
        let set = SecretSet::new([KEY.to_string(), slash_key.to_string()])
            .unwrap()
            .unwrap();
        let pct: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
        let html: String = KEY.bytes().map(|b| format!("&#{b};")).collect();
        let html_hex: String = KEY.bytes().map(|b| format!("&#x{b:x};")).collect();
        let mixed = "sk-\\u006civ%65-&#048;123456789abcdef";
        let cases = [
            format!(r#"{{"echo":"{}"}}"#, json_u(KEY)),
            format!(
                r#"{{"echo":"{}"}}"#,
                json_u(KEY).to_uppercase().replace("\\U", "\\u")
            ),
            format!(r#"{{"echo":"{}"}}"#, slash_key.replace('/', "\\/")),
            format!("GET /cb?key={pct} HTTP/1.1"),
            format!("<p>{html}</p>"),
            format!("<p>{html_hex}</p>"),
            format!("key={mixed}!"),
        ];
        for c in &cases {
            let mut buf = c.clone().into_bytes();
            assert!(set.contains_secret(&buf), "{c}");
            set.mask_in_place(&mut buf);
            assert_eq!(buf.len(), c.len());
            let seen = decoded(&buf);
            assert!(
                !seen.contains(KEY) && !seen.contains(slash_key),
                "{c} -> {seen}"
            );
            assert!(!seen.contains("0123456789"), "{c} -> {seen}");
        }
        // Escapes that spell something else are left alone.
        let mut other = br#"{"t":"line\nline \u00e9 %20 &amp; sk-live-0123"}"#.to_vec();
        let before = other.clone();
        assert!(!set.contains_secret(&other));
        set.mask_in_place(&mut other);
        assert_eq!(other, before);
    }

    /// An escaped echo split at every offset: nothing that begins it leaves before the rest
    /// shows whether it is the key, and the whole stream never spells it once decoded.
    #[test]
    fn escaped_echo_split_at_every_offset_never_leaks() {
        let text = format!("data: {{\"echo\":\"Bearer {}\"}}\n\n", json_u(KEY));
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let set = SecretSet::new([KEY.to_string()]).unwrap().unwrap();
            let mut s = StreamScrubber::new(set);
            let first = s
                .push(Some(Bytes::copy_from_slice(&bytes[..cut])), false)
                .unwrap_or_default();
            assert!(!decoded(&first).contains("sk-"), "cut {cut}: leaked early");
            let second = s
                .push(Some(Bytes::copy_from_slice(&bytes[cut..])), true)
                .unwrap_or_default();
            let mut all = first.to_vec();
            all.extend_from_slice(&second);
            assert_eq!(all.len(), bytes.len(), "cut {cut}");
            assert!(!decoded(&all).contains("sk-live"), "cut {cut}");
        }
    }

    /// Text with escapes that cannot begin the key is not held back (an SSE delta with `\n`).
    #[test]
    fn escapes_that_begin_no_secret_are_not_held() {
        let set = SecretSet::new([KEY.to_string()]).unwrap().unwrap();
        let mut s = StreamScrubber::new(set);
        let chunk = Bytes::from_static(b"data: {\"d\":\"one\\ntwo \\u00e9\"}\n\n");
        assert_eq!(s.push(Some(chunk.clone()), false), Some(chunk));
        // A chunk ending inside an escape that may spell the key's first byte is held from it.
        let out = s
            .push(Some(Bytes::from_static(b"data: x \\u00")), false)
            .unwrap();
        assert_eq!(&out[..], b"data: x ");
    }

    #[test]
    fn empty_set_means_no_scrubber() {
        assert!(SecretSet::new(Vec::<String>::new()).unwrap().is_none());
        assert!(SecretSet::new([String::new()]).unwrap().is_none());
    }
}
