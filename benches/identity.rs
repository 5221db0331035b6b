//! Cost of identity checks on the request path (`cargo bench --bench identity`):
//! - a cached OIDC token (the steady state: SHA-256 of the token, one lookup, the key set's generation),
//! - an uncached RS256 and ES256 token (parse, signature, claims),
//! - a service-account token (SHA-256 and constant-time compare against 100 accounts).
//!
//! Each prints the median of 15 batches in ns per check.

use agentgate::config::{OidcIssuer, ServiceAccount};
use agentgate::identity::jwks::Issuer;
use agentgate::identity::{jwt, service_account, unix_now, Authenticator};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use boring::bn::BigNumContext;
use boring::ec::{EcGroup, EcKey};
use boring::ecdsa::EcdsaSig;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::PKey;
use boring::rsa::Rsa;
use boring::sign::Signer;
use std::hint::black_box;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.bench.example";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn signing_input(alg: &str, kid: &str) -> String {
    let header = serde_json::json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "agentgate", "sub": "bench-agent", "iat": unix_now(),
        "exp": unix_now() + 3600, "groups": ["agents", "bench"],
    });
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An RS256 token and its JWK.
fn rs256() -> (String, serde_json::Value) {
    let rsa = Rsa::generate(2048).unwrap();
    let jwk = serde_json::json!({"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    let pkey = PKey::from_rsa(rsa).unwrap();
    let input = signing_input("RS256", "r1");
    let mut s = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
    s.update(input.as_bytes()).unwrap();
    (format!("{input}.{}", b64(&s.sign_to_vec().unwrap())), jwk)
}

/// An ES256 token and its JWK.
fn es256() -> (String, serde_json::Value) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (
        boring::bn::BigNum::new().unwrap(),
        boring::bn::BigNum::new().unwrap(),
    );
    let mut ctx = BigNumContext::new().unwrap();
    key.public_key()
        .affine_coordinates_gfp(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let jwk = serde_json::json!({"kty": "EC", "kid": "e1", "alg": "ES256", "use": "sig", "crv": "P-256",
        "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())});
    let input = signing_input("ES256", "e1");
    let sig = EcdsaSig::sign(&boring::sha::sha256(input.as_bytes()), &key).unwrap();
    let mut raw = sig.r().to_vec_padded(32).unwrap();
    raw.extend(sig.s().to_vec_padded(32).unwrap());
    (format!("{input}.{}", b64(&raw)), jwk)
}

fn issuer_config() -> OidcIssuer {
    OidcIssuer {
        issuer: ISSUER.into(),
        audiences: vec!["agentgate".into()],
        groups_claim: "groups".into(),
        subject_claim: "sub".into(),
        subject_fallback: Vec::new(),
        access_token_typ: vec!["at+jwt".into()],
        leeway: Duration::from_secs(30),
        algorithms: agentgate::config::JWS_ALGORITHMS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ca_file: None,
        jwks_uri: None,
        refresh_interval: Duration::from_secs(600),
        min_refetch_interval: Duration::from_secs(30),
        fetch_timeout: Duration::from_secs(5),
    }
}

/// Median ns per call of `f` over 15 batches of `n` calls.
fn measure(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n.min(100) {
        f();
    }
    let mut per: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    per.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<44} {:>10.0} ns/check  (min {:.0}, max {:.0})",
        per[7], per[0], per[14]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rs_token, rs_jwk) = rs256();
    let (es_token, es_jwk) = es256();
    let jwks = serde_json::json!({"keys": [rs_jwk, es_jwk]}).to_string();

    let mut identity = agentgate::config::IdentityConfig::default();
    identity.oidc.push(issuer_config());
    identity.service_accounts = (0..100)
        .map(|i| ServiceAccount {
            name: format!("sa-{i}"),
            token_sha256: boring::sha::sha256(format!("agt_bench_token_{i}").as_bytes()),
            groups: vec!["agents".into()],
            person: None,
        })
        .collect();
    agentgate::metrics::init();
    let auth = Authenticator::new(&identity).unwrap();
    auth.issuers()[0].install_keys(&jwks).unwrap();
    let issuer: &Issuer = &auth.issuers()[0];

    println!(
        "identity checks (one core, {} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for (name, token) in [("RS256", &rs_token), ("ES256", &es_token)] {
        rt.block_on(auth.verify_jwt(token)).expect("token verifies");
        measure(&format!("oidc {name}, cached verdict"), 200_000, || {
            black_box(rt.block_on(auth.verify_jwt(black_box(token))).unwrap());
        });
        measure(
            &format!("oidc {name}, uncached (parse+signature+claims)"),
            300,
            || {
                let t = jwt::parse(black_box(token)).unwrap();
                black_box(rt.block_on(issuer.verify(&t, unix_now())).unwrap());
            },
        );
    }
    let accounts = &identity.service_accounts;
    measure("service account, 100 accounts", 100_000, || {
        black_box(service_account::find(accounts, black_box("agt_bench_token_57")).unwrap());
    });
}
