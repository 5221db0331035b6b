//! The one canonical form of a request's path and host, computed once before any decision.
//! Routing, access rules, approval rules, the path masking of records, session lines and the
//! request sent upstream all see this form, so no encoding can make a decision and the upstream
//! read two different paths (an upstream decodes `%61dmin` as `admin`; a route or rule that
//! compared raw text would not).
//!
//! Every encoding has one documented answer:
//!
//! | in the path | answer |
//! | --- | --- |
//! | `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) | decoded (`/v1/%61dmin` → `/v1/admin`) |
//! | `%XX` of any other character (reserved, `%25`, UTF-8 bytes) | kept encoded, hex upper-cased |
//! | `%2F` `%5C` (encoded separators) | refused |
//! | `%00` and other encoded control characters (`%01`–`%1F`, `%7F`) | refused |
//! | `%` not followed by two hex digits | refused |
//! | encoded bytes that are not valid UTF-8 (overlong, lone continuation, surrogates) | refused |
//! | raw bytes outside visible ASCII, a raw `\`, `;` (path parameters) | refused |
//! | `.` or `..` segments, also once decoded (`%2e%2e`) | refused |
//! | `//` (an empty segment) | refused |
//! | anything but a path starting with `/` (`*`, absolute-form keeps only its path) | refused |
//!
//! The host: lower-cased, without its port, without a trailing dot.
//!
//! Invariant: `path(path(p)?) == path(p)` (the form is a fixed point), and two paths an upstream
//! would decode to the same text have the same canonical form or are refused.

use std::fmt;

/// Why a path was refused (the message the agent gets says what to send instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NotAbsolute,
    EncodedSeparator,
    EncodedControl,
    BadPercent,
    InvalidUtf8,
    RawByte(u8),
    DotSegment,
    EmptySegment,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NotAbsolute => f.write_str("the path must start with `/`"),
            Refused::EncodedSeparator => {
                f.write_str("the path has an encoded separator (%2F or %5C)")
            }
            Refused::EncodedControl => {
                f.write_str("the path has an encoded control character (such as %00)")
            }
            Refused::BadPercent => f.write_str("the path has a `%` not followed by two hex digits"),
            Refused::InvalidUtf8 => {
                f.write_str("the path's percent-encoded bytes are not valid UTF-8")
            }
            Refused::RawByte(b'\\') => f.write_str("the path has a backslash"),
            Refused::RawByte(b';') => {
                f.write_str("the path has a `;` (path parameters are not accepted)")
            }
            Refused::RawByte(b) => write!(f, "the path has the byte 0x{b:02x}; percent-encode it"),
            Refused::DotSegment => f.write_str("the path has `.` or `..` segments"),
            Refused::EmptySegment => f.write_str("the path has an empty segment (`//`)"),
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical form of a request path (without its query), or why it is refused.
pub fn path(raw: &str) -> Result<String, Refused> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Refused::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    // The decoded bytes of the current run of %XX escapes that stay encoded, to check that
    // they are whole UTF-8 (a run may hold several characters).
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Refused::BadPercent);
            };
            let v = h << 4 | l;
            i += 3;
            if v == b'/' || v == b'\\' {
                return Err(Refused::EncodedSeparator);
            }
            if v < 0x20 || v == 0x7f {
                return Err(Refused::EncodedControl);
            }
            if unreserved(v) {
                end_run(&mut run)?;
                out.push(v as char);
            } else {
                run.push(v);
                out.push('%');
                out.push(
                    char::from_digit(u32::from(v >> 4), 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
                out.push(
                    char::from_digit(u32::from(v & 0xf), 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
            }
            continue;
        }
        end_run(&mut run)?;
        if !(0x21..0x7f).contains(&b) || b == b'\\' || b == b';' {
            return Err(Refused::RawByte(b));
        }
        out.push(b as char);
        i += 1;
    }
    end_run(&mut run)?;
    let segments: Vec<&str> = out.split('/').skip(1).collect();
    for (n, seg) in segments.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Err(Refused::DotSegment);
        }
        // The last segment may be empty: `/v1/models/` is a path of its own.
        if seg.is_empty() && n + 1 != segments.len() {
            return Err(Refused::EmptySegment);
        }
    }
    Ok(out)
}

/// Checks that a run of encoded bytes is whole UTF-8, and empties it.
fn end_run(run: &mut Vec<u8>) -> Result<(), Refused> {
    if !run.is_empty() {
        std::str::from_utf8(run).map_err(|_| Refused::InvalidUtf8)?;
        run.clear();
    }
    Ok(())
}

/// The canonical host: lower-cased, without a port, without a trailing dot (bracketed IPv6
/// literals kept whole).
pub fn host(raw: &str) -> String {
    let without_port = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// An `https://` URL a request names for the gateway's decision (a hosted MCP tool's
/// `server_url`), in one canonical form: host lower-cased without a trailing dot, the effective
/// port, the path as `path` makes it, the query as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
}

/// Why a URL was refused: anything two parsers could read as two different servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlRefused {
    TooLong,
    /// A byte outside visible ASCII (whitespace, controls, raw Unicode: IDNs must be punycode),
    /// or a backslash.
    RawByte(u8),
    NotHttps,
    Userinfo,
    Fragment,
    BadHost,
    BadPort,
    Path(Refused),
}

impl fmt::Display for UrlRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlRefused::TooLong => f.write_str("the URL is longer than 2048 characters"),
            UrlRefused::RawByte(b) => write!(f, "the URL has the byte 0x{b:02x} (whitespace, a control, a backslash or raw Unicode)"),
            UrlRefused::NotHttps => f.write_str("the URL must start with https://"),
            UrlRefused::Userinfo => f.write_str("the URL has a user name or password (`@`)"),
            UrlRefused::Fragment => f.write_str("the URL has a fragment (`#`)"),
            UrlRefused::BadHost => f.write_str("the URL's host is not a plain DNS name or IP literal"),
            UrlRefused::BadPort => f.write_str("the URL's port is not a number from 1 to 65535"),
            UrlRefused::Path(r) => write!(f, "in the URL, {r}"),
        }
    }
}

/// Longest URL accepted.
pub const MAX_URL: usize = 2048;

/// The canonical form of an `https://` URL, or why it is refused.
pub fn https_url(raw: &str) -> Result<HttpsUrl, UrlRefused> {
    if raw.len() > MAX_URL {
        return Err(UrlRefused::TooLong);
    }
    if let Some(b) = raw
        .bytes()
        .find(|b| !(0x21..0x7f).contains(b) || *b == b'\\')
    {
        return Err(UrlRefused::RawByte(b));
    }
    let scheme = "https://";
    if raw.len() < scheme.len() || !raw[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(UrlRefused::NotHttps);
    }
    let rest = &raw[scheme.len()..];
    if rest.contains('#') {
        return Err(UrlRefused::Fragment);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if authority.contains('@') {
        return Err(UrlRefused::Userinfo);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (lit, after) = v6.split_once(']').ok_or(UrlRefused::BadHost)?;
            if lit.is_empty()
                || !lit
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(UrlRefused::BadHost);
            }
            (format!("[{}]", lit.to_ascii_lowercase()), after)
        }
        None => {
            let at = authority.find(':').unwrap_or(authority.len());
            let name = authority[..at].to_ascii_lowercase();
            let name = name.strip_suffix('.').unwrap_or(&name).to_string();
            let label_ok = |l: &str| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !name.split('.').all(label_ok) {
                return Err(UrlRefused::BadHost);
            }
            (name, &authority[at..])
        }
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => 443,
        None => return Err(UrlRefused::BadHost),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UrlRefused::BadPort),
            }
        }
        Some(_) => return Err(UrlRefused::BadPort),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok(HttpsUrl {
        host,
        port,
        path: self::path(path).map_err(UrlRefused::Path)?,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        use Refused::*;
        let table: &[(&str, Result<&str, Refused>)] = &[
            ("/v1/chat/completions", Ok("/v1/chat/completions")),
            ("/", Ok("/")),
            ("/v1/models/", Ok("/v1/models/")),
            ("/v1/%61dmin/users", Ok("/v1/admin/users")),
            ("/ops/%65xec", Ok("/ops/exec")),
            ("/v1/%7euser/%2D%5f%2e", Ok("/v1/~user/-_.")),
            ("/v1/a%3ab", Ok("/v1/a%3Ab")),
            ("/v1/a%40b", Ok("/v1/a%40b")),
            ("/v1/100%25", Ok("/v1/100%25")),
            ("/v1/caf%c3%a9", Ok("/v1/caf%C3%A9")),
            ("/v1/a..b", Ok("/v1/a..b")),
            ("/v1/%2fadmin", Err(EncodedSeparator)),
            ("/v1%2Fadmin", Err(EncodedSeparator)),
            ("/v1/%5cadmin", Err(EncodedSeparator)),
            ("/v1/a%00b", Err(EncodedControl)),
            ("/v1/a%0Ab", Err(EncodedControl)),
            ("/v1/a%7fb", Err(EncodedControl)),
            ("/v1/a%zz", Err(BadPercent)),
            ("/v1/a%2", Err(BadPercent)),
            ("/v1/a%", Err(BadPercent)),
            ("/v1/%c0%af", Err(InvalidUtf8)),
            ("/v1/%c3", Err(InvalidUtf8)),
            ("/v1/%80", Err(InvalidUtf8)),
            ("/v1/%ed%a0%80", Err(InvalidUtf8)),
            ("/v1/%c3%a9%c3", Err(InvalidUtf8)),
            ("/v1/a\\b", Err(RawByte(b'\\'))),
            ("/v1/admin;x=1/users", Err(RawByte(b';'))),
            ("/v1/a b", Err(RawByte(b' '))),
            ("/v1/caf\u{e9}", Err(RawByte(0xc3))),
            ("/v1/../admin", Err(DotSegment)),
            ("/v1/./x", Err(DotSegment)),
            ("/v1/%2e%2e/admin", Err(DotSegment)),
            ("/v1/%2E/admin", Err(DotSegment)),
            ("/v1/..", Err(DotSegment)),
            ("//v1/admin", Err(EmptySegment)),
            ("/v1//admin", Err(EmptySegment)),
            ("v1/admin", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
        ];
        for (raw, want) in table {
            let got = path(raw);
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{raw}");
            if let Ok(c) = &got {
                assert_eq!(path(c).as_deref(), Ok(c.as_str()), "fixed point: {raw}");
            }
        }
    }

    #[test]
    fn https_urls() {
        use UrlRefused::*;
        let ok = |host: &str, port: u16, path: &str, query: Option<&str>| {
            Ok(HttpsUrl {
                host: host.into(),
                port,
                path: path.into(),
                query: query.map(Into::into),
            })
        };
        let table: &[(&str, Result<HttpsUrl, UrlRefused>)] = &[
            (
                "https://mcp.example.com/sse",
                ok("mcp.example.com", 443, "/sse", None),
            ),
            (
                "HTTPS://MCP.Example.COM./Sse",
                ok("mcp.example.com", 443, "/Sse", None),
            ),
            (
                "https://mcp.example.com",
                ok("mcp.example.com", 443, "/", None),
            ),
            (
                "https://mcp.example.com:443/a",
                ok("mcp.example.com", 443, "/a", None),
            ),
            (
                "https://mcp.example.com:8443/a?x=1",
                ok("mcp.example.com", 8443, "/a", Some("x=1")),
            ),
            (
                "https://mcp.example.com?x",
                ok("mcp.example.com", 443, "/", Some("x")),
            ),
            (
                "https://mcp.example.com/%61dmin",
                ok("mcp.example.com", 443, "/admin", None),
            ),
            ("https://[::1]:9000/m", ok("[::1]", 9000, "/m", None)),
            ("https://127.0.0.1/m", ok("127.0.0.1", 443, "/m", None)),
            ("http://mcp.example.com/", Err(NotHttps)),
            ("wss://mcp.example.com/", Err(NotHttps)),
            ("https:/mcp.example.com/", Err(NotHttps)),
            ("https://", Err(BadHost)),
            ("https://allowed.example@evil.example/", Err(Userinfo)),
            ("https://user:pw@mcp.example.com/", Err(Userinfo)),
            ("https://mcp.example.com/#@evil.example", Err(Fragment)),
            (
                "https://mcp.example.com\\@evil.example/",
                Err(RawByte(b'\\')),
            ),
            ("https://mcp.example.com /", Err(RawByte(b' '))),
            ("https://mcp.example.com\t.evil/", Err(RawByte(b'\t'))),
            (" https://mcp.example.com/", Err(RawByte(b' '))),
            ("https://m\u{0441}p.example.com/", Err(RawByte(0xd1))),
            ("https://mcp%2eexample.com/", Err(BadHost)),
            ("https://mcp.example.com../", Err(BadHost)),
            ("https://.mcp.example.com/", Err(BadHost)),
            ("https://mcp..example.com/", Err(BadHost)),
            ("https://mcp.example.com:0/", Err(BadPort)),
            ("https://mcp.example.com:65536/", Err(BadPort)),
            ("https://mcp.example.com:+443/", Err(BadPort)),
            ("https://mcp.example.com:/", Err(BadPort)),
            ("https://mcp.example.com:443:443/", Err(BadPort)),
            ("https://[::1/", Err(BadHost)),
            ("https://[::1]x/", Err(BadHost)),
            (
                "https://mcp.example.com/a/../admin",
                Err(Path(Refused::DotSegment)),
            ),
            (
                "https://mcp.example.com/a/%2e%2e/admin",
                Err(Path(Refused::DotSegment)),
            ),
            (
                "https://mcp.example.com/a%2Fb",
                Err(Path(Refused::EncodedSeparator)),
            ),
            (
                "https://mcp.example.com//evil.example",
                Err(Path(Refused::EmptySegment)),
            ),
        ];
        for (raw, want) in table {
            assert_eq!(&https_url(raw), want, "{raw}");
        }
        assert_eq!(
            https_url(&format!("https://a.example/{}", "x".repeat(MAX_URL))),
            Err(TooLong)
        );
    }

    #[test]
    fn hosts() {
        let table = [
            ("API.Example.COM:8443", "api.example.com"),
            ("example.com.", "example.com"),
            ("example.com", "example.com"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
        ];
        for (raw, want) in table {
            assert_eq!(host(raw), want, "{raw}");
        }
    }
}
