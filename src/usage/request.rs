//! What a request body asks of the model, for accounting and limits: the model, how many tokens
//! it may generate at most, whether it streams and whether it asked for streamed usage; and the
//! rewrite that asks a Chat Completions stream to report usage.
//!
//! Invariant: a body that is not a JSON object is read as asking nothing and never rewritten.

use serde::Deserialize;

/// Bytes per prompt token assumed when a request's prompt is estimated before it is sent: an
/// over-estimate for English in JSON (about 4 characters per token plus the JSON around them),
/// corrected by the answer's own count afterwards.
pub const BYTES_PER_TOKEN: u64 = 4;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    pub model: Option<String>,
    /// `max_completion_tokens`, `max_tokens` (Chat Completions, Anthropic) or
    /// `max_output_tokens` (Responses), the first present, times `n` (choices generated).
    pub max_output: Option<u64>,
    /// `n`: how many choices the model generates (1 when absent); each may use the cap.
    pub choices: u64,
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// The body's length, for the prompt's estimate.
    pub bytes: u64,
}

impl Asked {
    /// The prompt tokens this request may use, estimated from its size.
    pub fn input_estimate(&self) -> u64 {
        self.bytes.div_ceil(BYTES_PER_TOKEN)
    }
}

#[derive(Deserialize)]
struct Wire {
    model: Option<serde_json::Value>,
    max_completion_tokens: Option<serde_json::Value>,
    max_tokens: Option<serde_json::Value>,
    max_output_tokens: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
    stream_options: Option<serde_json::Value>,
    n: Option<serde_json::Value>,
}

/// Reads a request body (anything but a JSON object asks nothing).
pub fn read(body: &[u8]) -> Asked {
    let mut asked = Asked {
        bytes: body.len() as u64,
        choices: 1,
        ..Asked::default()
    };
    let Ok(w) = serde_json::from_slice::<Wire>(body) else {
        return asked;
    };
    asked.model = w.model.and_then(|m| m.as_str().map(str::to_string));
    asked.max_output = [w.max_completion_tokens, w.max_tokens, w.max_output_tokens]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_u64());
    // OpenAI generates up to `n` choices of up to the cap each (it refuses n > 128).
    asked.choices = w.n.and_then(|n| n.as_u64()).unwrap_or(1).clamp(1, 128);
    asked.max_output = asked.max_output.map(|m| m.saturating_mul(asked.choices));
    asked.stream = w.stream.and_then(|s| s.as_bool()).unwrap_or(false);
    asked.include_usage = w
        .stream_options
        .and_then(|o| o.get("include_usage").and_then(|v| v.as_bool()))
        .unwrap_or(false);
    asked
}

/// A streaming Chat Completions body that did not ask for usage, rewritten to ask for it
/// (`stream_options.include_usage: true`); `None` when there is nothing to change.
pub fn add_include_usage(body: &[u8], asked: &Asked) -> Option<Vec<u8>> {
    if !asked.stream || asked.include_usage {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    match obj.get("stream_options") {
        None => {
            // The common case: one member added at the front, the rest byte for byte.
            let open = body.iter().position(|b| *b == b'{')?;
            let mut out = Vec::with_capacity(body.len() + 48);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            Some(out)
        }
        Some(serde_json::Value::Object(_) | serde_json::Value::Null) => {
            let so = obj
                .entry("stream_options")
                .or_insert(serde_json::Value::Null);
            if so.is_null() {
                *so = serde_json::json!({});
            }
            so["include_usage"] = serde_json::Value::Bool(true);
            serde_json::to_vec(&v).ok()
        }
        // Something the upstream would refuse anyway: left as the agent sent it.
        Some(_) => None,
    }
}
