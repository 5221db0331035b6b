//! JWT checks (JWS compact serialization, RFC 7515/7519), pure: bytes and a clock in, a verdict
//! out. Signatures are checked with `openidconnect`'s JSON Web Key implementation.

use super::boring_key::BoringKey;
use super::{AuthError, Reason};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyUse};
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any decoding (headers are bounded anyway).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token split and decoded, not yet verified.
pub struct Unverified<'a> {
    pub alg: String,
    pub kid: Option<String>,
    /// The header's `typ` (RFC 7519 §5.1), when it has one.
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Whether a bearer value has the shape of a JWS compact token (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

fn malformed(why: &str) -> AuthError {
    AuthError::new(Reason::Malformed, format!("malformed token: {why}"))
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(&format!("the {what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(malformed(&format!("the {what} is not a JSON object"))),
    }
}

pub fn parse(token: &str) -> Result<Unverified<'_>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "not three dot-separated parts (JWE tokens are not supported)",
        ));
    };
    let header = decode_json(h, "header")?;
    if header.contains_key("crit") {
        return Err(malformed(
            "the header has `crit` extensions, which are not supported",
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(malformed("the header has no `alg`")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("`kid` is not a string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(malformed("`typ` is not a string")),
    };
    let claims = decode_json(p, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("the signature is not base64url"))?;
    Ok(Unverified {
        alg,
        kid,
        typ,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// The JWS algorithm, if it is one of `allowed` (asymmetric only, see `config::JWS_ALGORITHMS`).
pub fn algorithm(alg: &str, allowed: &[String]) -> Result<CoreJwsSigningAlgorithm, AuthError> {
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::new(
            Reason::UnsupportedAlg,
            "unsigned token (alg none) refused",
        ));
    }
    if !allowed.iter().any(|a| a == alg) {
        return Err(AuthError::new(
            Reason::UnsupportedAlg,
            format!(
                "token algorithm {} is not accepted (accepted: {})",
                printable(alg),
                allowed.join(", ")
            ),
        ));
    }
    serde_json::from_value(Value::String(alg.to_string()))
        .map_err(|_| AuthError::new(Reason::UnsupportedAlg, "unknown token algorithm"))
}

/// Whether `key` may verify a signature made with `alg`: a signing key (or one without `use`)
/// whose own `alg`, when it states one, is the token's. The key type must match too
/// (`verify_signature` checks that), so an RSA key never verifies an HMAC signature.
pub fn key_fits(key: &CoreJsonWebKey, alg: &CoreJwsSigningAlgorithm) -> bool {
    let use_ok = key.key_use().is_none_or(|u| u.allows_signature());
    let alg_ok = match key.signing_alg() {
        JsonWebKeyAlgorithm::Algorithm(a) => a == alg,
        JsonWebKeyAlgorithm::Unspecified => true,
        JsonWebKeyAlgorithm::Unsupported => false,
    };
    use_ok && alg_ok
}

/// Checks the signature with BoringSSL when the key has a BoringSSL form (RSA, P-256, P-384),
/// else with `openidconnect` (EdDSA).
pub fn verify_signature(
    key: &CoreJsonWebKey,
    fast: Option<&BoringKey>,
    alg: &CoreJwsSigningAlgorithm,
    token: &Unverified<'_>,
) -> Result<(), AuthError> {
    let refused = || AuthError::new(Reason::BadSignature, "signature verification failed");
    if !key_fits(key, alg) {
        return Err(AuthError::new(
            Reason::BadSignature,
            "the token's key cannot verify its algorithm",
        ));
    }
    match fast {
        Some(k) if k.verify(alg, token.signing_input, &token.signature) => Ok(()),
        Some(_) => Err(refused()),
        None => key
            .verify_signature(alg, token.signing_input, &token.signature)
            .map_err(|_| refused()),
    }
}

/// What an issuer requires of a token's claims.
pub struct ClaimRules<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub leeway_secs: u64,
    pub groups_claim: &'a str,
    pub subject_claim: &'a str,
    /// Claims naming the caller when `subject_claim` is absent (`client_id`, `azp`), in order;
    /// empty: such a token is refused.
    pub subject_fallback: &'a [String],
}

/// The identity a token's claims carry, after they passed `ClaimRules`.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub subject: String,
    /// The token names a client acting for itself, not a person: its subject came from a
    /// `subject_fallback` claim, or equals its `client_id` (RFC 9068 §2.2, client credentials).
    pub is_client: bool,
    pub groups: Vec<String>,
    /// `exp` (seconds since the epoch).
    pub expires: u64,
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map(|f| Some(f as u64))
            .ok_or_else(|| {
                AuthError::new(
                    Reason::InvalidClaims,
                    format!("`{name}` is not a valid time"),
                )
            }),
        Some(_) => Err(AuthError::new(
            Reason::InvalidClaims,
            format!("`{name}` is not a number"),
        )),
    }
}

/// Checks `iss`, `exp`, `nbf`, `iat`, `aud` at time `now` (seconds) and reads subject and groups.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: u64,
) -> Result<Checked, AuthError> {
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(AuthError::new(
            Reason::UnknownIssuer,
            "the token's issuer does not match",
        ));
    }
    let leeway = rules.leeway_secs;
    let exp = numeric(claims, "exp")?
        .ok_or_else(|| AuthError::new(Reason::InvalidClaims, "the token has no `exp`"))?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthError::new(
            Reason::Expired,
            format!("the token expired {} s ago", now - exp),
        ));
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(AuthError::new(
                Reason::NotYetValid,
                format!("the token is not valid for another {} s (nbf)", nbf - now),
            ));
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if now.saturating_add(leeway) < iat {
            return Err(AuthError::new(
                Reason::NotYetValid,
                "the token was issued in the future (iat); check the clocks",
            ));
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.iter().any(|w| w == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| rules.audiences.iter().any(|w| w == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::new(
            Reason::WrongAudience,
            format!(
                "the token's audience is not one of {}",
                rules.audiences.join(", ")
            ),
        ));
    }
    let by_subject_claim = claim(claims, rules.subject_claim)
        .and_then(Value::as_str)
        .is_some();
    let subject = std::iter::once(rules.subject_claim)
        .chain(rules.subject_fallback.iter().map(String::as_str))
        .find_map(|c| claim(claims, c).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            let fallback = if rules.subject_fallback.is_empty() {
                format!(
                    "; issuer {} names callers by `{}` only (its `subject_fallback` is empty)",
                    rules.issuer, rules.subject_claim
                )
            } else {
                format!(" nor any of `{}`", rules.subject_fallback.join("`, `"))
            };
            AuthError::new(
                Reason::InvalidClaims,
                format!(
                    "the token has no `{}` claim naming the caller{fallback}",
                    rules.subject_claim
                ),
            )
        })?
        .to_string();
    let groups = match claim(claims, rules.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => {
            return Err(AuthError::new(
                Reason::InvalidClaims,
                format!(
                    "claim `{}` is neither a list of groups nor a string",
                    rules.groups_claim
                ),
            ))
        }
    };
    let is_client = !by_subject_claim
        || claims.get("client_id").and_then(Value::as_str) == Some(subject.as_str());
    Ok(Checked {
        is_client,
        subject,
        groups,
        expires: exp,
    })
}

/// Claims only an ID token carries (OpenID Connect Core §2, §3.3.2.11): a token with one was
/// minted for a client to learn who signed in, not for an API.
const ID_TOKEN_CLAIMS: [&str; 3] = ["nonce", "at_hash", "c_hash"];

/// Keycloak's own `typ` claim of its tokens that are not access tokens.
const NOT_ACCESS_TYPES: [&str; 4] = ["ID", "Refresh", "Logout", "Offline"];

/// Whether a token is an access token, not an ID token or another JWT its issuer signs (logout
/// token, DPoP proof, security event): the header's `typ` must be one of `accepted` (normalized
/// by `config::normalize_typ`; `none` stands for no `typ`), and no claim only ID tokens carry may be in
/// it. RFC 9068 access tokens say `at+jwt`; ID tokens say `JWT` or nothing.
pub fn check_access_token(
    typ: Option<&str>,
    claims: &Map<String, Value>,
    accepted: &[String],
    issuer: &str,
) -> Result<(), AuthError> {
    let refused = |why: String| AuthError::new(Reason::NotAnAccessToken, why);
    let got = typ.map_or_else(|| "none".to_string(), crate::config::normalize_typ);
    if !accepted.contains(&got) {
        let shown = typ.map_or_else(
            || "no `typ`".to_string(),
            |t| format!("typ {}", printable(t)),
        );
        return Err(refused(format!(
            "the token is not an access token: its header has {shown}, and issuer {issuer} accepts \
             only typ {} (RFC 9068); an ID token is not an API credential",
            accepted.join(", ")
        )));
    }
    if let Some(c) = ID_TOKEN_CLAIMS.iter().find(|c| claims.contains_key(**c)) {
        return Err(refused(format!(
            "the token carries `{c}`, which only ID tokens carry: send an access token, not an ID token"
        )));
    }
    if let Some(Value::String(t)) = claims.get("typ") {
        if NOT_ACCESS_TYPES.iter().any(|n| n.eq_ignore_ascii_case(t)) {
            return Err(refused(format!(
                "the token's `typ` claim says {}: send an access token",
                printable(t)
            )));
        }
    }
    Ok(())
}

/// A claim by its literal name (`https://example.com/groups`), else by dotted path
/// (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut at = claims.get(parts.next()?)?;
    for p in parts {
        at = at.as_object()?.get(p)?;
    }
    Some(at)
}

/// The token's `iss` for choosing the issuer, before any check (never trusted on its own).
pub fn issuer_of(claims: &Map<String, Value>) -> Option<&str> {
    claims.get("iss").and_then(Value::as_str)
}

/// A value from an untrusted token, safe to put in a message: short and printable.
pub fn printable(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    format!("`{clean}`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules<'a>(aud: &'a [String]) -> ClaimRules<'a> {
        ClaimRules {
            issuer: "https://idp.example",
            audiences: aud,
            leeway_secs: 30,
            groups_claim: "realm_access.roles",
            subject_claim: "sub",
            subject_fallback: &[],
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claim_table() {
        let aud = vec!["agentgate".to_string()];
        let now = 1_000_000;
        let ok = json!({"iss": "https://idp.example", "aud": "agentgate", "exp": now + 60, "sub": "a",
                        "realm_access": {"roles": ["agents", "x"]}});
        let base = claims(ok.clone());
        let checked = check_claims(&base, &rules(&aud), now).unwrap();
        assert_eq!(checked.subject, "a");
        assert_eq!(checked.groups, vec!["agents", "x"]);
        let table: Vec<(&str, Value, Option<Reason>)> = vec![
            (
                "expired beyond leeway",
                json!({"exp": now - 31}),
                Some(Reason::Expired),
            ),
            ("expired within leeway", json!({"exp": now - 29}), None),
            ("no exp", json!({"exp": null}), Some(Reason::InvalidClaims)),
            (
                "exp string",
                json!({"exp": "soon"}),
                Some(Reason::InvalidClaims),
            ),
            (
                "nbf future",
                json!({"nbf": now + 31}),
                Some(Reason::NotYetValid),
            ),
            ("nbf within leeway", json!({"nbf": now + 29}), None),
            (
                "iat future",
                json!({"iat": now + 120}),
                Some(Reason::NotYetValid),
            ),
            (
                "wrong aud",
                json!({"aud": "other"}),
                Some(Reason::WrongAudience),
            ),
            ("aud list", json!({"aud": ["other", "agentgate"]}), None),
            (
                "aud list without",
                json!({"aud": ["other"]}),
                Some(Reason::WrongAudience),
            ),
            ("no aud", json!({"aud": null}), Some(Reason::WrongAudience)),
            (
                "wrong iss",
                json!({"iss": "https://evil.example"}),
                Some(Reason::UnknownIssuer),
            ),
            (
                "no sub, client_id, no fallback configured",
                json!({"sub": null, "client_id": "c", "azp": "c"}),
                Some(Reason::InvalidClaims),
            ),
            (
                "no subject at all",
                json!({"sub": null}),
                Some(Reason::InvalidClaims),
            ),
            (
                "groups not list",
                json!({"realm_access": {"roles": 5}}),
                Some(Reason::InvalidClaims),
            ),
        ];
        for (name, patch, want) in table {
            let mut c = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
            let got = check_claims(&c, &rules(&aud), now).err().map(|e| e.reason);
            assert_eq!(got, want, "{name}");
        }
    }

    /// A token without its subject claim names nobody: `client_id` / `azp` stand in for it only
    /// where the issuer's `subject_fallback` says so, in that order (issue 29).
    #[test]
    fn the_subject_falls_back_only_as_configured() {
        let aud = vec!["agentgate".to_string()];
        let c = claims(
            json!({"iss": "https://idp.example", "aud": "agentgate", "exp": 10,
                              "client_id": "cid", "azp": "azp-1"}),
        );
        let err = check_claims(&c, &rules(&aud), 0).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidClaims);
        assert!(
            err.description.contains("no `sub` claim")
                && err.description.contains("subject_fallback"),
            "{}",
            err.description
        );
        let both = ["client_id".to_string(), "azp".to_string()];
        let azp = ["azp".to_string()];
        let mut r = rules(&aud);
        r.subject_fallback = &both;
        let by_fallback = check_claims(&c, &r, 0).unwrap();
        assert_eq!(by_fallback.subject, "cid");
        assert!(
            by_fallback.is_client,
            "named by a fallback: a client, not a person"
        );
        r.subject_fallback = &azp;
        assert_eq!(check_claims(&c, &r, 0).unwrap().subject, "azp-1");
        let mut with_sub = c.clone();
        with_sub.insert("sub".into(), json!("person"));
        let person = check_claims(&with_sub, &r, 0).unwrap();
        assert_eq!(
            (person.subject.as_str(), person.is_client),
            ("person", false)
        );
        // RFC 9068 §2.2: a client-credentials token's `sub` is its `client_id`.
        with_sub.insert("sub".into(), json!("cid"));
        assert!(check_claims(&with_sub, &r, 0).unwrap().is_client);
        with_sub.insert("sub".into(), json!(""));
        assert_eq!(
            check_claims(&with_sub, &r, 0).err().map(|e| e.reason),
            Some(Reason::InvalidClaims),
            "an empty `sub` is not replaced by a fallback"
        );
    }

    /// ID tokens (and other JWTs an issuer signs) are not access tokens: `typ` must be one the
    /// issuer's access tokens carry, and claims only ID tokens carry are refused (issue 29).
    #[test]
    fn only_access_tokens_are_accepted() {
        let strict = vec!["at+jwt".to_string()];
        let lenient = vec!["at+jwt".to_string(), "jwt".to_string(), "none".to_string()];
        let plain = claims(json!({"sub": "a"}));
        // (case, header typ, extra claims, accepted typ values, accepted?)
        type Case<'a> = (&'a str, Option<&'a str>, Value, &'a [String], bool);
        let table: Vec<Case> = vec![
            ("RFC 9068", Some("at+jwt"), json!({}), &strict, true),
            (
                "RFC 9068 media type",
                Some("application/at+jwt"),
                json!({}),
                &strict,
                true,
            ),
            ("case", Some("AT+JWT"), json!({}), &strict, true),
            ("ID token typ", Some("JWT"), json!({}), &strict, false),
            ("no typ", None, json!({}), &strict, false),
            (
                "logout token",
                Some("logout+jwt"),
                json!({}),
                &lenient,
                false,
            ),
            ("DPoP proof", Some("dpop+jwt"), json!({}), &lenient, false),
            ("JWT where allowed", Some("JWT"), json!({}), &lenient, true),
            ("no typ where allowed", None, json!({}), &lenient, true),
            (
                "nonce",
                Some("at+jwt"),
                json!({"nonce": "n"}),
                &strict,
                false,
            ),
            (
                "nonce, lenient",
                Some("JWT"),
                json!({"nonce": "n"}),
                &lenient,
                false,
            ),
            ("at_hash", None, json!({"at_hash": "h"}), &lenient, false),
            ("c_hash", None, json!({"c_hash": "h"}), &lenient, false),
            (
                "Keycloak ID",
                Some("JWT"),
                json!({"typ": "ID"}),
                &lenient,
                false,
            ),
            (
                "Keycloak Bearer",
                Some("JWT"),
                json!({"typ": "Bearer"}),
                &lenient,
                true,
            ),
        ];
        for (name, typ, extra, accepted, ok) in table {
            let mut c = plain.clone();
            c.extend(extra.as_object().unwrap().clone());
            let got = check_access_token(typ, &c, accepted, "https://idp.example");
            match got {
                Ok(()) => assert!(ok, "{name}: accepted"),
                Err(e) => {
                    assert!(!ok, "{name}: refused: {}", e.description);
                    assert_eq!(e.reason, Reason::NotAnAccessToken, "{name}");
                    assert!(
                        e.description.contains("access token"),
                        "{name}: {}",
                        e.description
                    );
                }
            }
        }
    }

    #[test]
    fn groups_from_literal_name_string_and_missing() {
        let c = claims(
            json!({"https://ex.com/groups": ["a"], "scope": "read write", "g": {"h": ["z"]}}),
        );
        assert_eq!(claim(&c, "https://ex.com/groups"), Some(&json!(["a"])));
        assert_eq!(claim(&c, "g.h"), Some(&json!(["z"])));
        assert_eq!(claim(&c, "g.missing"), None);
        let aud = vec!["x".to_string()];
        let mut r = rules(&aud);
        r.groups_claim = "scope";
        let full = claims(
            json!({"iss": "https://idp.example", "aud": "x", "exp": 10, "sub": "s", "scope": "read write"}),
        );
        assert_eq!(
            check_claims(&full, &r, 0).unwrap().groups,
            vec!["read", "write"]
        );
        r.groups_claim = "absent";
        assert!(check_claims(&full, &r, 0).unwrap().groups.is_empty());
    }

    #[test]
    fn parse_table() {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let h = enc(json!({"alg": "RS256", "kid": "k1"}));
        let p = enc(json!({"iss": "i"}));
        let good = format!("{h}.{p}.c2ln");
        let t = parse(&good).unwrap();
        assert_eq!((t.alg.as_str(), t.kid.as_deref()), ("RS256", Some("k1")));
        assert_eq!(t.signing_input, format!("{h}.{p}").as_bytes());
        assert_eq!(t.signature, b"sig");
        let crit = enc(json!({"alg": "RS256", "crit": ["exp"]}));
        let bad = [
            format!("{h}.{p}"),
            format!("{h}.{p}.c2ln.x"),
            format!("{h}.!!.c2ln"),
            format!("{}.{p}.c2ln", enc(json!(["alg"]))),
            format!("{}.{p}.c2ln", enc(json!({"kid": "k"}))),
            format!("{crit}.{p}.c2ln"),
            format!("{}.{p}.c2ln", enc(json!({"alg": "RS256", "typ": 9}))),
            format!("{h}.{p}.{}", "A".repeat(MAX_TOKEN_LEN)),
        ];
        for b in bad {
            assert_eq!(
                parse(&b).err().map(|e| e.reason),
                Some(Reason::Malformed),
                "{b:.60}"
            );
        }
    }

    #[test]
    fn algorithms_refused() {
        let allowed: Vec<String> = crate::config::JWS_ALGORITHMS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(algorithm("RS256", &allowed).is_ok());
        assert!(algorithm("ES256", &allowed).is_ok());
        for bad in ["none", "NONE", "HS256", "HS512", "RS1", ""] {
            assert_eq!(
                algorithm(bad, &allowed).err().map(|e| e.reason),
                Some(Reason::UnsupportedAlg),
                "{bad}"
            );
        }
        assert!(algorithm("ES256", &["RS256".to_string()]).is_err());
    }

    #[test]
    fn rsa_key_never_verifies_hmac() {
        // An RSA public key used as an HMAC secret (the classic confusion) must fail even when
        // the HMAC is computed correctly over the key's bytes.
        let jwk: CoreJsonWebKey = serde_json::from_value(json!({
            "kty": "RSA", "kid": "k", "e": "AQAB",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"
        }))
        .unwrap();
        let hs256: CoreJwsSigningAlgorithm = serde_json::from_value(json!("HS256")).unwrap();
        assert!(!key_fits(&jwk, &hs256) || jwk.verify_signature(&hs256, b"x", b"y").is_err());
        let t = Unverified {
            alg: "HS256".into(),
            kid: None,
            typ: None,
            claims: Map::new(),
            signing_input: b"a.b",
            signature: vec![0; 32],
        };
        assert!(verify_signature(&jwk, None, &hs256, &t).is_err());
        let fast = BoringKey::from_jwk(&jwk).expect("an RSA JWK has a BoringSSL form");
        assert!(verify_signature(&jwk, Some(&fast), &hs256, &t).is_err());
    }
}
