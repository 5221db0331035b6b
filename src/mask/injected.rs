//! Removes the route's injected credentials from everything that flows back to the agent.
//!
//! An upstream may echo the key it received (error messages, debug endpoints). The gateway
//! knows the exact secret values, so it replaces each occurrence with `*` of the same length:
//! the length is unchanged, so `Content-Length` stays valid and nothing must be re-framed.
//!
//! Invariant: no prefix of a secret that ends a chunk is emitted until the next chunk shows
//! whether the secret continues; only that possible prefix is held back, so streams stay streams.

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The compiled set of secret values of one route.
#[derive(Debug)]
pub struct SecretSet {
    matcher: AhoCorasick,
    secrets: Vec<Vec<u8>>,
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
        Ok(Some(Arc::new(SecretSet { matcher, secrets })))
    }

    pub fn contains_secret(&self, haystack: &[u8]) -> bool {
        self.matcher.is_match(haystack)
    }

    /// Masks every whole occurrence in place.
    pub fn mask_in_place(&self, buf: &mut [u8]) {
        let spans: Vec<_> = self.matcher.find_iter(&*buf).map(|m| m.range()).collect();
        for r in spans {
            buf[r].fill(b'*');
        }
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of some secret.
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

    #[test]
    fn empty_set_means_no_scrubber() {
        assert!(SecretSet::new(Vec::<String>::new()).unwrap().is_none());
        assert!(SecretSet::new([String::new()]).unwrap().is_none());
    }
}
