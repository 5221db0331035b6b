//! Secret references in header templates: `${env:NAME}` and `${file:PATH}`.
//!
//! Invariant: a resolved secret is never printed. `Secret`'s `Debug` is redacted and
//! every error names the reference (variable or path), never the value.

use std::fmt;
use std::path::Path;

/// A header value built from a template, with the secret parts it was built from.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// The resolved `${..}` parts: the strings that must never leave the gateway.
    parts: Vec<String>,
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The values that came from references (env vars, files); empty for a literal template.
    pub fn sensitive_parts(&self) -> &[String] {
        &self.parts
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where reference lookups come from; a trait so tests can resolve without touching the process env.
pub trait SecretSource {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &Path) -> std::io::Result<String>;
}

pub struct ProcessSecrets;

/// Resolves every well-formed reference to a placeholder: `agentgate check --skip-secrets`.
pub struct PlaceholderSecrets;

impl SecretSource for PlaceholderSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        Some("placeholder".into())
    }
    fn file(&self, _path: &Path) -> std::io::Result<String> {
        Ok("placeholder".into())
    }
}

thread_local! {
    static SKIP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with references resolved to placeholders on this thread (deserialization has no context argument).
pub fn with_placeholders<T>(f: impl FnOnce() -> T) -> T {
    SKIP.with(|s| s.set(true));
    let out = f();
    SKIP.with(|s| s.set(false));
    out
}

/// Whether references currently resolve to placeholders (`check --skip-secrets`).
pub fn placeholders_active() -> bool {
    SKIP.with(|s| s.get())
}

/// The source deserialization uses: the process, or placeholders inside `with_placeholders`.
pub fn current_source() -> &'static dyn SecretSource {
    if SKIP.with(|s| s.get()) {
        &PlaceholderSecrets
    } else {
        &ProcessSecrets
    }
}

impl SecretSource for ProcessSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Expands every `${env:NAME}` / `${file:PATH}` in `template`. File contents lose one trailing
/// newline (as Kubernetes Secret files and `echo` leave them).
pub fn resolve(template: &str, source: &dyn SecretSource) -> Result<Secret, String> {
    expand(template, source, false)
}

/// `resolve` for a value that is not a header (a PEM key): line breaks are kept.
pub fn resolve_text(template: &str, source: &dyn SecretSource) -> Result<Secret, String> {
    expand(template, source, true)
}

fn expand(template: &str, source: &dyn SecretSource, lines: bool) -> Result<Secret, String> {
    let mut value = String::with_capacity(template.len());
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        value.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            "unterminated `${` in header template; write ${env:NAME} or ${file:PATH}".to_string()
        })?;
        let reference = &after[..end];
        let resolved = match reference.split_once(':') {
            Some(("env", name)) if !name.is_empty() => source.env(name).ok_or_else(|| {
                format!("environment variable `{name}` is not set (referenced as ${{env:{name}}}); export it or use ${{file:PATH}}")
            })?,
            Some(("file", path)) if !path.is_empty() => {
                let mut s = source
                    .file(Path::new(path))
                    .map_err(|e| format!("cannot read secret file `{path}`: {e}"))?;
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            }
            _ => {
                return Err(format!(
                    "unknown reference `${{{reference}}}`; write ${{env:NAME}} or ${{file:PATH}}"
                ))
            }
        };
        if resolved.is_empty() {
            return Err(format!(
                "reference `${{{reference}}}` resolved to an empty value"
            ));
        }
        if resolved
            .bytes()
            .any(|b| b == 0 || (!lines && (b == b'\r' || b == b'\n')))
        {
            return Err(format!(
                "reference `${{{reference}}}` contains a line break or NUL, which cannot go in a header"
            ));
        }
        value.push_str(&resolved);
        parts.push(resolved);
        rest = &after[end + 1..];
    }
    value.push_str(rest);
    Ok(Secret { value, parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);
    impl SecretSource for Fake {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn file(&self, path: &Path) -> std::io::Result<String> {
            self.0
                .get(path.to_str().unwrap_or_default())
                .map(|s| s.to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
        }
    }

    fn fake() -> Fake {
        Fake(HashMap::from([
            ("KEY", "sk-abc"),
            ("/run/key", "sk-file\n"),
            ("EMPTY", ""),
            ("CRLF", "a\r\nb"),
        ]))
    }

    #[test]
    fn resolves_and_reports() {
        let table: &[(&str, Result<&str, &str>)] = &[
            ("Bearer ${env:KEY}", Ok("Bearer sk-abc")),
            ("${file:/run/key}", Ok("sk-file")),
            ("plain", Ok("plain")),
            ("${env:KEY}-${env:KEY}", Ok("sk-abc-sk-abc")),
            ("Bearer ${env:MISSING}", Err("`MISSING` is not set")),
            ("${file:/nope}", Err("cannot read secret file `/nope`")),
            ("${vault:x}", Err("unknown reference")),
            ("${env:KEY", Err("unterminated")),
            ("${env:EMPTY}", Err("empty value")),
            ("${env:CRLF}", Err("line break")),
        ];
        for (template, want) in table {
            match (resolve(template, &fake()), want) {
                (Ok(s), Ok(v)) => assert_eq!(s.expose(), *v, "{template}"),
                (Err(e), Err(fragment)) => {
                    assert!(e.contains(fragment), "{template}: {e}");
                    assert!(!e.contains("sk-abc"), "error leaks the secret: {e}");
                }
                (got, want) => panic!("{template}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn debug_is_redacted_and_parts_are_tracked() {
        let s = resolve("Bearer ${env:KEY}", &fake()).unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.sensitive_parts(), ["sk-abc".to_string()]);
    }
}
