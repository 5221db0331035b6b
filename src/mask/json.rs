//! JSON-aware masking: only string values change; keys, numbers, structure, whitespace and key
//! order stay byte for byte, so the document stays valid and diff-able.

use super::{Engine, Rules, Tally, Vault};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("the body is not valid JSON: {0}")]
    Invalid(String),
}

/// Deeper documents are refused (no agent API nests this deep; a bomb would).
pub const MAX_DEPTH: usize = 128;

/// Masks every string value of the JSON document `body`.
pub fn mask_json(
    engine: &Engine,
    body: &[u8],
    rules: &Rules,
    vault: Option<&Vault>,
    restore: bool,
) -> Result<(Vec<u8>, Tally), JsonError> {
    // serde_json validates (and bounds nesting at 128 levels, so no stack overflow).
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| JsonError::Invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len());
    let mut tally = Tally::default();
    let mut last = 0;
    let mut i = 0;
    let mut depth = 0usize;
    while i < body.len() {
        if body[i] != b'"' {
            match body[i] {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(JsonError::Invalid(format!(
                            "nested deeper than {MAX_DEPTH} levels"
                        )));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
            continue;
        }
        // A string token: find its closing quote.
        let start = i;
        let mut j = i + 1;
        let mut escaped = false;
        while j < body.len() && body[j] != b'"' {
            if body[j] == b'\\' {
                escaped = true;
                j += 1;
            }
            j += 1;
        }
        let end = (j + 1).min(body.len());
        i = end;
        let is_key = body[end..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b':');
        if is_key {
            continue;
        }
        let raw = &body[start + 1..end - 1];
        let decoded: std::borrow::Cow<str> = if escaped {
            match serde_json::from_slice::<String>(&body[start..end]) {
                Ok(s) => s.into(),
                Err(e) => return Err(JsonError::Invalid(e.to_string())),
            }
        } else {
            match std::str::from_utf8(raw) {
                Ok(s) => s.into(),
                Err(e) => return Err(JsonError::Invalid(e.to_string())),
            }
        };
        let findings = engine.scan(decoded.as_bytes());
        if findings.is_empty() {
            continue;
        }
        let (masked, t) = engine.apply(&decoded, &findings, rules, vault, restore);
        tally.merge(t);
        if masked != decoded {
            out.extend_from_slice(&body[last..start]);
            out.extend_from_slice(
                serde_json::to_string(&masked)
                    .map_err(|e| JsonError::Invalid(e.to_string()))?
                    .as_bytes(),
            );
            last = end;
        }
    }
    out.extend_from_slice(&body[last..]);
    Ok((out, tally))
}
