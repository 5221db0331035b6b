//! Who is calling, and may they use this route. Three sources of identity:
//! - an OIDC access token (JWT) from a configured issuer, checked against its published keys;
//! - a gateway-issued service-account token, compared by SHA-256 in constant time;
//! - a client certificate verified by the listener's `client_ca`, mapped by CN or SAN.
//!
//! A bearer token comes from `Authorization: Bearer` (what the OpenAI SDK sends for its
//! `api_key`), else `x-api-key` (Anthropic SDK), else `api-key` (Azure OpenAI). When a request
//! carries both a token and a client certificate, the token decides.
//!
//! Verified JWTs are cached (by their SHA-256) until they expire or their signing key leaves the
//! issuer's key set, so the hot path does one hash and one look-up.

pub mod boring_key;
pub mod client_cert;
pub mod jwks;
pub mod jwt;
pub mod service_account;

use crate::config::{Access, ClientCertRule, IdentityConfig, ServiceAccount};
use crate::metrics;
use crate::tls::CertNames;
use http::header::{HeaderMap, AUTHORIZATION};
use jwks::Issuer;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Oidc,
    ServiceAccount,
    ClientCert,
}

/// A person as approvals count them: one name (issuer, subject) whichever channel they use —
/// the console, their own access token, or a service account mapped to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName {
    pub issuer: String,
    pub subject: String,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub subject: String,
    /// The OIDC issuer, `service-account`, or `client-cert`.
    pub issuer: String,
    pub method: AuthMethod,
    pub groups: Vec<String>,
    /// The person this caller is when deciding approvals; `None` for a machine (a service
    /// account mapped to no person, an OIDC client acting for itself, a client certificate),
    /// which may not decide.
    #[serde(skip)]
    pub person: Option<PersonName>,
}

/// Why a request was not let in; `as_str` is the `reason` label of `agentgate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingToken,
    Malformed,
    UnsupportedAlg,
    UnknownIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    InvalidClaims,
    NotAnAccessToken,
    UnknownServiceAccount,
    ClientCertUnmapped,
    KeysUnavailable,
    MissingGroup,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::MissingToken,
        Reason::Malformed,
        Reason::UnsupportedAlg,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongAudience,
        Reason::InvalidClaims,
        Reason::NotAnAccessToken,
        Reason::UnknownServiceAccount,
        Reason::ClientCertUnmapped,
        Reason::KeysUnavailable,
        Reason::MissingGroup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed_token",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::InvalidClaims => "invalid_claims",
            Reason::NotAnAccessToken => "not_an_access_token",
            Reason::UnknownServiceAccount => "unknown_service_account",
            Reason::ClientCertUnmapped => "client_cert_unmapped",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::MissingGroup => "missing_group",
        }
    }

    /// 401 for a caller who is not authenticated, 403 for one who is but may not use the
    /// route, 503 when the gateway cannot check (no issuer keys loaded).
    pub fn status(self) -> u16 {
        match self {
            Reason::MissingGroup => 403,
            Reason::KeysUnavailable => 503,
            _ => 401,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub reason: Reason,
    /// Safe to show the caller: never contains the token.
    pub description: String,
}

impl AuthError {
    pub fn new(reason: Reason, description: impl Into<String>) -> Self {
        AuthError {
            reason,
            description: description.into(),
        }
    }

    /// The `WWW-Authenticate` challenge for a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> Option<String> {
        match self.reason {
            Reason::MissingToken => Some(r#"Bearer realm="agentgate""#.to_string()),
            r if r.status() == 401 => Some(format!(
                r#"Bearer realm="agentgate", error="invalid_token", error_description="{}""#,
                self.description.replace(['"', '\\'], "'")
            )),
            _ => None,
        }
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.to_str().map_err(|_| {
            AuthError::new(Reason::Malformed, "the Authorization header is not ASCII")
        })?;
        let v = v.trim();
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::new(
                Reason::Malformed,
                "the Authorization header must use the Bearer scheme",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::new(
                Reason::MissingToken,
                "the Bearer token is empty",
            ));
        }
        return Ok(Some(token));
    }
    for name in ["x-api-key", "api-key"] {
        if let Some(v) = headers.get(name) {
            let t = v.to_str().map_err(|_| {
                AuthError::new(Reason::Malformed, format!("the {name} header is not ASCII"))
            })?;
            if !t.trim().is_empty() {
                return Ok(Some(t.trim()));
            }
        }
    }
    Ok(None)
}

/// Whether `id` may use a route with `access`.
pub fn authorize(access: &Access, id: &Identity, route: &str) -> Result<(), AuthError> {
    match access {
        Access::AnyAuthenticated => Ok(()),
        Access::Groups(want) if want.iter().any(|g| id.groups.contains(g)) => Ok(()),
        Access::Groups(want) => Err(AuthError::new(
            Reason::MissingGroup,
            format!(
                "route `{route}` requires one of the groups [{}]; caller `{}` ({}) is not in any of them",
                want.join(", "),
                id.subject,
                id.issuer
            ),
        )),
    }
}

struct Cached {
    identity: Arc<Identity>,
    /// `exp` plus leeway, seconds since the epoch.
    valid_until: u64,
    /// The issuer (index in `Authenticator::issuers`), key set and key that verified it.
    issuer: usize,
    generation: u64,
    signed_by: jwks::KeyFingerprint,
}

/// SHA-256 of a token: the cache's key, so the cache never holds a usable credential.
type TokenDigest = [u8; 32];

/// Verified JWTs until they expire, or until their signing key leaves the issuer's key set.
/// Bounded: when full, expired entries go, and if that is not enough the cache starts over (a
/// miss costs one signature check, never a wrong answer).
struct TokenCache {
    map: RwLock<HashMap<TokenDigest, Cached>>,
    capacity: usize,
}

impl TokenCache {
    fn get(
        &self,
        token: &TokenDigest,
        now: u64,
    ) -> Option<(Arc<Identity>, usize, u64, jwks::KeyFingerprint)> {
        let map = self.map.read().ok()?;
        let c = map.get(token)?;
        (now <= c.valid_until).then(|| (c.identity.clone(), c.issuer, c.generation, c.signed_by))
    }

    fn remove(&self, token: &TokenDigest) {
        if let Ok(mut map) = self.map.write() {
            map.remove(token);
        }
    }

    fn put(&self, token: TokenDigest, entry: Cached, now: u64) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.len() >= self.capacity {
            map.retain(|_, c| c.valid_until >= now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(token, entry);
    }
}

pub use crate::util::time::unix_secs as unix_now;

pub struct Authenticator {
    issuers: Vec<Arc<Issuer>>,
    accounts: Vec<ServiceAccount>,
    cert_rules: Vec<ClientCertRule>,
    cache: TokenCache,
}

impl Authenticator {
    pub fn new(cfg: &IdentityConfig) -> Result<Authenticator, String> {
        let issuers = cfg
            .oidc
            .iter()
            .map(|i| Issuer::new(i.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        for r in Reason::ALL {
            metrics::AUTH_FAILURES.with_label_values(&[r.as_str()]);
        }
        Ok(Authenticator {
            issuers,
            accounts: cfg.service_accounts.clone(),
            cert_rules: cfg.client_certs.clone(),
            cache: TokenCache {
                map: RwLock::new(HashMap::new()),
                capacity: 10_000,
            },
        })
    }

    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// `Err(message)` while some issuer's keys were never loaded.
    pub fn readiness(&self) -> Result<(), String> {
        let waiting: Vec<String> = self
            .issuers
            .iter()
            .filter(|i| i.keys().is_none())
            .map(|i| match i.last_error() {
                Some(e) => format!("keys of issuer {} not loaded yet: {e}", i.name()),
                None => format!("keys of issuer {} not loaded yet", i.name()),
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join("\n"))
        }
    }

    /// Authenticates a request from its headers and its verified client certificate.
    /// Failures are counted in `agentgate_auth_failures_total`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        cert: Option<&CertNames>,
    ) -> Result<Arc<Identity>, AuthError> {
        let result = self.authenticate_inner(headers, cert).await;
        if let Err(e) = &result {
            count_failure(e.reason);
        }
        result
    }

    async fn authenticate_inner(
        &self,
        headers: &HeaderMap,
        cert: Option<&CertNames>,
    ) -> Result<Arc<Identity>, AuthError> {
        let token = match bearer_token(headers) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return match cert {
                    Some(names) => client_cert::identify(&self.cert_rules, names).map(Arc::new),
                    None => Err(AuthError::new(
                        Reason::MissingToken,
                        "no credentials: send `Authorization: Bearer TOKEN` (the SDK's api_key) or a client certificate",
                    )),
                }
            }
            Err(e) => return Err(e),
        };
        if jwt::looks_like_jwt(token) {
            // Boxed: its state (a key fetch included) would otherwise be inlined into every
            // request's filter future, service-account requests and held ones too.
            Box::pin(self.verify_jwt(token)).await
        } else {
            service_account::identify(&self.accounts, token).map(Arc::new)
        }
    }

    /// Checks an OIDC token; a cached verdict is reused until the token expires, while the key
    /// that signed it is still published.
    pub async fn verify_jwt(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let now = unix_now();
        let digest = boring::sha::sha256(token.as_bytes());
        if let Some((id, issuer, generation, signed_by)) = self.cache.get(&digest, now) {
            if self
                .issuers
                .get(issuer)
                .is_some_and(|i| i.still_publishes(generation, &signed_by))
            {
                return Ok(id);
            }
            // Its key was rotated out (a compromised key stops here): checked again, and refused.
            self.cache.remove(&digest);
        }
        let parsed = jwt::parse(token)?;
        let iss = jwt::issuer_of(&parsed.claims)
            .ok_or_else(|| AuthError::new(Reason::InvalidClaims, "the token has no `iss` claim"))?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.name() == iss)
            .ok_or_else(|| {
                AuthError::new(
                    Reason::UnknownIssuer,
                    format!(
                        "tokens from issuer {} are not accepted",
                        jwt::printable(iss)
                    ),
                )
            })?;
        let v = issuer.verify(&parsed, now).await?;
        let identity = Arc::new(v.identity);
        self.cache.put(
            digest,
            Cached {
                identity: identity.clone(),
                valid_until: v.valid_until,
                issuer: index,
                generation: v.generation,
                signed_by: v.signed_by,
            },
            now,
        );
        Ok(identity)
    }
}

/// Background service: loads every issuer's keys at start-up (retrying with backoff until it
/// works) and then refreshes them every `jwks_refresh_interval`.
/// Refreshes one issuer's signing keys for as long as a configuration uses it: the loop holds
/// the issuer weakly and ends once the last configuration (and request) holding it is gone, so
/// an issuer a reload removed is no longer fetched. Failures back off from 0.5 s to 30 s
/// once keys were loaded; before that (readiness waits for them) they are retried every 2 s.
pub async fn refresh_while_used(issuer: std::sync::Weak<Issuer>) {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        let Some(i) = issuer.upgrade() else { return };
        let wait = match i.refresh().await {
            Ok(_) => {
                backoff = std::time::Duration::from_millis(500);
                i.config().refresh_interval
            }
            Err(_) => {
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                // Until its keys loaded once (readiness waits for them), every 2 s at most.
                let cap = match i.keys() {
                    None => std::time::Duration::from_secs(2),
                    Some(_) => backoff,
                };
                backoff.min(cap).min(i.config().refresh_interval)
            }
        };
        drop(i);
        tokio::time::sleep(wait).await;
    }
}

/// Starts `refresh_while_used` for every issuer of `auth` (a reloaded configuration's).
pub fn spawn_key_refresh(auth: &Authenticator) {
    for issuer in auth.issuers() {
        tokio::spawn(refresh_while_used(Arc::downgrade(issuer)));
    }
}

/// The start-up configuration's key refresh, as a background service (the runtime exists only
/// once the server runs); it holds the issuers weakly, like a reload's.
pub struct KeyRefresher(Vec<std::sync::Weak<Issuer>>);

impl KeyRefresher {
    pub fn of(auth: &Authenticator) -> KeyRefresher {
        KeyRefresher(auth.issuers().iter().map(Arc::downgrade).collect())
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let tasks: Vec<_> = self
            .0
            .iter()
            .map(|i| tokio::spawn(refresh_while_used(i.clone())))
            .collect();
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}

pub fn count_failure(reason: Reason) {
    metrics::AUTH_FAILURES
        .with_label_values(&[reason.as_str()])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn id(groups: &[&str]) -> Identity {
        Identity {
            subject: "s".into(),
            issuer: "i".into(),
            method: AuthMethod::Oidc,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            person: None,
        }
    }

    #[test]
    fn authorize_table() {
        let agents = Access::Groups(vec!["agents".into(), "ops".into()]);
        let table = [
            (&Access::AnyAuthenticated, id(&[]), true),
            (&agents, id(&["ops"]), true),
            (&agents, id(&["agents", "x"]), true),
            (&agents, id(&["x"]), false),
            (&agents, id(&[]), false),
        ];
        for (access, who, ok) in table {
            let got = authorize(access, &who, "r");
            assert_eq!(got.is_ok(), ok, "{access:?} {:?}", who.groups);
            if let Err(e) = got {
                assert_eq!(e.reason.status(), 403);
                assert!(e.description.contains("route `r`"));
            }
        }
    }

    #[test]
    fn bearer_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h).unwrap(), None);
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(bearer_token(&h).unwrap(), Some("k1"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  t1 "));
        assert_eq!(bearer_token(&h).unwrap(), Some("t1"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dTpw"));
        assert_eq!(bearer_token(&h).unwrap_err().reason, Reason::Malformed);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h).unwrap_err().reason, Reason::MissingToken);
    }

    #[test]
    fn challenge_never_breaks_quoting() {
        let e = AuthError::new(Reason::Expired, r#"a "quoted" \ thing"#);
        let c = e.challenge().unwrap();
        assert!(c.starts_with(r#"Bearer realm="agentgate", error="invalid_token""#));
        assert_eq!(c.matches('"').count(), 6, "{c}");
        assert_eq!(
            AuthError::new(Reason::MissingToken, "x")
                .challenge()
                .unwrap(),
            r#"Bearer realm="agentgate""#
        );
        assert!(AuthError::new(Reason::MissingGroup, "x")
            .challenge()
            .is_none());
    }

    fn entry(who: &Arc<Identity>, valid_until: u64) -> Cached {
        Cached {
            identity: who.clone(),
            valid_until,
            issuer: 0,
            generation: 0,
            signed_by: [0; 32],
        }
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let c = TokenCache {
            map: RwLock::new(HashMap::new()),
            capacity: 2,
        };
        let who = Arc::new(id(&["a"]));
        let [t1, t2, t3] = [[1u8; 32], [2; 32], [3; 32]];
        c.put(t1, entry(&who, 100), 0);
        assert!(c.get(&t1, 100).is_some());
        assert!(c.get(&t1, 101).is_none());
        c.put(t2, entry(&who, 50), 0);
        c.put(t3, entry(&who, 200), 60); // full: t2 expired at 60 and goes
        assert!(c.get(&t1, 60).is_some() && c.get(&t3, 60).is_some());
        assert!(c.map.read().unwrap().len() <= 2);
    }

    mod signed {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use boring::ec::{EcGroup, EcKey};
        use boring::nid::Nid;
        use boring::pkey::Private;

        pub const ISSUER: &str = "https://idp.test.invalid";

        pub struct Key {
            kid: String,
            key: EcKey<Private>,
        }

        fn b64(b: &[u8]) -> String {
            URL_SAFE_NO_PAD.encode(b)
        }

        impl Key {
            pub fn new(kid: &str) -> Key {
                let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
                Key {
                    kid: kid.into(),
                    key: EcKey::generate(&group).unwrap(),
                }
            }

            pub fn jwk(&self) -> serde_json::Value {
                let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
                let (mut x, mut y) = (
                    boring::bn::BigNum::new().unwrap(),
                    boring::bn::BigNum::new().unwrap(),
                );
                let mut ctx = boring::bn::BigNumContext::new().unwrap();
                self.key
                    .public_key()
                    .affine_coordinates_gfp(&group, &mut x, &mut y, &mut ctx)
                    .unwrap();
                serde_json::json!({"kty": "EC", "kid": self.kid, "alg": "ES256", "use": "sig", "crv": "P-256",
                    "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())})
            }

            /// An RFC 9068 access token for `sub`, valid for an hour.
            pub fn token(&self, sub: &str) -> String {
                let now = super::super::unix_now();
                let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "at+jwt"});
                let claims = serde_json::json!({"iss": ISSUER, "aud": "agentgate", "sub": sub,
                    "iat": now, "exp": now + 3600, "groups": ["agents"]});
                let input = format!(
                    "{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes())
                );
                let sig = boring::ecdsa::EcdsaSig::sign(
                    &boring::sha::sha256(input.as_bytes()),
                    &self.key,
                )
                .unwrap();
                let mut raw = sig.r().to_vec_padded(32).unwrap();
                raw.extend(sig.s().to_vec_padded(32).unwrap());
                format!("{input}.{}", b64(&raw))
            }
        }

        pub fn jwks(keys: &[&Key]) -> String {
            serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
                .to_string()
        }
    }

    fn authenticator() -> Authenticator {
        let issuer = crate::config::OidcIssuer {
            issuer: signed::ISSUER.into(),
            audiences: vec!["agentgate".into()],
            groups_claim: "groups".into(),
            subject_claim: "sub".into(),
            subject_fallback: Vec::new(),
            access_token_typ: vec!["at+jwt".into()],
            leeway: std::time::Duration::from_secs(5),
            algorithms: vec!["ES256".into()],
            ca_file: None,
            // Nothing listens there: a fetch for an unknown key fails at once, keeping the set.
            jwks_uri: Some("https://127.0.0.1:1/jwks".into()),
            refresh_interval: std::time::Duration::from_secs(600),
            min_refetch_interval: std::time::Duration::from_secs(3600),
            fetch_timeout: std::time::Duration::from_secs(2),
        };
        Authenticator::new(&IdentityConfig {
            oidc: vec![issuer],
            service_accounts: Vec::new(),
            client_certs: Vec::new(),
        })
        .unwrap()
    }

    /// Issue 29: a verdict stayed cached until `exp` after its signing key left the issuer's
    /// key set, so rotating out a compromised key did not stop its tokens. And the cache held
    /// tokens themselves, usable credentials, as its keys.
    #[tokio::test]
    async fn a_key_set_that_drops_a_key_ends_the_verdicts_it_signed() {
        let (old, kept, new) = (
            signed::Key::new("old"),
            signed::Key::new("kept"),
            signed::Key::new("new"),
        );
        let auth = authenticator();
        let issuer = auth.issuers()[0].clone();
        issuer.install_keys(&signed::jwks(&[&old, &kept])).unwrap();
        let (by_old, by_kept) = (old.token("by-old"), kept.token("by-kept"));
        assert_eq!(auth.verify_jwt(&by_old).await.unwrap().subject, "by-old");
        assert_eq!(auth.verify_jwt(&by_kept).await.unwrap().subject, "by-kept");
        {
            let map = auth.cache.map.read().unwrap();
            let mut keys: Vec<_> = map.keys().copied().collect();
            keys.sort();
            let mut want = vec![
                boring::sha::sha256(by_old.as_bytes()),
                boring::sha::sha256(by_kept.as_bytes()),
            ];
            want.sort();
            assert_eq!(keys, want, "the cache is keyed by the tokens' SHA-256");
        }
        // The issuer rotates `old` out (a refresh installs the new set).
        issuer.install_keys(&signed::jwks(&[&kept, &new])).unwrap();
        let err = auth.verify_jwt(&by_old).await.unwrap_err();
        assert_eq!(err.reason, Reason::UnknownKey, "{}", err.description);
        let digest = boring::sha::sha256(by_old.as_bytes());
        assert!(
            !auth.cache.map.read().unwrap().contains_key(&digest),
            "the verdict was evicted"
        );
        // Verdicts of keys still published stay (served from the cache, no signature check).
        assert_eq!(auth.verify_jwt(&by_kept).await.unwrap().subject, "by-kept");
        assert_eq!(
            auth.verify_jwt(&new.token("by-new")).await.unwrap().subject,
            "by-new"
        );
        assert_eq!(auth.verify_jwt(&by_kept).await.unwrap().subject, "by-kept");
    }
}
