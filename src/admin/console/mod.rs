//! The web console on the admin listener: sign-in with the organisation's OpenID provider
//! (authorization code flow with PKCE, through the `openidconnect` crate and the gateway's own
//! verified HTTPS client), server-side sessions behind an HttpOnly cookie, CSRF tokens for every
//! state-changing request, and the static page (embedded; no CDN).
//!
//! Sessions live in memory (a restart signs everyone out). The page itself calls the same admin
//! API as the CLI (`/v1/approvals`, `/v1/sessions`), authenticated by the session cookie.

use super::{json_error, query_param, text};
use crate::config::ConsoleConfig;
use crate::identity::{AuthMethod, Identity};
use crate::upstream::client::Fetcher;
use http::{HeaderMap, Response};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "agentgate_console";
const LOGIN_COOKIE: &str = "agentgate_login";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A sign-in must come back from the provider within this long.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// At most this many sessions (oldest dropped first). Sign-ins in progress are kept in no
/// table: their state travels in a signed cookie, so nobody can fill it (issue 29).
const MAX_ENTRIES: usize = 10_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A sign-in in progress: in the browser's login cookie, signed with the console's key, so the
/// gateway keeps no state per sign-in (an unauthenticated client cannot fill a table and lock
/// out everyone else's sign-in).
#[derive(serde::Serialize, serde::Deserialize)]
struct Login {
    state: String,
    verifier: String,
    nonce: String,
    /// Seconds since the epoch.
    created: u64,
}

impl Login {
    /// `base64url(json) "." base64url(HMAC-SHA256(key, json))`.
    fn seal(&self, key: &[u8; 32]) -> Option<String> {
        use base64::Engine;
        let json = serde_json::to_vec(self).ok()?;
        let mac = boring::hash::hmac_sha256(key, &json).ok()?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Some(format!("{}.{}", b64.encode(&json), b64.encode(mac)))
    }

    /// The sign-in a cookie carries, if this console signed it.
    fn open(cookie: &str, key: &[u8; 32]) -> Option<Login> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (data, mac) = cookie.split_once('.')?;
        let json = b64.decode(data).ok()?;
        let mac = b64.decode(mac).ok()?;
        let want = boring::hash::hmac_sha256(key, &json).ok()?;
        if mac.len() != want.len() || !boring::memcmp::eq(&mac, &want) {
            return None;
        }
        serde_json::from_slice(&json).ok()
    }
}

struct Session {
    identity: Arc<Identity>,
    csrf: String,
    expires: Instant,
}

pub struct Console {
    cfg: ConsoleConfig,
    /// The claim naming a person (the identity section's `subject_claim` for this issuer).
    subject_claim: String,
    fetcher: Fetcher,
    /// The provider's discovery document and keys (fetched on first sign-in; again on failure).
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
    /// Signs login cookies; random per process (a restart ends sign-ins in progress).
    login_key: Option<[u8; 32]>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The origin pages are served from (for the Origin check on POSTs).
    origin: String,
}

/// How long discovery (and the provider's keys) are trusted before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// An answer of the console: the admin listener's, and what a browser must not do with it.
fn page(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = text(status, content_type, body);
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    );
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "referrer-policy",
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

fn redirect(to: &str, cookies: &[String]) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(302)
        .header(http::header::LOCATION, to)
        .header(http::header::CONTENT_LENGTH, 0)
        .header(http::header::CACHE_CONTROL, "no-store");
    for c in cookies {
        r = r.header(http::header::SET_COOKIE, c);
    }
    r.body(Vec::new()).unwrap_or_default()
}

fn problem(status: u16, message: &str) -> Response<Vec<u8>> {
    let body = format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\"><title>agentgate console</title><link rel=stylesheet href=/console/app.css>\
         <main class=narrow><h1>agentgate</h1><p role=alert>{}</p><p><a href=/console/login>Sign in again</a></p></main>",
        html_escape(message)
    );
    page(status, "text/html; charset=utf-8", body.into_bytes())
}

/// The login cookies' key; none without randomness (no sign-in is then started).
fn random_key() -> Option<[u8; 32]> {
    let mut k = [0u8; 32];
    boring::rand::rand_bytes(&mut k).ok().map(|_| k)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Console {
    pub fn new(cfg: ConsoleConfig, public_url: &str, subject_claim: String) -> Console {
        let origin = match public_url.parse::<http::Uri>() {
            Ok(u) => format!(
                "{}://{}",
                u.scheme_str().unwrap_or("https"),
                u.authority().map(|a| a.as_str()).unwrap_or("")
            ),
            Err(_) => public_url.to_string(),
        };
        Console {
            fetcher: Fetcher::new(cfg.ca_file.clone(), Duration::from_secs(10)),
            cfg,
            subject_claim,
            metadata: tokio::sync::Mutex::new(None),
            login_key: random_key(),
            sessions: Mutex::new(HashMap::new()),
            origin,
        }
    }

    fn cookie_attrs(&self) -> &'static str {
        if self.cfg.secure_cookies {
            "; HttpOnly; Secure"
        } else {
            "; HttpOnly"
        }
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        String,
    > {
        let mut m = self.metadata.lock().await;
        let fresh = m
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < METADATA_TTL);
        if !fresh {
            let url = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| e.to_string())?;
            let meta = CoreProviderMetadata::discover_async(url, &self.fetcher)
                .await
                .map_err(|e| format!("discovery at {}: {e}", self.cfg.issuer))?;
            *m = Some((meta, Instant::now()));
        }
        let meta = m
            .as_ref()
            .map(|(meta, _)| meta.clone())
            .ok_or("no provider metadata")?;
        let redirect =
            RedirectUrl::new(self.cfg.redirect_url.clone()).map_err(|e| e.to_string())?;
        Ok(CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(redirect))
    }

    /// The signed-in person for a request carrying the session cookie; POSTs must also carry
    /// the session's CSRF token (and, when the browser says, come from this origin).
    pub fn identity(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, (u16, String)> {
        let sid = cookie(headers, SESSION_COOKIE).ok_or((401, "sign in first".to_string()))?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions
            .get(sid)
            .ok_or((401, "the session ended; sign in again".to_string()))?;
        if s.expires <= Instant::now() {
            sessions.remove(sid);
            return Err((401, "the session expired; sign in again".into()));
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if token != Some(s.csrf.as_str()) {
                return Err((403, "missing or wrong CSRF token".into()));
            }
            if let Some(o) = headers
                .get(http::header::ORIGIN)
                .and_then(|v| v.to_str().ok())
            {
                if o != self.origin {
                    return Err((403, format!("cross-origin request from {o} refused")));
                }
            }
        }
        Ok(s.identity.clone())
    }

    /// Serves `/console...`.
    pub async fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Response<Vec<u8>> {
        match (method.as_str(), path) {
            ("GET", "/console") | ("GET", "/console/") => match self.identity(method, headers) {
                Ok(_) => page(
                    200,
                    "text/html; charset=utf-8",
                    INDEX_HTML.as_bytes().to_vec(),
                ),
                Err(_) => redirect("/console/login", &[]),
            },
            ("GET", "/console/app.js") => page(
                200,
                "text/javascript; charset=utf-8",
                APP_JS.as_bytes().to_vec(),
            ),
            ("GET", "/console/app.css") => {
                page(200, "text/css; charset=utf-8", APP_CSS.as_bytes().to_vec())
            }
            ("GET", "/console/login") => self.login().await,
            ("GET", "/console/signed-out") => {
                let body = "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\">\
                    <title>agentgate console</title><link rel=stylesheet href=/console/app.css>\
                    <main class=narrow><h1>agentgate</h1><p role=status>You are signed out.</p>\
                    <p><a href=/console/login>Sign in</a></p></main>";
                page(200, "text/html; charset=utf-8", body.as_bytes().to_vec())
            }
            ("GET", "/console/callback") => self.callback(query, headers).await,
            ("GET", "/console/api/me") => match self.identity(method, headers) {
                Ok(who) => {
                    let csrf = self.csrf_of(headers).unwrap_or_default();
                    let v = serde_json::json!({
                        "subject": who.subject, "issuer": who.issuer, "groups": who.groups, "csrf": csrf,
                    });
                    page(200, "application/json", v.to_string().into_bytes())
                }
                Err((status, why)) => json_error(status, why),
            },
            ("POST", "/console/logout") => match self.identity(method, headers) {
                Ok(who) => {
                    if let Some(sid) = cookie(headers, SESSION_COOKIE) {
                        self.sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(sid);
                    }
                    log::info!("console: {} signed out", who.subject);
                    let clear = format!(
                        "{SESSION_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax{}",
                        self.cookie_attrs()
                    );
                    let mut r = page(200, "application/json", b"{\"signed_out\":true}".to_vec());
                    if let Ok(v) = clear.parse() {
                        r.headers_mut().insert(http::header::SET_COOKIE, v);
                    }
                    r
                }
                Err((status, why)) => json_error(status, why),
            },
            _ => problem(404, "No such page."),
        }
    }

    fn csrf_of(&self, headers: &HeaderMap) -> Option<String> {
        let sid = cookie(headers, SESSION_COOKIE)?;
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .map(|s| s.csrf.clone())
    }

    async fn login(&self) -> Response<Vec<u8>> {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("console sign-in: {e}");
                return problem(
                    503,
                    &format!("The identity provider cannot be reached: {e}"),
                );
            }
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        let login = Login {
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            created: crate::util::time::unix_secs(),
        };
        let Some(sealed) = self.login_key.and_then(|k| login.seal(&k)) else {
            return problem(500, "The sign-in could not be started.");
        };
        // Binds the sign-in to this browser: the callback must come back with this cookie,
        // whose state is the one the provider returns.
        let c = format!(
            "{LOGIN_COOKIE}={sealed}; Path=/console; Max-Age={}; SameSite=Lax{}",
            LOGIN_TTL.as_secs(),
            self.cookie_attrs()
        );
        redirect(url.as_str(), &[c])
    }

    async fn callback(&self, query: Option<&str>, headers: &HeaderMap) -> Response<Vec<u8>> {
        if let Some(e) = query_param(query, "error") {
            let d = query_param(query, "error_description").unwrap_or_default();
            return problem(
                401,
                &format!("The identity provider refused the sign-in: {e} {d}"),
            );
        }
        let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state"))
        else {
            return problem(400, "The sign-in answer has no code or state.");
        };
        let Some(login) = cookie(headers, LOGIN_COOKIE)
            .zip(self.login_key.as_ref())
            .and_then(|(c, k)| Login::open(c, k))
        else {
            return problem(403, "This sign-in was not started in this browser (or the gateway restarted since); start again.");
        };
        if login.state != state {
            return problem(403, "This sign-in was not started in this browser.");
        }
        if crate::util::time::unix_secs().saturating_sub(login.created) >= LOGIN_TTL.as_secs() {
            return problem(403, "The sign-in took too long; start again.");
        }
        let who = match self.finish(code, login).await {
            Ok(w) => w,
            Err(e) => {
                log::warn!("console sign-in failed: {e}");
                return problem(401, &format!("Sign-in failed: {e}"));
            }
        };
        log::info!(
            "console: {} ({}) signed in, groups {:?}",
            who.subject,
            who.issuer,
            who.groups
        );
        let sid = crate::util::hex::random_hex(32);
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_ENTRIES {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(
                sid.clone(),
                Session {
                    identity: Arc::new(who),
                    csrf: crate::util::hex::random_hex(32),
                    expires: now + self.cfg.session_ttl,
                },
            );
        }
        let session = format!(
            "{SESSION_COOKIE}={sid}; Path=/; Max-Age={}; SameSite=Lax{}",
            self.cfg.session_ttl.as_secs(),
            self.cookie_attrs()
        );
        let clear = format!(
            "{LOGIN_COOKIE}=; Path=/console; Max-Age=0; SameSite=Lax{}",
            self.cookie_attrs()
        );
        redirect("/console/", &[session, clear])
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token.
    async fn finish(&self, code: String, login: Login) -> Result<Identity, String> {
        let client = self.client().await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| e.to_string())?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier))
            .request_async(&self.fetcher)
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let id_token = token.id_token().ok_or("the provider sent no ID token")?;
        let verifier = client.id_token_verifier().set_allowed_algs(vec![
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ]);
        let claims = id_token
            .claims(&verifier, &Nonce::new(login.nonce))
            .map_err(|e| format!("ID token: {e}"))?;
        // The token is verified; its payload gives the subject and groups claims (by name or
        // dotted path).
        let raw = id_token.to_string();
        let payload = raw.split('.').nth(1).ok_or("malformed ID token")?;
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| e.to_string())?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        Ok(signed_in(
            &map,
            claims.subject().as_str(),
            &self.subject_claim,
            &self.cfg.groups_claim,
            &self.cfg.issuer,
        ))
    }
}

/// Who signed in, from the verified ID token's claims: named by `subject_claim` (as bearer
/// tokens of the same issuer are, so one person is one approver toward `min_approvals`), `sub`
/// when the token lacks it.
fn signed_in(
    map: &serde_json::Map<String, serde_json::Value>,
    sub: &str,
    subject_claim: &str,
    groups_claim: &str,
    issuer: &str,
) -> Identity {
    let subject = match crate::identity::jwt::claim(map, subject_claim) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => sub.to_string(),
    };
    let groups = match crate::identity::jwt::claim(map, groups_claim) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(String::from))
            .collect(),
        Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        _ => Vec::new(),
    };
    Identity {
        person: Some(crate::identity::PersonName {
            issuer: issuer.to_string(),
            subject: subject.clone(),
        }),
        subject,
        issuer: issuer.to_string(),
        method: AuthMethod::Oidc,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_query_params_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; agentgate_console=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(
            query_param(Some("code=a%2Fb+c&state=x"), "code").as_deref(),
            Some("a/b c")
        );
        assert_eq!(
            query_param(Some("code=%zz%4"), "code").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(
            html_escape("<b a=\"1\">&"),
            "&lt;b a=&quot;1&quot;&gt;&amp;"
        );
    }

    /// Sign-ins in progress live in the browser's cookie, signed: one this console did not
    /// sign, or changed in any byte, is refused (issue 29: the server-side table of 10,000
    /// sign-ins could be filled by one unauthenticated client, locking out everyone).
    #[test]
    fn login_cookies_open_only_as_sealed() {
        let key = [7u8; 32];
        let login = Login {
            state: "st".into(),
            verifier: "ver".into(),
            nonce: "no".into(),
            created: 1_000,
        };
        let sealed = login.seal(&key).unwrap();
        let back = Login::open(&sealed, &key).unwrap();
        assert_eq!(
            (
                back.state.as_str(),
                back.verifier.as_str(),
                back.nonce.as_str(),
                back.created
            ),
            ("st", "ver", "no", 1_000)
        );
        assert!(Login::open(&sealed, &[8u8; 32]).is_none(), "another key");
        let bytes = sealed.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            if let Ok(changed) = std::str::from_utf8(&b) {
                if changed != sealed {
                    assert!(Login::open(changed, &key).is_none(), "byte {i} changed");
                }
            }
        }
        assert!(Login::open("", &key).is_none() && Login::open("st", &key).is_none());
    }

    /// The console names a person as bearer tokens of the same issuer do (issue 22: by `sub`
    /// in the console and `subject_claim` with a token, one person counted twice toward
    /// `min_approvals`).
    #[test]
    fn console_approvers_are_named_like_bearer_approvers() {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"sub":"a1b2","email":"alice@example.com","groups":["sec"]}"#)
                .unwrap();
        let who = signed_in(&map, "a1b2", "email", "groups", "https://idp");
        assert_eq!(
            (who.subject.as_str(), who.groups.as_slice()),
            ("alice@example.com", &["sec".to_string()][..])
        );
        assert_eq!(
            signed_in(&map, "a1b2", "sub", "groups", "https://idp").subject,
            "a1b2"
        );
        assert_eq!(
            signed_in(&map, "a1b2", "missing", "groups", "https://idp").subject,
            "a1b2"
        );
    }
}
