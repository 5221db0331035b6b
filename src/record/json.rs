//! Writing a record's JSON: strings escaped sixteen bytes at a time (bodies are most of a
//! record, and serde_json's per-byte escaping was ~11% of the writer's CPU), everything else through
//! serde_json. The output is byte for byte what serde_json writes (unit and property tests).

use serde::Serialize;
use std::io::Write;

/// The index of the first byte at or after `i` that must be escaped in a JSON string (a
/// control character, `"` or `\`), or `b.len()`: one byte at a time.
#[inline]
fn next_special_bytewise(b: &[u8], i: usize) -> usize {
    i + b[i..]
        .iter()
        .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
        .unwrap_or(b.len() - i)
}

/// `next_special_bytewise` sixteen bytes at a time (SSE2, part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn next_special(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU (the target's baseline), and each load reads
    // the sixteen bytes from `i`, inside `b` (checked by the loop); the loads are unaligned.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let below_space = _mm_set1_epi8(0x1f);
        while i + 16 <= b.len() {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            // max(v, 0x1f) == 0x1f exactly for the bytes <= 0x1f (unsigned: UTF-8 bytes >= 0x80
            // are not control characters).
            let ctl = _mm_cmpeq_epi8(_mm_max_epu8(v, below_space), below_space);
            let hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                ctl,
            );
            let mask = _mm_movemask_epi8(hit) as u32;
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    next_special_bytewise(b, i)
}

#[cfg(not(target_arch = "x86_64"))]
use next_special_bytewise as next_special;

/// `s` as a JSON string, as serde_json writes it (`\b \t \n \f \r`, `\u00xx` for the other
/// control characters, nothing else escaped).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        let i = next_special(b, start);
        out.extend_from_slice(&b[start..i]);
        let Some(&c) = b.get(i) else { break };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        start = i + 1;
    }
    out.push(b'"');
}

/// A JSON object being written into a buffer: each key brings its own comma.
pub struct Object<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Object<'o> {
    pub fn open(out: &'o mut Vec<u8>) -> Object<'o> {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Writes `"k":` and hands back the buffer for its value.
    pub fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        push_str(self.out, k);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, k: &str, v: &str) {
        let out = self.key(k);
        push_str(out, v);
    }

    /// The string, or `null`.
    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.key(k).extend_from_slice(b"null"),
        }
    }

    /// Anything else (numbers, identity, decision trees) as serde_json writes it.
    pub fn value<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> serde_json::Result<()> {
        serde_json::to_writer(self.key(k), v)
    }

    pub fn close(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        let mut table: Vec<String> = vec![
            String::new(),
            "a".into(),
            "plain ascii text longer than eight bytes".into(),
            "\"".into(),
            "\\".into(),
            "tab\there, newline\n, cr\r, bell\x07, nul\0, esc\x1b, del\x7f".into(),
            "\x08\x0c\x1f\x20".into(),
            "12345678\"12345678\\1234567\n".into(),
            "héllo wörld — ünïcödé ✓ 𝄞 and \"quotes\" inside".into(),
            "\u{2028}\u{2029}".into(),
        ];
        for c in 0u8..=0x7f {
            // Every place in the first and second 16-byte block and in the tail after them.
            for pad in 0..40 {
                table.push(format!(
                    "{}{}{}",
                    "x".repeat(pad),
                    c as char,
                    "y".repeat(40 - pad)
                ));
            }
        }
        for s in &table {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }
}
