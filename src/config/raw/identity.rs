//! `identity:`: OIDC issuers (https only, asymmetric algorithms, audiences required), service
//! accounts (by token hash, never the token) and client certificate rules.

use crate::config::at_field;
use crate::config::secret;
use crate::config::units::HumanDuration;
use crate::config::{CertMatcher, ClientCertRule, IdentityConfig, OidcIssuer, ServiceAccount};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    oidc: Vec<OidcIssuer>,
    #[serde(default)]
    service_accounts: Vec<ServiceAccount>,
    #[serde(default)]
    client_certs: Vec<ClientCertRule>,
}

impl TryFrom<RawIdentity> for IdentityConfig {
    type Error = String;
    fn try_from(r: RawIdentity) -> Result<Self, String> {
        let mut issuers = HashSet::new();
        for i in &r.oidc {
            if !issuers.insert(i.issuer.as_str()) {
                return Err(at_field(
                    "issuer",
                    format!("issuer `{}` is configured twice", i.issuer),
                ));
            }
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for a in &r.service_accounts {
            if !names.insert(a.name.as_str()) {
                return Err(at_field(
                    "service_accounts",
                    format!("service account `{}` is defined twice", a.name),
                ));
            }
            if a.token_sha256 != [0; 32] && !hashes.insert(a.token_sha256) {
                return Err(at_field("service_accounts", format!("service account `{}` has the same token_sha256 as another; create a token per account", a.name)));
            }
        }
        Ok(IdentityConfig {
            oidc: r.oidc,
            service_accounts: r.service_accounts,
            client_certs: r.client_certs,
        })
    }
}

/// Asymmetric JWS algorithms a token may use. HMAC (`HS*`) would let anyone holding the
/// published key forge tokens, and `none` is no signature: both are refused.
pub const JWS_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A `typ` as media types compare (RFC 7515 §4.1.9): case-insensitive, `application/` optional.
pub fn normalize_typ(typ: &str) -> String {
    let t = typ.trim().to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidcIssuer {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    #[serde(default)]
    subject_fallback: Vec<String>,
    #[serde(default = "default_access_token_typ")]
    access_token_typ: Vec<String>,
    #[serde(default = "default_leeway")]
    leeway: HumanDuration,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_interval: HumanDuration,
    #[serde(default = "default_jwks_min_refetch")]
    jwks_min_refetch_interval: HumanDuration,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout: HumanDuration,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
/// RFC 9068: access tokens say `typ: at+jwt`; ID tokens do not.
fn default_access_token_typ() -> Vec<String> {
    vec!["at+jwt".into()]
}
fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_jwks_min_refetch() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_fetch_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn https_url(field: &str, what: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| at_field(field, format!("{what} `{url}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(at_field(field, format!(
            "{what} `{url}` must be an https:// URL: keys fetched over plaintext could be replaced in transit"
        )));
    }
    Ok(())
}

impl TryFrom<RawOidcIssuer> for OidcIssuer {
    type Error = String;
    fn try_from(r: RawOidcIssuer) -> Result<Self, String> {
        https_url("issuer", "issuer", &r.issuer)?;
        if let Some(j) = &r.jwks_uri {
            https_url("jwks_uri", "jwks_uri", j)?;
        }
        if r.audiences.is_empty() || r.audiences.iter().any(|a| a.is_empty()) {
            return Err(at_field("audiences", format!(
                "issuer `{}`: `audiences` must list the audience(s) tokens for agentgate carry in `aud`; \
                 without it a token minted for any other application of this IdP would be accepted",
                r.issuer
            )));
        }
        let algorithms = match r.algorithms {
            None => JWS_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
            Some(list) => {
                for a in &list {
                    if !JWS_ALGORITHMS.contains(&a.as_str()) {
                        return Err(at_field(
                            "algorithms",
                            format!(
                            "issuer `{}`: algorithm `{a}` is not accepted; use asymmetric ones: {}",
                            r.issuer,
                            JWS_ALGORITHMS.join(", ")
                        ),
                        ));
                    }
                }
                if list.is_empty() {
                    return Err(at_field("algorithms", "`algorithms` is empty".into()));
                }
                list
            }
        };
        if r.groups_claim.is_empty() || r.subject_claim.is_empty() {
            return Err(at_field(
                "groups_claim",
                "claim names must not be empty".into(),
            ));
        }
        if r.subject_fallback.iter().any(|c| c.is_empty()) {
            return Err(at_field(
                "subject_fallback",
                "claim names must not be empty".into(),
            ));
        }
        if r.access_token_typ.is_empty()
            || r.access_token_typ
                .iter()
                .any(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
        {
            return Err(at_field("access_token_typ", format!(
                "issuer `{}`: `access_token_typ` lists the header `typ` values its access tokens carry: \
                 at+jwt (RFC 9068, the default), JWT, or none (no typ)",
                r.issuer
            )));
        }
        let access_token_typ = r
            .access_token_typ
            .iter()
            .map(|t| normalize_typ(t))
            .collect();
        if let Some(ca) = &r.ca_file {
            crate::tls::read_pem_certs(ca).map_err(|e| {
                at_field(
                    "ca_file",
                    format!("issuer `{}`: ca_file `{}`: {e}", r.issuer, ca.display()),
                )
            })?;
        }
        if r.leeway.0 > Duration::from_secs(300) {
            return Err(at_field(
                "leeway",
                "leeway above 5m would accept long-expired tokens".into(),
            ));
        }
        Ok(OidcIssuer {
            issuer: r.issuer,
            audiences: r.audiences,
            groups_claim: r.groups_claim,
            subject_claim: r.subject_claim,
            subject_fallback: r.subject_fallback,
            access_token_typ,
            leeway: r.leeway.0,
            algorithms,
            ca_file: r.ca_file,
            jwks_uri: r.jwks_uri,
            refresh_interval: r.jwks_refresh_interval.0.max(Duration::from_secs(1)),
            min_refetch_interval: r.jwks_min_refetch_interval.0,
            fetch_timeout: r.fetch_timeout.0.max(Duration::from_millis(100)),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceAccount {
    name: String,
    token_sha256: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    person: Option<RawPerson>,
}

/// `person:` of a service account: whose account it is, as approvals name people.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    /// The person's issuer (as the console and their tokens name them); default
    /// `service-account` for people known to this gateway only.
    #[serde(default)]
    issuer: Option<String>,
    subject: String,
}

impl TryFrom<RawServiceAccount> for ServiceAccount {
    type Error = String;
    fn try_from(r: RawServiceAccount) -> Result<Self, String> {
        if r.name.is_empty() {
            return Err(at_field("name", "service account `name` is empty".into()));
        }
        let value = secret::resolve(&r.token_sha256, secret::current_source())
            .map_err(|e| at_field("token_sha256", format!("service account `{}`: {e}", r.name)))?;
        let token_sha256 = if secret::placeholders_active() && r.token_sha256.contains("${") {
            [0; 32]
        } else {
            parse_sha256_hex(value.expose().trim()).ok_or_else(|| at_field("token_sha256", format!(
                "service account `{}`: token_sha256 must be 64 hex digits (the SHA-256 that `agentgate token create` prints), not the token itself",
                r.name
            )))?
        };
        let person = match r.person {
            None => None,
            Some(p) if p.subject.is_empty() || p.issuer.as_deref() == Some("") => {
                return Err(at_field(
                    "person",
                    format!(
                        "service account `{}`: `person` needs a `subject` (and an `issuer`, if given, that is not empty)",
                        r.name
                    ),
                ))
            }
            Some(p) => Some((
                p.issuer.unwrap_or_else(|| "service-account".into()),
                p.subject,
            )),
        };
        Ok(ServiceAccount {
            name: r.name,
            token_sha256,
            groups: r.groups,
            person,
        })
    }
}

fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertRule {
    #[serde(default)]
    subject_cn: Option<String>,
    #[serde(default)]
    san_dns: Option<String>,
    #[serde(default)]
    san_uri: Option<String>,
    #[serde(default)]
    san_email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

impl TryFrom<RawClientCertRule> for ClientCertRule {
    type Error = String;
    fn try_from(r: RawClientCertRule) -> Result<Self, String> {
        let mut matchers: Vec<CertMatcher> = [
            r.subject_cn.map(CertMatcher::SubjectCn),
            r.san_dns.map(CertMatcher::SanDns),
            r.san_uri.map(CertMatcher::SanUri),
            r.san_email.map(CertMatcher::SanEmail),
        ]
        .into_iter()
        .flatten()
        .collect();
        if matchers.len() != 1 {
            return Err(at_field("client_certs", "each client_certs rule needs exactly one of subject_cn, san_dns, san_uri, san_email".into()));
        }
        Ok(ClientCertRule {
            matcher: matchers.remove(0),
            groups: r.groups,
        })
    }
}
