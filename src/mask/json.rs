//! JSON-aware masking: only strings change (values and object keys alike); numbers, structure,
//! whitespace and key order stay byte for byte, so the document stays valid and diff-able.
//! Strings are decoded (`\uXXXX` and other escapes) before detection, so an escaped secret is
//! seen as the upstream will read it.

use super::{Engine, Rules, Tally, Vault};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("the body is not valid JSON: {0}")]
    Invalid(String),
    #[error("the body is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "the body has the key `{0}` twice in one object (parsers disagree on which one counts)"
    )]
    DuplicateKey(String),
}

/// Checks that `body` is one JSON document no deeper than `MAX_DEPTH`, with no object holding
/// the same key twice (serde keeps the last, some upstream parsers the first: a decision must
/// read what the upstream reads).
pub fn validate(body: &[u8]) -> Result<(), JsonError> {
    use serde::de::Deserializer;
    let mut de = serde_json::Deserializer::from_slice(body);
    let r = (&mut de).deserialize_any(Unique { depth: 0 });
    match r.and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.to_string() {
            m if m.starts_with(DEPTH_MARK) => JsonError::TooDeep,
            m if m.starts_with(DUP_MARK) => JsonError::DuplicateKey(
                m[DUP_MARK.len()..]
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            m if m.starts_with("recursion limit exceeded") => JsonError::TooDeep,
            m => JsonError::Invalid(m),
        }),
    }
}

const DEPTH_MARK: &str = "agentgate: too deep";
const DUP_MARK: &str = "agentgate: duplicate key ";

/// Walks a document without keeping it: depth and unique keys.
struct Unique {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Unique {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(DEPTH_MARK));
        }
        while seq.next_element_seed(Unique { depth })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(DEPTH_MARK));
        }
        // Keys borrowed from the body (owned only when escaped); a short list is searched,
        // a long one hashed.
        let mut seen: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut hashed: std::collections::HashSet<std::borrow::Cow<'de, str>> = Default::default();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let dup = if seen.len() < 16 {
                let dup = seen.contains(&k);
                seen.push(k.clone());
                dup
            } else {
                if hashed.is_empty() {
                    hashed.extend(seen.iter().cloned());
                }
                !hashed.insert(k.clone())
            };
            if dup {
                return Err(serde::de::Error::custom(format!("{DUP_MARK}{k}")));
            }
            map.next_value_seed(Unique { depth })?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deeper documents are refused (no agent API nests this deep; a bomb would).
pub const MAX_DEPTH: usize = 128;

/// Masks every string (values and keys) of the JSON document `body`.
pub fn mask_json(
    engine: &Engine,
    body: &[u8],
    rules: &Rules,
    vault: Option<&Vault>,
    restore: bool,
) -> Result<(Vec<u8>, Tally), JsonError> {
    // Validates (and bounds nesting, so no stack overflow; serde_json's own limit is 128 too).
    validate(body)?;
    if engine.nothing_in_any_string(body) {
        // Most bodies: the per-string walk would find nothing (`Engine::nothing_in_any_string`).
        return Ok((body.to_vec(), Tally::default()));
    }
    mask_strings(engine, body, rules, vault, restore)
}

/// `mask_json` of a validated `body` without its shortcut: every string decoded and scanned.
pub(crate) fn mask_strings(
    engine: &Engine,
    body: &[u8],
    rules: &Rules,
    vault: Option<&Vault>,
    restore: bool,
) -> Result<(Vec<u8>, Tally), JsonError> {
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
