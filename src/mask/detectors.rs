//! The built-in detectors: a pattern (Rust regex syntax, every repetition bounded so a stream
//! knows how much it may have to hold back), the capture group that is the value when the
//! pattern includes context (`password=VALUE`), and a validator. Rules follow gitleaks and
//! trufflehog for secrets and Microsoft Presidio's recognizers for personal data.

use super::validate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Secret,
    Pii,
    Custom,
}

pub struct Builtin {
    pub name: &'static str,
    pub category: Category,
    /// The pattern, or for long values only its head: long counted repetitions would make the
    /// lazy DFA build a state per byte of every long token, so `extend` finishes them.
    pub pattern: &'static str,
    /// Capture group holding the value (0: the whole match).
    pub group: usize,
    pub validate: Option<fn(&str) -> bool>,
    pub extend: Option<Extend>,
}

/// How a value continues after its head: more bytes of a class, up to a total length, or a
/// structure (PEM block, JWT).
#[derive(Debug, Clone, Copy)]
pub enum Extend {
    /// Bytes of `class` until the value is `max` bytes long.
    Class { class: fn(u8) -> bool, max: usize },
    /// A PEM body up to its END line (or the end of the base64 run), at most 8,000 bytes.
    Pem,
    /// The rest of a JWT: `header.payload.signature`.
    Jwt,
}

/// The outcome of extending a head: the value's end, and whether it touched the end of the
/// text while it could still go on (a stream must wait for more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extended {
    pub end: usize,
    pub open: bool,
}

fn run(text: &[u8], from: usize, class: fn(u8) -> bool, max: usize) -> (usize, bool) {
    let limit = text.len().min(from.saturating_add(max));
    let mut i = from;
    while i < limit && class(text[i]) {
        i += 1;
    }
    // Open: the text ended (not the class, not the limit) while the run went on.
    (i, i == text.len() && i < from.saturating_add(max))
}

impl Extend {
    /// Extends the value `text[start..head_end]`; `None` when the structure is not there.
    pub fn apply(self, text: &[u8], start: usize, head_end: usize) -> Option<Extended> {
        match self {
            Extend::Class { class, max } => {
                let (end, open) = run(text, head_end, class, max.saturating_sub(head_end - start));
                Some(Extended { end, open })
            }
            Extend::Pem => {
                let body = |b: u8| b.is_ascii_alphanumeric() || b"+/=:, \t\r\n".contains(&b);
                let mut i = head_end;
                let limit = text.len().min(head_end + 8000);
                loop {
                    let (j, _) = run(text, i, body, limit.saturating_sub(i));
                    i = j;
                    // `-` followed by a letter belongs to headers (Proc-Type, DEK-Info).
                    if i + 1 < limit && text[i] == b'-' && text[i + 1].is_ascii_alphabetic() {
                        i += 2;
                        continue;
                    }
                    break;
                }
                if i >= text.len() || (text.len() - i < 9 && b"-----END ".starts_with(&text[i..])) {
                    return Some(Extended {
                        end: text.len(),
                        open: true,
                    });
                }
                if text[i..].starts_with(b"-----END ") {
                    // The END line: up to the closing dashes.
                    let rest = &text[i + 9..text.len().min(i + 9 + 60)];
                    if let Some(p) = rest.windows(5).position(|w| w == b"-----") {
                        return Some(Extended {
                            end: i + 9 + p + 5,
                            open: false,
                        });
                    }
                    return Some(Extended {
                        end: i + 9 + rest.len(),
                        open: rest.len() < 60,
                    });
                }
                Some(Extended {
                    end: i,
                    open: false,
                })
            }
            Extend::Jwt => {
                let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                let (h_end, open) = run(text, head_end, b64, 2000);
                if open {
                    return Some(Extended { end: h_end, open });
                }
                let dot = |i: usize| text.get(i) == Some(&b'.');
                if !dot(h_end) {
                    return None;
                }
                let p = h_end + 1;
                let have = &text[p..text.len().min(p + 3)];
                if !b"eyJ".starts_with(have) {
                    return None;
                }
                if have.len() < 3 {
                    return Some(Extended {
                        end: text.len(),
                        open: true,
                    });
                }
                let (p_end, open) = run(text, p + 3, b64, 4000);
                if open {
                    return Some(Extended { end: p_end, open });
                }
                if p_end - p < 13 || !dot(p_end) {
                    return None;
                }
                let (s_end, open) = run(text, p_end + 1, b64, 1000);
                if !open && s_end - (p_end + 1) < 10 {
                    return None;
                }
                Some(Extended { end: s_end, open })
            }
        }
    }

    /// The longest value this extension can produce.
    pub fn max_len(self) -> usize {
        match self {
            Extend::Class { max, .. } => max,
            Extend::Pem => 8000 + 120,
            Extend::Jwt => 2000 + 4000 + 1000 + 8,
        }
    }
}

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}
fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~+/-=".contains(&b)
}
fn secret_char(b: u8) -> bool {
    !(b.is_ascii_whitespace() || b"\"',;`".contains(&b))
}

const fn d(
    name: &'static str,
    category: Category,
    pattern: &'static str,
    group: usize,
    validate: Option<fn(&str) -> bool>,
) -> Builtin {
    Builtin {
        name,
        category,
        pattern,
        group,
        validate,
        extend: None,
    }
}

const fn x(
    name: &'static str,
    category: Category,
    pattern: &'static str,
    group: usize,
    validate: Option<fn(&str) -> bool>,
    extend: Extend,
) -> Builtin {
    Builtin {
        name,
        category,
        pattern,
        group,
        validate,
        extend: Some(extend),
    }
}

use Category::{Pii, Secret};

/// In priority order: at the same position, an earlier detector wins.
pub const BUILTINS: &[Builtin] = &[
    x(
        "private_key",
        Secret,
        r"-----BEGIN (?:[A-Z0-9]{1,10} ){0,2}PRIVATE KEY(?: BLOCK)?-----",
        0,
        None,
        Extend::Pem,
    ),
    x(
        "anthropic_key",
        Secret,
        r"\bsk-ant-(?:api|admin|sid)[0-9]{2}-[A-Za-z0-9_\-]{20}",
        0,
        Some(validate::vendor_key),
        Extend::Class {
            class: key_char,
            max: 140,
        },
    ),
    x(
        "openai_key",
        Secret,
        r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20}",
        0,
        Some(validate::vendor_key),
        Extend::Class {
            class: key_char,
            max: 220,
        },
    ),
    d(
        "aws_access_key_id",
        Secret,
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
        0,
        None,
    ),
    d(
        "aws_secret_key",
        Secret,
        r#"(?i:aws)[A-Za-z0-9_.\-]{0,20}(?i:secret|private)[A-Za-z0-9_.\-]{0,20}["']?\s{0,3}[:=]{1,2}>?\s{0,3}["']?([A-Za-z0-9/+]{40})\b"#,
        1,
        Some(validate::high_entropy_secret),
    ),
    d(
        "github_token",
        Secret,
        r"\b(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{82}\b",
        0,
        None,
    ),
    x(
        "slack_token",
        Secret,
        r"\bxox[abposr]-[A-Za-z0-9\-]{10}|\bxapp-[0-9]-[A-Za-z0-9\-]{10}",
        0,
        None,
        Extend::Class {
            class: |b| b.is_ascii_alphanumeric() || b == b'-',
            max: 140,
        },
    ),
    d(
        "google_api_key",
        Secret,
        r"\bAIza[0-9A-Za-z_\-]{35}\b",
        0,
        None,
    ),
    x(
        "stripe_key",
        Secret,
        r"\b(?:sk|rk)_live_[A-Za-z0-9]{24}",
        0,
        None,
        Extend::Class {
            class: alnum,
            max: 108,
        },
    ),
    x(
        "jwt",
        Secret,
        r"\beyJ[A-Za-z0-9_\-]{10}",
        0,
        None,
        Extend::Jwt,
    ),
    x(
        "bearer_token",
        Secret,
        r"\b[Bb]earer\s{1,3}([A-Za-z0-9._~+/\-]{16})",
        1,
        Some(validate::high_entropy_secret),
        Extend::Class {
            class: token_char,
            max: 520,
        },
    ),
    x(
        "generic_secret",
        Secret,
        r#"(?i:password|passwd|pwd|secret|api[_\-]?key|access[_\-]?token|auth[_\-]?token|client[_\-]?secret)["']?\s{0,3}[:=]\s{0,3}["']?([^\s"',;`]{8})"#,
        1,
        Some(validate::high_entropy_secret),
        Extend::Class {
            class: secret_char,
            max: 128,
        },
    ),
    d(
        "email",
        Pii,
        r"\b[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.){1,8}[A-Za-z]{2,24}\b",
        0,
        None,
    ),
    d(
        "credit_card",
        Pii,
        r"\b[0-9](?:[ \-]?[0-9]){12,18}\b",
        0,
        Some(validate::card),
    ),
    d(
        "iban",
        Pii,
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        0,
        Some(validate::iban),
    ),
    d(
        "us_ssn",
        Pii,
        r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
        0,
        Some(validate::ssn),
    ),
    d(
        "phone",
        Pii,
        r"(?:\+[1-9][0-9]{0,2}[ .\-]?(?:\(?[0-9]{1,4}\)?[ .\-]?){1,4}[0-9]{2,4}\b|\(?\b[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}\b|\b0[1-9][0-9]{1,3}[ \-][0-9]{3,4}[ \-]?[0-9]{3,4}\b)",
        0,
        Some(validate::phone),
    ),
    d(
        "ipv4",
        Pii,
        r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b",
        0,
        Some(validate::ipv4),
    ),
    d(
        "ipv6",
        Pii,
        r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,6}(?::[0-9A-Fa-f]{1,4}){1,6}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,7}:",
        0,
        Some(validate::ipv6),
    ),
];
