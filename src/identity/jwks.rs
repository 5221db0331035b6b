//! One OIDC issuer: its published keys (discovery, then JWKS), kept fresh in the background,
//! fetched again (rate-limited) when a token names a key the gateway has not seen, and kept
//! when the IdP is unreachable.

use super::boring_key::BoringKey;
use super::jwt::{self, ClaimRules, Unverified};
use super::{AuthError, AuthMethod, Identity, Reason};
use crate::config::OidcIssuer;
use crate::metrics;
use crate::upstream::client::Fetcher;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::{IssuerUrl, JsonWebKey, JsonWebKeySetUrl};
use pingora_prometheus::prometheus::IntCounter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// SHA-256 of a key as the gateway reads it (its re-serialized JWK): names the key that signed
/// a cached verdict, so a key set that no longer holds it ends the verdict.
pub type KeyFingerprint = [u8; 32];

/// Numbers key sets: a verdict made under the current set needs no look-up to stay valid.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub struct KeySet {
    /// Each key as published, its BoringSSL form when it has one, and its fingerprint.
    keys: Vec<(CoreJsonWebKey, Option<BoringKey>, KeyFingerprint)>,
    generation: u64,
}

fn fingerprint(k: &CoreJsonWebKey) -> KeyFingerprint {
    boring::sha::sha256(&serde_json::to_vec(k).unwrap_or_default())
}

impl KeySet {
    fn new(keys: &[CoreJsonWebKey]) -> KeySet {
        KeySet {
            keys: keys
                .iter()
                .map(|k| (k.clone(), BoringKey::from_jwk(k), fingerprint(k)))
                .collect(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether the key with this fingerprint is still published.
    fn holds(&self, key: &KeyFingerprint) -> bool {
        self.keys.iter().any(|(_, _, f)| f == key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that may have signed a token with this `kid` (all fitting keys when it has none).
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: &'a openidconnect::core::CoreJwsSigningAlgorithm,
    ) -> impl Iterator<Item = &'a (CoreJsonWebKey, Option<BoringKey>, KeyFingerprint)> + 'a {
        self.keys.iter().filter(move |(k, _, _)| {
            let kid_ok = match kid {
                Some(want) => k.key_id().is_some_and(|id| id.as_str() == want),
                None => true,
            };
            kid_ok && jwt::key_fits(k, alg)
        })
    }
}

pub struct Issuer {
    cfg: OidcIssuer,
    fetcher: Fetcher,
    keys: RwLock<Option<Arc<KeySet>>>,
    jwks_uri: Mutex<Option<JsonWebKeySetUrl>>,
    last_error: Mutex<Option<String>>,
    /// When keys were last fetched (or tried); also makes fetches single-flight.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    refresh_ok: IntCounter,
    refresh_err: IntCounter,
}

/// An error and its causes on one line (openidconnect's errors keep the detail in `source`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Issuer {
    pub fn new(cfg: OidcIssuer) -> Result<Issuer, String> {
        IssuerUrl::new(cfg.issuer.clone())
            .map_err(|e| format!("issuer `{}` is not a URL: {e}", cfg.issuer))?;
        let jwks_uri = match &cfg.jwks_uri {
            Some(u) => Some(
                JsonWebKeySetUrl::new(u.clone())
                    .map_err(|e| format!("jwks_uri `{u}` is not a URL: {e}"))?,
            ),
            None => None,
        };
        let counter =
            |result| metrics::JWKS_REFRESH.with_label_values(&[cfg.issuer.as_str(), result]);
        Ok(Issuer {
            fetcher: Fetcher::new(cfg.ca_file.clone(), cfg.fetch_timeout),
            refresh_ok: counter("ok"),
            refresh_err: counter("error"),
            cfg,
            keys: RwLock::new(None),
            jwks_uri: Mutex::new(jwks_uri),
            last_error: Mutex::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.issuer
    }

    pub fn config(&self) -> &OidcIssuer {
        &self.cfg
    }

    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok()?.clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.clone()
    }

    /// Installs keys from a JWKS document without fetching (benchmarks and tests).
    #[doc(hidden)]
    pub fn install_keys(&self, jwks_json: &str) -> Result<usize, String> {
        let set: CoreJsonWebKeySet = serde_json::from_str(jwks_json).map_err(|e| e.to_string())?;
        let n = set.keys().len();
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::new(KeySet::new(set.keys())));
        }
        Ok(n)
    }

    /// Fetches the keys now (the background refresher); keeps the old ones on failure.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_attempt.lock().await;
        *last = Some(Instant::now());
        self.load().await
    }

    /// Fetches the keys again unless that happened less than `min_refetch_interval` ago.
    /// Concurrent callers wait for one fetch instead of starting their own.
    async fn refetch_if_allowed(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.load().await;
    }

    async fn load(&self) -> Result<usize, String> {
        let result = self.fetch().await;
        match &result {
            Ok(set) => {
                let n = set.keys().len();
                if let Ok(mut k) = self.keys.write() {
                    *k = Some(Arc::new(KeySet::new(set.keys())));
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                self.refresh_ok.inc();
                log::info!("issuer {}: loaded {n} signing keys", self.cfg.issuer);
                Ok(n)
            }
            Err(e) => {
                self.refresh_err.inc();
                let kept = self.keys().map_or(0, |k| k.len());
                log::warn!(
                    "issuer {}: fetching keys failed ({e}); keeping {kept} cached keys",
                    self.cfg.issuer
                );
                if let Ok(mut le) = self.last_error.lock() {
                    *le = Some(e.clone());
                }
                Err(e.clone())
            }
        }
    }

    async fn fetch(&self) -> Result<CoreJsonWebKeySet, String> {
        let client = &self.fetcher;
        let known = self.jwks_uri.lock().map_err(|e| e.to_string())?.clone();
        let set = match known {
            Some(uri) => CoreJsonWebKeySet::fetch_async(&uri, client)
                .await
                .map_err(|e| format!("JWKS {}: {}", uri.as_str(), chain(&e)))?,
            None => {
                let url = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| e.to_string())?;
                let meta = CoreProviderMetadata::discover_async(url, client)
                    .await
                    .map_err(|e| format!("discovery: {}", chain(&e)))?;
                let uri = meta.jwks_uri().clone();
                if !uri.as_str().starts_with("https://") {
                    return Err(format!(
                        "discovery names jwks_uri {} which is not https://",
                        uri.as_str()
                    ));
                }
                if let Ok(mut j) = self.jwks_uri.lock() {
                    *j = Some(uri);
                }
                meta.jwks().clone()
            }
        };
        if set.keys().is_empty() {
            return Err("the key set has no key this gateway can use".into());
        }
        Ok(set)
    }

    /// Whether a verdict made under key set `generation` with key `signed_by` still holds: the
    /// key is still in the issuer's current set (a refresh that dropped it ends its verdicts).
    pub fn still_publishes(&self, generation: u64, signed_by: &KeyFingerprint) -> bool {
        self.keys()
            .is_some_and(|set| set.generation == generation || set.holds(signed_by))
    }

    /// Verifies a token of this issuer: signature with a published key, then the claims.
    pub async fn verify(&self, t: &Unverified<'_>, now: u64) -> Result<Verdict, AuthError> {
        let alg = jwt::algorithm(&t.alg, &self.cfg.algorithms)?;
        let kid = t.kid.as_deref();
        let mut keys = self.keys();
        let missing = |k: &Option<Arc<KeySet>>| {
            k.as_ref()
                .is_none_or(|set| set.candidates(kid, &alg).next().is_none())
        };
        if missing(&keys) {
            // First use, or a key this gateway has not seen (rotation): fetch again, rate-limited.
            self.refetch_if_allowed().await;
            keys = self.keys();
        }
        let Some(set) = keys else {
            return Err(AuthError::new(
                Reason::KeysUnavailable,
                format!(
                    "the signing keys of issuer {} could not be loaded ({}); try again later",
                    self.cfg.issuer,
                    self.last_error()
                        .unwrap_or_else(|| "not fetched yet".into())
                ),
            ));
        };
        let mut candidates = set.candidates(kid, &alg).peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::new(
                Reason::UnknownKey,
                match kid {
                    Some(k) => format!(
                        "issuer {} has no signing key {} for {}",
                        self.cfg.issuer,
                        jwt::printable(k),
                        t.alg
                    ),
                    None => format!("issuer {} has no {} key", self.cfg.issuer, t.alg),
                },
            ));
        }
        let Some((_, _, signed_by)) = candidates
            .find(|(k, fast, _)| jwt::verify_signature(k, fast.as_ref(), &alg, t).is_ok())
        else {
            return Err(AuthError::new(
                Reason::BadSignature,
                "the token's signature does not verify with the issuer's key",
            ));
        };
        let rules = ClaimRules {
            issuer: &self.cfg.issuer,
            audiences: &self.cfg.audiences,
            leeway_secs: self.cfg.leeway.as_secs(),
            groups_claim: &self.cfg.groups_claim,
            subject_claim: &self.cfg.subject_claim,
            subject_fallback: &self.cfg.subject_fallback,
        };
        jwt::check_access_token(
            t.typ.as_deref(),
            &t.claims,
            &self.cfg.access_token_typ,
            &self.cfg.issuer,
        )?;
        let checked = jwt::check_claims(&t.claims, &rules, now)?;
        let identity = Identity {
            person: (!checked.is_client).then(|| super::PersonName {
                issuer: self.cfg.issuer.clone(),
                subject: checked.subject.clone(),
            }),
            subject: checked.subject,
            issuer: self.cfg.issuer.clone(),
            method: AuthMethod::Oidc,
            groups: checked.groups,
        };
        Ok(Verdict {
            identity,
            valid_until: checked.expires.saturating_add(rules.leeway_secs),
            generation: set.generation,
            signed_by: *signed_by,
        })
    }
}

/// A verified token: who it names, until when (seconds, `exp` plus leeway), and the key (and
/// key set) that verified it.
pub struct Verdict {
    pub identity: Identity,
    pub valid_until: u64,
    pub generation: u64,
    pub signed_by: KeyFingerprint,
}
