//! Token usage and its cost, read from the answers of the model APIs agents call: Chat
//! Completions (JSON, and the streamed chunk that carries `usage`), the Responses API (JSON, and
//! the `response.completed` / `response.incomplete` / `response.failed` events) and Anthropic's
//! Messages API (JSON, and `message_start` + `message_delta`).
//!
//! Pure: bytes and JSON in, counts and money out. `scan.rs` finds the documents that carry usage
//! in a response body as it streams by; `request.rs` reads what a request asks for (its model,
//! its output cap) and adds `stream_options.include_usage` where a route wants it; `prices.rs`
//! holds the shipped price table.
//!
//! Invariant: the counts are normalized across providers so that one price table applies:
//! `input` is every prompt token (Anthropic's cache reads and writes included), `cached_input`
//! the part of it read from a cache, `output` every generated token, `reasoning` the part of it
//! the model spent thinking. A field a document does not carry keeps its earlier value (Anthropic
//! streams report input first and output last, each cumulative).

pub mod prices;
pub mod request;
pub mod scan;

pub use prices::{Price, PriceTable};

use serde::Deserialize;

/// Tokens one exchange used, normalized (see the module's invariant).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
    /// Anthropic's cache writes (part of `input`), priced apart where the table says so.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What an answer reported, gathered document by document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The model the answer names (the first one seen).
    pub model: Option<String>,
    raw: Raw,
    /// Whether any document carried a usage object.
    pub reported: bool,
}

/// Provider fields as they were last reported (each cumulative where a stream repeats it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Raw {
    /// Chat Completions `prompt_tokens`, Responses/Anthropic `input_tokens`.
    input: Option<u64>,
    output: Option<u64>,
    /// `prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens`.
    cached: Option<u64>,
    reasoning: Option<u64>,
    /// Anthropic: not part of `input_tokens`.
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

/// The usage object of any of the three APIs (unknown fields ignored).
#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// A document that may carry usage: at the top (Chat Completions, Responses and Anthropic JSON,
/// a chat chunk, `message_delta`), under `response` (Responses events) or `message`
/// (`message_start`).
#[derive(Deserialize)]
struct Doc {
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<WireUsage>,
    response: Option<Nested>,
    message: Option<Nested>,
}

#[derive(Deserialize)]
struct Nested {
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<WireUsage>,
}

impl Doc {
    /// The document's top-level `model`, `usage`, `response` and `message`, each parsed from
    /// its own value: the rest of an answer (its content, several KiB) is stepped over by a
    /// scan for strings and brackets, not parsed (bench: `cargo bench --bench usage`). `None`
    /// when the text is not one whole JSON object.
    fn read(json: &[u8]) -> Option<Doc> {
        let [model, usage, response, message] =
            top_level(json, ["model", "usage", "response", "message"])?;
        // Straight into the struct (as `lenient`, without the `Value` in between): anything but
        // an object of these fields' types reads as no usage.
        // (An array would read positionally into the struct: only an object is usage.)
        let parse_usage = |v: &[u8]| {
            v.starts_with(b"{")
                .then(|| serde_json::from_slice::<WireUsage>(v).ok())
                .flatten()
        };
        Some(Doc {
            model: model.and_then(|v| serde_json::from_slice::<String>(v).ok()),
            usage: usage.and_then(parse_usage),
            response: response.and_then(|v| serde_json::from_slice::<Nested>(v).ok()),
            message: message.and_then(|v| serde_json::from_slice::<Nested>(v).ok()),
        })
    }
}

/// The values of the top-level members `names` of the JSON object `json` (the first of each),
/// found by stepping over strings (escapes honoured) and counting brackets. `None` unless
/// `json` is one object with nothing but whitespace after it; the values themselves are checked
/// by whoever parses them.
fn top_level<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> Option<[Option<&'a [u8]>; N]> {
    let start = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[start] != b'{' {
        return None;
    }
    let mut found: [Option<&[u8]>; N] = [None; N];
    let mut depth = 0usize;
    let mut i = start;
    // At depth 1: the key just read, waiting for its value (`key` then `:`).
    let mut key: Option<usize> = None;
    let mut value_of: Option<(usize, usize)> = None; // (name index, value start)
                                                     // At depth 1, a string is a member's name (after `{` or `,`) or its value (after `:`).
    let mut expect_key = true;
    while i < json.len() {
        let b = json[i];
        match b {
            b'"' => {
                let end = string_end(json, i + 1)?;
                if depth == 1 && expect_key {
                    let k = &json[i + 1..end];
                    key = names
                        .iter()
                        .position(|n| n.as_bytes() == k)
                        .or(Some(usize::MAX));
                    expect_key = false;
                } else if depth == 1 {
                    if let Some((n, from)) = value_of.take() {
                        found[n].get_or_insert(&json[from..=end]);
                    }
                }
                i = end + 1;
                continue;
            }
            b':' if depth == 1 => {
                if let Some(k) = key.take() {
                    let from = i
                        + 1
                        + json[i + 1..]
                            .iter()
                            .position(|b| !b.is_ascii_whitespace())?;
                    if k != usize::MAX {
                        value_of = Some((k, from));
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 2 {
                    if let Some((n, from)) = value_of.take() {
                        found[n].get_or_insert(&json[from..=i]);
                    }
                } else if depth == 1 {
                    // The object's end: a scalar last member ends here.
                    if let Some((n, from)) = value_of.take() {
                        found[n].get_or_insert(json[from..i].trim_ascii_end());
                    }
                }
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return json[i + 1..]
                        .iter()
                        .all(u8::is_ascii_whitespace)
                        .then_some(found);
                }
            }
            b',' if depth == 1 => {
                expect_key = true;
                // A scalar value (number, true, false, null) ends here.
                if let Some((n, from)) = value_of.take() {
                    found[n].get_or_insert(json[from..i].trim_ascii_end());
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote that ends the string whose content starts at `from`.
fn string_end(json: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let q = from + memchr::memchr2(b'"', b'\\', &json[from..])?;
        if json[q] == b'"' {
            return Some(q);
        }
        from = q + 2; // an escape: the next byte is never the string's end
    }
}

/// `usage: null` (every chunk of a stream that asked for usage) and shapes of other APIs that
/// happen to use the name read as no usage rather than failing the document.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<WireUsage>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Object(_) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

impl Observed {
    /// Reads one JSON document (a whole answer or one event's data). Returns whether it carried
    /// usage. A document that is not JSON, or not one of these shapes, changes nothing.
    pub fn document(&mut self, json: &[u8]) -> bool {
        let Some(doc) = Doc::read(json) else {
            return false;
        };
        let nested = doc.response.or(doc.message);
        let model = doc
            .model
            .or_else(|| nested.as_ref().and_then(|n| n.model.clone()));
        if self.model.is_none() {
            self.model = model.filter(|m| !m.is_empty());
        }
        let Some(u) = doc.usage.or_else(|| nested.and_then(|n| n.usage)) else {
            return false;
        };
        self.reported = true;
        let r = &mut self.raw;
        let set = |slot: &mut Option<u64>, v: Option<u64>| {
            if v.is_some() {
                *slot = v;
            }
        };
        set(&mut r.input, u.prompt_tokens.or(u.input_tokens));
        set(&mut r.output, u.completion_tokens.or(u.output_tokens));
        let input_details = u.prompt_tokens_details.or(u.input_tokens_details);
        let output_details = u.completion_tokens_details.or(u.output_tokens_details);
        set(&mut r.cached, input_details.and_then(|d| d.cached_tokens));
        set(
            &mut r.reasoning,
            output_details.and_then(|d| d.reasoning_tokens),
        );
        set(&mut r.cache_read, u.cache_read_input_tokens);
        set(&mut r.cache_creation, u.cache_creation_input_tokens);
        true
    }

    /// The normalized usage, once any document reported some.
    pub fn usage(&self) -> Option<Usage> {
        if !self.reported {
            return None;
        }
        let r = &self.raw;
        let (read, write) = (r.cache_read.unwrap_or(0), r.cache_creation.unwrap_or(0));
        let input = r.input.unwrap_or(0);
        Some(Usage {
            // Anthropic counts cache reads and writes apart from `input_tokens`.
            input: input.saturating_add(read).saturating_add(write),
            output: r.output.unwrap_or(0),
            cached_input: r.cached.unwrap_or(0).saturating_add(read),
            reasoning: r.reasoning.unwrap_or(0),
            cache_write: write,
        })
    }
}

/// Money in millionths of the currency unit (micro-dollars): integers add exactly.
pub type Micros = u64;

/// Renders micros as a decimal amount (`1234567` -> `1.234567`).
pub fn micros_str(m: Micros) -> String {
    format!("{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Micros as a float amount, for JSON and metrics.
pub fn micros_f64(m: Micros) -> f64 {
    m as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests;
