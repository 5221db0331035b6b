//! A small JSON path: `tools[*].function.name`, `messages[0].content`, `metadata.*`.
//! Segments are separated by `.`; each is a key (or `*`: every value of an object) followed by
//! any number of `[N]` (one array element) or `[*]` (every element).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Paths deeper than this are refused (the body parser's own depth limit is larger).
const MAX_STEPS: usize = 32;

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        if text.is_empty() {
            return Err("the path is empty".into());
        }
        for seg in text.split('.') {
            let (key, mut rest) = match seg.find('[') {
                Some(i) => (&seg[..i], &seg[i..]),
                None => (seg, ""),
            };
            match key {
                "" if rest.is_empty() => {
                    return Err("empty segment (two dots, or a dot at an end)".into())
                }
                "" => {}
                "*" => steps.push(Step::AnyKey),
                k => steps.push(Step::Key(k.to_string())),
            }
            while !rest.is_empty() {
                let close = rest.find(']').ok_or("`[` without `]`")?;
                let inner = &rest[1..close];
                steps.push(match inner {
                    "*" => Step::AnyIndex,
                    n => Step::Index(
                        n.parse()
                            .map_err(|_| format!("`[{n}]` is not [*] or [number]"))?,
                    ),
                });
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("unexpected `{rest}` after `]`"));
                }
            }
        }
        if steps.len() > MAX_STEPS {
            return Err(format!("more than {MAX_STEPS} steps"));
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// Calls `f(location, value)` for every value the path selects in `doc`; the location has
    /// concrete indexes (`tools[2].function.name`).
    pub fn select(&self, doc: &serde_json::Value, f: &mut impl FnMut(&str, &serde_json::Value)) {
        let mut at = String::new();
        walk(&self.steps, doc, &mut at, f);
    }
}

fn walk(
    steps: &[Step],
    v: &serde_json::Value,
    at: &mut String,
    f: &mut impl FnMut(&str, &serde_json::Value),
) {
    let Some((step, rest)) = steps.split_first() else {
        f(at, v);
        return;
    };
    let len = at.len();
    let mut go =
        |at: &mut String, child: &serde_json::Value, label: &dyn fmt::Display, index: bool| {
            use fmt::Write;
            let _ = if index {
                write!(at, "[{label}]")
            } else if at.is_empty() {
                write!(at, "{label}")
            } else {
                write!(at, ".{label}")
            };
            walk(rest, child, at, f);
            at.truncate(len);
        };
    match (step, v) {
        (Step::Key(k), serde_json::Value::Object(o)) => {
            if let Some(c) = o.get(k) {
                go(at, c, k, false);
            }
        }
        (Step::AnyKey, serde_json::Value::Object(o)) => {
            for (k, c) in o {
                go(at, c, k, false);
            }
        }
        (Step::Index(i), serde_json::Value::Array(a)) => {
            if let Some(c) = a.get(*i) {
                go(at, c, i, true);
            }
        }
        (Step::AnyIndex, serde_json::Value::Array(a)) => {
            for (i, c) in a.iter().enumerate() {
                go(at, c, &i, true);
            }
        }
        _ => {}
    }
}
