//! Server-Sent Events framing (the WHATWG `text/event-stream` format), read the same way by the
//! masker, the recorder's capture and `sessions replay --resend`: an event ends at a blank line
//! (`\n\n` or `\r\n\r\n`), its `data:` lines (one leading space dropped) are joined with `\n`,
//! and its other lines (`event:`, `id:`, `retry:`, comments) are kept apart.

/// The end of the first event in `buf` (just after its blank line), if it is complete.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// How many bytes before the end of what was searched a terminator may have begun (a search
/// that resumes there finds one split across chunks).
pub const TERMINATOR_OVERLAP: usize = 2;

/// One event: its `data` payload and its other lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub other: Vec<&'a str>,
    pub data: String,
    /// How many `data:` lines it had (0: a comment or a keep-alive, nothing to deliver).
    pub data_lines: usize,
}

/// Reads one raw event (its blank line included or not).
pub fn parse(raw: &str) -> Event<'_> {
    let mut other = Vec::new();
    let mut data = Vec::new();
    for line in raw.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() {
            other.push(line);
        }
    }
    Event {
        other,
        data_lines: data.len(),
        data: data.join("\n"),
    }
}

/// The data of every complete event of a whole stream that has any (a last event without its
/// blank line counts too: the stream ended).
pub fn data_of_stream(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.as_bytes();
    loop {
        let end = event_end(rest).unwrap_or(rest.len());
        if end == 0 {
            return out;
        }
        let ev = parse(&text[text.len() - rest.len()..][..end]);
        if ev.data_lines > 0 {
            out.push(ev.data);
        }
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ends() {
        let table: [(&[u8], Option<usize>); 6] = [
            (b"data: a\n\n", Some(9)),
            (b"data: a\r\n\r\n", Some(11)),
            (b"data: a\n", None),
            (b"data: a\r\n\r", None),
            (b"data: a\n\ndata: b\n\n", Some(9)),
            (b"", None),
        ];
        for (buf, want) in table {
            assert_eq!(event_end(buf), want, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn events_parse_and_split() {
        let e = parse("event: delta\r\nid: 7\r\ndata: {\"a\":1}\r\ndata:two\r\n\r\n");
        assert_eq!(e.other, vec!["event: delta", "id: 7"]);
        assert_eq!(e.data, "{\"a\":1}\ntwo");
        assert_eq!(e.data_lines, 2);
        assert_eq!(parse(": keep-alive\n\n").data_lines, 0);
        let all = data_of_stream("data: a\n\n: ping\n\ndata:  b\r\n\r\ndata: [DONE]");
        assert_eq!(all, vec!["a", " b", "[DONE]"]);
    }
}
