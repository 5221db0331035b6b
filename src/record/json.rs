//! Writing a record's JSON: strings escaped eight bytes at a time (bodies are most of a record,
//! and serde_json's per-byte escaping was ~11% of the writer's CPU), everything else through
//! serde_json. The output is byte for byte what serde_json writes (unit and property tests).

use serde::Serialize;
use std::io::Write;

/// Whether any of the eight bytes of `w` is a control character, `"` or `\`.
#[inline]
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero_in(w ^ (ONES * u64::from(b'"'))) | zero_in(w ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// `s` as a JSON string, as serde_json writes it (`\b \t \n \f \r`, `\u00xx` for the other
/// control characters, nothing else escaped).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&b[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{c:04x}");
        } else {
            out.extend_from_slice(short);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
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
            for pad in 0..9 {
                table.push(format!(
                    "{}{}{}",
                    "x".repeat(pad),
                    c as char,
                    "y".repeat(9 - pad)
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
