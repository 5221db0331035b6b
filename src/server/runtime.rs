//! What a configuration builds for requests to use — the masking engine, the routes (upstreams,
//! masking, guardrails, approval rules, recording mode) and the identity sources — built by one
//! `build` at start-up and on every reload, so every consumer gets the same engine: the routes,
//! the recorder (through each request's route) and the approval gate. A reload swaps the whole
//! `Active`; a request keeps the one it started with.

use crate::config::Config;
use crate::identity::Authenticator;
use crate::proxy::{build_routes, Active};
use std::sync::Arc;

/// The process's own key for `hash` outputs when the config sets no `masking.hash_key`: drawn
/// once at start-up and used by every configuration the process loads, so a value hashes the
/// same before and after a reload.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    pub fn random() -> Result<HashKey, String> {
        let mut k = [0u8; 32];
        boring::rand::rand_bytes(&mut k).map_err(|e| format!("no randomness: {e}"))?;
        Ok(HashKey(k))
    }
}

/// The run-time form of `config`.
pub fn build(config: &Config, key: &HashKey) -> Result<Active, String> {
    let auth = Arc::new(Authenticator::new(&config.identity)?);
    // Compiling the engine is the slow part: once per configuration, shared by every route.
    let engine = crate::proxy::routes::engine(config, &key.0)?;
    let injected = crate::mask::injected::SecretSet::new(
        config
            .routes
            .iter()
            .flat_map(|r| r.set_headers.iter())
            .flat_map(|h| h.secret.sensitive_parts().iter().cloned()),
    )?;
    crate::session_log::set_confidential(injected);
    Ok(Active {
        routes: build_routes(config, engine.clone())?,
        auth,
        engine,
    })
}
