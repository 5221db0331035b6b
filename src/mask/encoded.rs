//! A decoded view of a text for detection: percent-encoding (and `+` for a space once the text
//! is percent-encoded), JSON/JavaScript escapes (`\u0040`, `\"`, `\n`...) and HTML character
//! references (`&#64;`, `&#x40;`, `&commat;`...). Detectors run on the text as it stands and on
//! this view; a finding in the view is mapped back to the span of the original text that
//! encodes it, which is what gets replaced, so the text around a value keeps its encoding.
//!
//! Invariants: `map` has one entry per decoded byte plus one for the end, non-decreasing; the
//! bytes of one escape all map to the escape's first byte, so a decoded span `[s, e)` is the
//! original span `[map[s], map[e])`, whole escapes only. One layer is decoded (`%2540` is seen
//! as `%40`, not `@`).

/// The longest escape recognised (`&#x0001F600;`, `\uD83D\uDE00` is two of six).
pub const MAX_ESCAPE: usize = 12;

/// Named character references decoded: the ones a value or its context could be written with.
const NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("nbsp", ' '),
    ("commat", '@'),
    ("period", '.'),
    ("plus", '+'),
    ("colon", ':'),
    ("semi", ';'),
    ("comma", ','),
    ("sol", '/'),
    ("bsol", '\\'),
    ("lowbar", '_'),
    ("hyphen", '-'),
    ("dash", '-'),
    ("equals", '='),
    ("num", '#'),
    ("percnt", '%'),
    ("dollar", '$'),
    ("excl", '!'),
    ("lpar", '('),
    ("rpar", ')'),
    ("lsqb", '['),
    ("rsqb", ']'),
    ("lbrack", '['),
    ("rbrack", ']'),
    ("ast", '*'),
    ("Tab", '\t'),
    ("NewLine", '\n'),
];

/// How a span of the original text was encoded (the strongest escape in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Percent,
    Html,
    Backslash,
}

/// The decoded text and, for each of its bytes, where it came from in the original.
#[derive(Debug)]
pub struct Decoded {
    pub text: Vec<u8>,
    pub map: Vec<usize>,
}

impl Decoded {
    /// The original span of the decoded span `[s, e)`.
    pub fn original(&self, s: usize, e: usize) -> (usize, usize) {
        (self.map[s], self.map[e])
    }

    /// The first decoded position that comes from `from` or later in the original.
    pub fn position_of(&self, from: usize) -> usize {
        self.map.partition_point(|&m| m < from)
    }
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// Whether `text` may hold an escape at all (one pass of memchr).
pub fn has_marker(text: &[u8]) -> bool {
    memchr::memchr3(b'%', b'&', b'\\', text).is_some()
}

/// `%XX` at `i`: the byte.
fn percent_at(t: &[u8], i: usize) -> Option<u8> {
    if t.get(i) != Some(&b'%') {
        return None;
    }
    let (a, b) = (hex(*t.get(i + 1)?)?, hex(*t.get(i + 2)?)?);
    Some((a * 16 + b) as u8)
}

/// `\uXXXX` at `i`: the code unit.
fn unit_at(t: &[u8], i: usize) -> Option<u32> {
    if t.get(i) != Some(&b'\\') || t.get(i + 1) != Some(&b'u') {
        return None;
    }
    let mut v = 0;
    for k in 0..4 {
        v = v * 16 + hex(*t.get(i + 2 + k)?)?;
    }
    Some(v)
}

/// A backslash escape at `i`: the character and the escape's length.
fn backslash_at(t: &[u8], i: usize) -> Option<(char, usize)> {
    let c = match *t.get(i + 1)? {
        b'u' => {
            let u = unit_at(t, i)?;
            if (0xD800..0xDC00).contains(&u) {
                let lo = unit_at(t, i + 6).filter(|l| (0xDC00..0xE000).contains(l))?;
                let c = char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00))?;
                return Some((c, 12));
            }
            return Some((char::from_u32(u)?, 6));
        }
        b'x' => {
            let v = hex(*t.get(i + 2)?)? * 16 + hex(*t.get(i + 3)?)?;
            return Some((char::from_u32(v)?, 4));
        }
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'\'' => '\'',
        b'n' => '\n',
        b't' => '\t',
        b'r' => '\r',
        _ => return None,
    };
    Some((c, 2))
}

/// An HTML character reference at `i` (`&#64;`, `&#x40;`, `&commat;`): the character and the
/// reference's length.
fn entity_at(t: &[u8], i: usize) -> Option<(char, usize)> {
    if t.get(i) != Some(&b'&') {
        return None;
    }
    let end = i
        + 1
        + t[i + 1..]
            .iter()
            .take(MAX_ESCAPE)
            .position(|&b| b == b';')?;
    let body = std::str::from_utf8(&t[i + 1..end]).ok()?;
    let c = if let Some(num) = body.strip_prefix('#') {
        let v = match num.strip_prefix(['x', 'X']) {
            Some(h) => u32::from_str_radix(h, 16).ok()?,
            None => num.parse().ok()?,
        };
        char::from_u32(v)?
    } else {
        NAMED.iter().find(|(n, _)| *n == body)?.1
    };
    Some((c, end + 1 - i))
}

/// The decoded view of `text`, or `None` when it holds no escape (the text is its own view).
pub fn decode(text: &[u8]) -> Option<Decoded> {
    if !has_marker(text) {
        return None;
    }
    // `+` is a space only in form encoding, which always comes with percent escapes.
    let form = memchr::memchr_iter(b'%', text).any(|i| percent_at(text, i).is_some());
    let mut out = Vec::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len() + 1);
    let mut changed = false;
    let mut i = 0;
    let mut utf8 = [0u8; 4];
    while i < text.len() {
        let b = text[i];
        let decoded: Option<(&[u8], usize)> = match b {
            b'%' => percent_at(text, i).map(|v| {
                utf8[0] = v;
                (&utf8[..1], 3)
            }),
            b'+' if form => Some((b" ".as_slice(), 1)),
            b'\\' => backslash_at(text, i).map(|(c, n)| (c.encode_utf8(&mut utf8).as_bytes(), n)),
            b'&' => entity_at(text, i).map(|(c, n)| (c.encode_utf8(&mut utf8).as_bytes(), n)),
            _ => None,
        };
        match decoded {
            Some((bytes, n)) => {
                changed = true;
                for &x in bytes {
                    out.push(x);
                    map.push(i);
                }
                i += n;
            }
            None => {
                out.push(b);
                map.push(i);
                i += 1;
            }
        }
    }
    map.push(text.len());
    changed.then_some(Decoded { text: out, map })
}

/// Where an escape that the end of `text` cut short begins (a stream holds it back: its next
/// bytes may finish it), or `None`.
pub fn open_escape(text: &[u8]) -> Option<usize> {
    let tail = text.len().saturating_sub(MAX_ESCAPE);
    (tail..text.len()).find(|&i| {
        let rest = &text[i..];
        let hex_after = |from: usize| {
            rest.get(from..)
                .is_some_and(|r| r.iter().all(|&b| hex(b).is_some()))
        };
        match rest[0] {
            b'%' => rest.len() < 3 && hex_after(1),
            b'\\' => match rest.get(1) {
                None => true,
                Some(b'u') if rest.len() < 6 => hex_after(2),
                // A high surrogate waits for its low half.
                Some(b'u') => {
                    unit_at(rest, 0).is_some_and(|u| (0xD800..0xDC00).contains(&u))
                        && rest.len() < 12
                        && (rest.len() == 6 || rest[6] == b'\\')
                        && (rest.len() <= 7 || rest[7] == b'u')
                        && hex_after(8.min(rest.len()))
                }
                Some(b'x') => rest.len() < 4 && hex_after(2),
                Some(_) => false,
            },
            b'&' => rest[1..]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'#'),
            _ => false,
        }
    })
}

/// `cut` moved back to the start of the escape it falls inside, if any: a stream never
/// releases part of an escape (the rest would no longer decode).
pub fn escape_start(text: &[u8], cut: usize) -> usize {
    let from = cut.saturating_sub(MAX_ESCAPE);
    (from..cut)
        .find(|&i| {
            let n = match text[i] {
                b'%' => percent_at(text, i).map(|_| 3),
                b'\\' => backslash_at(text, i).map(|(_, n)| n),
                b'&' => entity_at(text, i).map(|(_, n)| n),
                _ => None,
            };
            n.is_some_and(|n| i + n > cut)
        })
        .unwrap_or(cut)
}

/// How the original span `text` is encoded (the first kind of escape in it).
pub fn encoding_of(text: &[u8]) -> Encoding {
    for i in 0..text.len() {
        if percent_at(text, i).is_some() {
            return Encoding::Percent;
        }
        if entity_at(text, i).is_some() {
            return Encoding::Html;
        }
        if text[i] == b'\\' && backslash_at(text, i).is_some() {
            return Encoding::Backslash;
        }
    }
    Encoding::Plain
}

/// A replacement written as the value it replaces was: percent-encoded, or with HTML's special
/// characters as references, so it reads right where it lands (`<EMAIL_1>` is not a tag).
pub fn encode_like(replacement: &str, enc: Encoding) -> String {
    match enc {
        Encoding::Plain | Encoding::Backslash => replacement.to_string(),
        Encoding::Percent => {
            let mut out = String::with_capacity(replacement.len() * 2);
            for b in replacement.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
        Encoding::Html => replacement
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &str) -> Option<String> {
        decode(s.as_bytes()).map(|d| String::from_utf8_lossy(&d.text).into_owned())
    }

    #[test]
    fn decodes_each_encoding_and_maps_back_to_whole_escapes() {
        let table: &[(&str, Option<&str>)] = &[
            ("plain text", None),
            ("R&D and 100% sure", None),
            ("jane.doe%40example.com", Some("jane.doe@example.com")),
            ("a+b%20c", Some("a b c")),
            ("a+b", None),
            ("jane.doe\\u0040example.com", Some("jane.doe@example.com")),
            ("\\ud83d\\ude00!", Some("\u{1F600}!")),
            ("\\ud83d alone", None),
            ("say \\\"hi\\\"\\n", Some("say \"hi\"\n")),
            ("jane.doe&#64;example.com", Some("jane.doe@example.com")),
            (
                "jane.doe&#x40;example&period;com",
                Some("jane.doe@example.com"),
            ),
            ("jane.doe&commat;example.com", Some("jane.doe@example.com")),
            ("&unknown; &#xZZ;", None),
            ("%E2%82%AC", Some("€")),
        ];
        for (text, want) in table {
            assert_eq!(view(text).as_deref(), *want, "{text}");
            if let Some(d) = decode(text.as_bytes()) {
                assert_eq!(d.map.len(), d.text.len() + 1);
                assert!(d.map.windows(2).all(|w| w[0] <= w[1]), "{text}");
                assert_eq!(*d.map.last().unwrap(), text.len());
            }
        }
        let d = decode(b"x jane.doe%40ex.com y").unwrap();
        let s = d.position_of(2);
        let e = s + "jane.doe@ex.com".len();
        assert_eq!(d.original(s, e), (2, 2 + "jane.doe%40ex.com".len()));
    }

    #[test]
    fn escapes_cut_by_the_end_are_open() {
        let table: &[(&str, Option<usize>)] = &[
            ("abc", None),
            ("abc%", Some(3)),
            ("abc%4", Some(3)),
            ("abc%40", None),
            ("abc\\", Some(3)),
            ("abc\\u00", Some(3)),
            ("abc\\u0040", None),
            ("abc\\ud83d", Some(3)),
            ("abc&", Some(3)),
            ("abc&#6", Some(3)),
            ("abc&comm", Some(3)),
            ("abc&commat;", None),
            ("100% sure", None),
        ];
        for (text, want) in table {
            assert_eq!(open_escape(text.as_bytes()), *want, "{text}");
        }
    }

    #[test]
    fn cuts_inside_an_escape_move_to_its_start() {
        let t = b"see %2D%2D and \\u0040 and &commat; x";
        assert_eq!(escape_start(t, 5), 4);
        assert_eq!(escape_start(t, 6), 4);
        assert_eq!(escape_start(t, 7), 7);
        assert_eq!(escape_start(t, 4), 4);
        let u = 15;
        assert_eq!(escape_start(t, u + 3), u);
        let a = 26;
        assert_eq!(escape_start(t, a + 5), a);
        assert_eq!(escape_start(t, a + 8), a + 8);
    }

    #[test]
    fn replacements_take_the_encoding_of_what_they_replace() {
        assert_eq!(encoding_of(b"jane%40x.com"), Encoding::Percent);
        assert_eq!(encoding_of(b"jane&#64;x.com"), Encoding::Html);
        assert_eq!(encoding_of(b"jane\\u0040x.com"), Encoding::Backslash);
        assert_eq!(encoding_of(b"jane@x.com"), Encoding::Plain);
        assert_eq!(
            encode_like("[REDACTED:EMAIL]", Encoding::Percent),
            "%5BREDACTED%3AEMAIL%5D"
        );
        assert_eq!(encode_like("<EMAIL_1>", Encoding::Html), "&lt;EMAIL_1&gt;");
        assert_eq!(encode_like("<EMAIL_1>", Encoding::Plain), "<EMAIL_1>");
    }
}
