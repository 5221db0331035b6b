//! `agentgate run` and `agentgate check`: load the configuration, then serve it or report it.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// Starts the gateway and serves until it is stopped.
pub fn run(config: PathBuf) -> Result<(), String> {
    let cfg = Config::load(&config).map_err(|e| e.to_string())?;
    crate::server::run(cfg, config).map_err(|e| format!("agentgate: {e}"))
}

/// Loads the configuration (with its secrets unless `skip_secrets`) and says what it holds.
pub fn check(config: &Path, skip_secrets: bool) -> Result<(), String> {
    let c = if skip_secrets {
        Config::load_without_secrets(config)
    } else {
        Config::load(config)
    }
    .map_err(|e| e.to_string())?;
    // The masking engine as `run` builds it (validation checks each custom detector alone).
    crate::proxy::routes::engine(&c, &[0; 32])
        .map_err(|e| format!("{}: masking: {e}", config.display()))?;
    println!(
        "{}: ok ({} listener(s), {} route(s))",
        config.display(),
        c.listeners.len(),
        c.routes.len()
    );
    Ok(())
}
