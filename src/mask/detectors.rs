//! The built-in detectors: a pattern (Rust regex syntax, every repetition bounded so a stream
//! knows how much it may have to hold back), the capture group that is the value when the
//! pattern includes context (`password=VALUE`), and a validator. Rules follow gitleaks and
//! trufflehog for secrets and Microsoft Presidio's recognizers for personal data.
//!
//! Several entries may share a name (`us_ssn` alone, and `us_ssn` after a context word): they
//! are one detector to the configuration, the metrics and the placeholders.

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
    /// As `Class`, and a `.` followed by a byte of `class` goes on with it (GitLab's routable
    /// tokens, `glpat-<random>.<route>`); a `.` that ends a sentence is not the value's.
    Dotted { class: fn(u8) -> bool, max: usize },
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
            Extend::Dotted { class, max } => {
                let limit = start.saturating_add(max);
                let mut i = head_end;
                loop {
                    let (j, _) = run(text, i, class, limit.saturating_sub(i));
                    i = j;
                    if i < limit && text.get(i) == Some(&b'.') {
                        match text.get(i + 1) {
                            Some(&b) if class(b) && i + 1 < limit => {
                                i += 1;
                                continue;
                            }
                            // `.` last: the next byte decides.
                            None => return Some(Extended { end: i, open: true }),
                            _ => {}
                        }
                    }
                    let open = i == text.len() && i < limit;
                    return Some(Extended { end: i, open });
                }
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
                    // A key inside a JSON or code string literal (a GCP service account file
                    // pasted as text): its line breaks are `\n`, its slashes may be `\/`.
                    if i + 1 < limit && text[i] == b'\\' && b"nrt/".contains(&text[i + 1]) {
                        i += 2;
                        continue;
                    }
                    if i + 1 == text.len() && text[i] == b'\\' {
                        return Some(Extended {
                            end: text.len(),
                            open: true,
                        });
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
            Extend::Class { max, .. } | Extend::Dotted { max, .. } => max,
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
fn alpha(b: u8) -> bool {
    b.is_ascii_alphabetic()
}
fn hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}
fn base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=".contains(&b)
}
fn azure_secret_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_~.-".contains(&b)
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
        Some(validate::aws_key_id),
    ),
    d(
        "aws_secret_key",
        Secret,
        r#"(?i:aws)[A-Za-z0-9_.\-]{0,20}(?i:secret|private)[A-Za-z0-9_.\-]{0,20}["']?\s{0,3}[:=]{1,2}>?\s{0,3}["']?([A-Za-z0-9/+]{40})\b"#,
        1,
        Some(validate::high_entropy_secret),
    ),
    // The key of a storage account connection string (`AccountKey=...==`) or its variable.
    x(
        "azure_storage_key",
        Secret,
        r#"(?i:AccountKey|azure[_\-]?storage[_\-]?(?:account[_\-]?)?(?:access[_\-]?)?key)["']?\s{0,3}[:=]\s{0,3}["']?([A-Za-z0-9+/]{20})"#,
        1,
        Some(validate::azure_storage_key),
        Extend::Class {
            class: base64_char,
            max: 100,
        },
    ),
    // Entra ID client secrets: `xxx8Q~` and 31-34 more (gitleaks' azure-ad-client-secret).
    x(
        "azure_client_secret",
        Secret,
        r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{8}",
        0,
        Some(validate::azure_client_secret),
        Extend::Class {
            class: azure_secret_char,
            max: 48,
        },
    ),
    // The key id of a service account's JSON key file, in text (the key itself is a
    // `private_key`); quotes may be escaped (the file inside a string).
    x(
        "gcp_service_account",
        Secret,
        r#"\\?"private_key_id\\?"\s{0,3}:\s{0,3}\\?"([0-9a-f]{16})"#,
        1,
        Some(validate::gcp_key_id),
        Extend::Class {
            class: hex,
            max: 48,
        },
    ),
    x(
        "huggingface_token",
        Secret,
        r"\b(?:hf|api_org)_[A-Za-z]{10}",
        0,
        Some(validate::huggingface_token),
        Extend::Class {
            class: alpha,
            max: 56,
        },
    ),
    x(
        "npm_token",
        Secret,
        r"\bnpm_[A-Za-z0-9]{12}",
        0,
        Some(validate::npm_token),
        Extend::Class {
            class: alnum,
            max: 56,
        },
    ),
    x(
        "pypi_token",
        Secret,
        r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{16}",
        0,
        Some(validate::pypi_token),
        Extend::Class {
            class: key_char,
            max: 1100,
        },
    ),
    // Personal, project, group, deploy, runner, CI job, trigger, feed, OAuth app, SCIM,
    // incoming-mail, agent and feature-flag tokens; routable ones carry a `.` part.
    x(
        "gitlab_token",
        Secret,
        r"\bgl(?:pat|ptt|rt|dt|ft|cbt|oas|soat|imt|agent|ffct)-[0-9A-Za-z_\-]{20}",
        0,
        Some(validate::vendor_key),
        Extend::Dotted {
            class: key_char,
            max: 330,
        },
    ),
    // API key (`SK`) and account (`AC`) SIDs: 32 hex digits. The head ends at the first digit,
    // which every match must hold (anchors.rs); a SID with no digit among its first 13 hex
    // digits ((6/16)^13, 3 in a million) is not found.
    x(
        "twilio_key",
        Secret,
        r"\b(?:SK|AC)(?:[a-f]{0,12}|[A-F]{0,12})[0-9]",
        0,
        Some(validate::twilio_sid),
        Extend::Class {
            class: hex,
            max: 48,
        },
    ),
    x(
        "sendgrid_key",
        Secret,
        r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{8}",
        0,
        Some(validate::sendgrid_key),
        Extend::Class {
            class: key_char,
            max: 80,
        },
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
        Some(validate::jwt),
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
    // After a context word, ITIN-shaped first (the more precise name), then any SSN-shaped
    // number, in every area (see `validate::ssn_in_context`); alone, dashed ITINs and SSNs of
    // issued areas only.
    d(
        "us_itin",
        Pii,
        concat!(
            r"(?:\b|_)(?i:ssns?|social[ _\-]security|itins?|tins?|taxpayer|tax[ _\-]?ids?|tax[ _\-]identification)(?:\b|_)[^0-9\n]{0,32}",
            r"\b(9[0-9]{2}[- ]?(?:5[0-9]|6[0-5]|7[0-9]|8[0-8]|9[0-24-9])[- ]?[0-9]{4})\b"
        ),
        1,
        Some(validate::itin),
    ),
    d(
        "us_ssn",
        Pii,
        concat!(
            r"(?:\b|_)(?i:ssns?|social[ _\-]security|itins?|tins?|taxpayer|tax[ _\-]?ids?|tax[ _\-]identification)(?:\b|_)[^0-9\n]{0,32}",
            r"\b([0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4})\b"
        ),
        1,
        Some(validate::ssn_in_context),
    ),
    d(
        "us_itin",
        Pii,
        r"\b9[0-9]{2}-(?:5[0-9]|6[0-5]|7[0-9]|8[0-8]|9[0-24-9])-[0-9]{4}\b",
        0,
        Some(validate::itin),
    ),
    d(
        "us_ssn",
        Pii,
        r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
        0,
        Some(validate::ssn),
    ),
    // E.164; US; European national (0 and an area code of 1-4 digits, then groups of 3-4);
    // French pairs (`06 12 34 56 78`).
    d(
        "phone",
        Pii,
        r"(?:\+[1-9][0-9]{0,2}[ .\-]?(?:\(?[0-9]{1,4}\)?[ .\-]?){1,4}[0-9]{2,4}\b|\(?\b[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}\b|\b0[1-9][0-9]{0,3}[ \-][0-9]{3,4}[ \-]?[0-9]{3,4}\b|\b0[1-9](?:[ .][0-9]{2}){4}\b)",
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
