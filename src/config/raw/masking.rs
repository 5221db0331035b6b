//! `masking:` and `guardrails:`: the hash key, custom detectors (compiled here so a bad regex
//! is a positioned error), masking policies per direction, and the rules that block.

use crate::config::at_field;
use crate::config::secret;
use crate::config::{Direction, Guardrail, MaskPolicy, MaskingConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMasking {
    #[serde(default)]
    hash_key: Option<String>,
    #[serde(default)]
    policies: BTreeMap<String, MaskPolicy>,
    #[serde(default)]
    custom_detectors: Vec<RawCustomDetector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomDetector {
    name: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    words: Vec<String>,
}

fn detector_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl TryFrom<RawMasking> for MaskingConfig {
    type Error = String;
    fn try_from(r: RawMasking) -> Result<Self, String> {
        let hash_key = match &r.hash_key {
            Some(t) => Some(
                secret::resolve(t, secret::current_source())
                    .map_err(|e| at_field("hash_key", format!("masking.hash_key: {e}")))?,
            ),
            None => None,
        };
        let builtin: HashSet<&str> = crate::mask::detectors::BUILTINS
            .iter()
            .map(|b| b.name)
            .collect();
        let mut names = HashSet::new();
        let mut custom = Vec::new();
        for c in r.custom_detectors {
            if !detector_name_ok(&c.name) {
                return Err(at_field("custom_detectors", format!(
                    "custom detector name `{}` must be lowercase letters, digits and _ (it is a metric label)", c.name
                )));
            }
            if builtin.contains(c.name.as_str()) || !names.insert(c.name.clone()) {
                return Err(at_field(
                    "custom_detectors",
                    format!("detector name `{}` is already used", c.name),
                ));
            }
            if c.regex.is_none() == c.words.is_empty() {
                return Err(at_field(
                    "custom_detectors",
                    format!(
                        "custom detector `{}` needs exactly one of `regex` or `words`",
                        c.name
                    ),
                ));
            }
            custom.push(crate::mask::CustomDetector {
                name: c.name,
                regex: c.regex,
                words: c.words,
            });
        }
        // Compile now so a bad or unbounded regex is a config error with its position.
        crate::mask::Engine::check_custom(&custom).map_err(|e| at_field("custom_detectors", e))?;
        Ok(MaskingConfig {
            hash_key,
            policies: r.policies,
            custom_detectors: custom,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaskPolicy {
    #[serde(default)]
    request: Option<RawRules>,
    #[serde(default)]
    response: Option<RawRules>,
    #[serde(default)]
    on_invalid_json: Option<String>,
    #[serde(default)]
    on_binary_response: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    secrets: Option<String>,
    #[serde(default)]
    pii: Option<String>,
    #[serde(default)]
    custom: Option<String>,
    #[serde(default)]
    detectors: BTreeMap<String, String>,
    #[serde(default)]
    restore_pseudonyms: Option<bool>,
}

fn action(
    field: &str,
    s: &Option<String>,
    default: crate::mask::Action,
) -> Result<crate::mask::Action, String> {
    match s {
        None => Ok(default),
        Some(a) => crate::mask::Action::parse(a).ok_or_else(|| {
            at_field(
                field,
                format!("unknown action `{a}`; write redact, hash, pseudonymize, block or allow"),
            )
        }),
    }
}

impl RawRules {
    fn rules(&self, response: bool) -> Result<crate::mask::Rules, String> {
        use crate::mask::Action::*;
        let mut detectors = BTreeMap::new();
        for (d, a) in &self.detectors {
            let a = action("detectors", &Some(a.clone()), Redact)?;
            if response && a == Pseudonymize {
                return Err(at_field(
                    "detectors",
                    "pseudonymize applies to requests; in responses use redact or hash".into(),
                ));
            }
            detectors.insert(d.clone(), a);
        }
        let rules = crate::mask::Rules {
            secrets: action("secrets", &self.secrets, Redact)?,
            pii: action(
                "pii",
                &self.pii,
                if response { Redact } else { Pseudonymize },
            )?,
            custom: action("custom", &self.custom, Redact)?,
            detectors,
        };
        if response && [rules.secrets, rules.pii, rules.custom].contains(&Pseudonymize) {
            return Err(at_field("response", "pseudonymize applies to requests; in responses use redact or hash (placeholders the request made are restored with restore_pseudonyms)".into()));
        }
        Ok(rules)
    }
}

impl TryFrom<RawMaskPolicy> for MaskPolicy {
    type Error = String;
    fn try_from(r: RawMaskPolicy) -> Result<Self, String> {
        let req = r.request.unwrap_or_default();
        let resp = r.response.unwrap_or_default();
        if req.restore_pseudonyms.is_some() {
            return Err(at_field(
                "restore_pseudonyms",
                "restore_pseudonyms belongs under `response`".into(),
            ));
        }
        let refuse_invalid_json = match r.on_invalid_json.as_deref() {
            None | Some("mask_as_text") => false,
            Some("refuse") => true,
            Some(o) => {
                return Err(at_field(
                    "on_invalid_json",
                    format!("unknown on_invalid_json `{o}`; write mask_as_text or refuse"),
                ))
            }
        };
        let pass_binary = match r.on_binary_response.as_deref() {
            None | Some("refuse") => false,
            Some("pass") => true,
            Some(o) => {
                return Err(at_field(
                    "on_binary_response",
                    format!("unknown on_binary_response `{o}`; write refuse or pass"),
                ))
            }
        };
        Ok(MaskPolicy {
            pass_binary,
            request: req.rules(false)?,
            response: resp.rules(true)?,
            restore_pseudonyms: resp.restore_pseudonyms.unwrap_or(true),
            refuse_invalid_json,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrail {
    name: String,
    direction: String,
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    deny_words: Vec<String>,
    #[serde(default = "block")]
    action: String,
    #[serde(default)]
    message: Option<String>,
}

fn block() -> String {
    "block".into()
}

impl TryFrom<RawGuardrail> for Guardrail {
    type Error = String;
    fn try_from(r: RawGuardrail) -> Result<Self, String> {
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(at_field(
                "name",
                format!(
                    "guardrail name `{}` must use letters, digits, - and _",
                    r.name
                ),
            ));
        }
        let direction = match r.direction.as_str() {
            "request" => Direction::Request,
            "response" => Direction::Response,
            o => {
                return Err(at_field(
                    "direction",
                    format!(
                        "guardrail `{}`: direction `{o}` must be request or response",
                        r.name
                    ),
                ))
            }
        };
        if r.action != "block" {
            return Err(at_field(
                "action",
                format!("guardrail `{}`: the only action is block", r.name),
            ));
        }
        if r.detectors.is_empty() && r.deny_words.is_empty() {
            return Err(at_field(
                "name",
                format!("guardrail `{}` needs `detectors` or `deny_words`", r.name),
            ));
        }
        if r.deny_words.iter().any(|w| w.trim().is_empty()) {
            return Err(at_field(
                "deny_words",
                format!("guardrail `{}`: empty deny word", r.name),
            ));
        }
        Ok(Guardrail {
            name: r.name,
            direction,
            detectors: r.detectors,
            deny_words: r.deny_words,
            message: r.message,
        })
    }
}
