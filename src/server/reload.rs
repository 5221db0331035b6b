//! Hot reload: on SIGHUP, and when the config file changes (including Kubernetes' ConfigMap
//! symlink swap), the file is validated; if valid, routes (with their upstreams, masking,
//! guardrails, recording mode) and identity sources are swapped atomically — requests in flight
//! keep the configuration they started with — and if not, the running configuration stays, the
//! error is logged with its line, and `agentgate_config_reloads_total{result}` counts it.
//! Listeners, the admin listener, `server`, `recording` and `store` settings need a restart.

use super::runtime::{self, HashKey};
use crate::config::Config;
use crate::metrics;
use crate::proxy::ActiveConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Reloader {
    pub path: PathBuf,
    pub active: Arc<ActiveConfig>,
    /// The parts that need a restart, as running (Debug text; secrets print redacted).
    pub fixed: String,
    /// The process's `hash` key, for configurations without `masking.hash_key`.
    pub key: HashKey,
}

/// What `Reloader` compares to notice a change: follows symlinks, so a ConfigMap's `..data`
/// swap shows up as a new inode.
fn stamp(path: &PathBuf) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

pub fn fixed_parts(c: &Config) -> String {
    // The store's URL is a secret (its Debug is redacted): its hash tells a change.
    let url = c
        .store
        .postgres
        .as_ref()
        .map(|p| crate::approval::sha256_hex(p.url.expose().as_bytes()));
    format!(
        "{:?}{:?}{:?}{:?}{:?}{url:?}",
        c.server, c.listeners, c.admin, c.recording, c.store
    )
}

impl Reloader {
    fn reload(&self, why: &str) {
        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                metrics::CONFIG_RELOADS
                    .with_label_values(&["invalid"])
                    .inc();
                log::error!("config reload ({why}) refused, the running configuration stays: {e}");
                return;
            }
        };
        let active = match runtime::build(&config, &self.key) {
            Ok(a) => a,
            Err(e) => {
                metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
                log::error!("config reload ({why}) failed, the running configuration stays: {e}");
                return;
            }
        };
        if fixed_parts(&config) != self.fixed {
            log::warn!("config reload ({why}): changes to server, listeners, admin, recording or store take effect after a restart");
        }
        // The new issuers' keys are refreshed for as long as a configuration uses them; the
        // loops of issuers this configuration dropped end with the last request using them.
        crate::identity::spawn_key_refresh(&active.auth);
        let n = active.routes.len();
        self.active.swap(active);
        metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
        log::info!("configuration reloaded ({why}): {n} route(s)");
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        for r in ["ok", "invalid", "error"] {
            metrics::CONFIG_RELOADS.with_label_values(&[r]);
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch SIGHUP for reloads: {e}");
                None
            }
        };
        let mut last = stamp(&self.path);
        loop {
            tokio::select! {
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    last = stamp(&self.path);
                    self.reload("SIGHUP");
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let now = stamp(&self.path);
                    if now.is_some() && now != last {
                        last = now;
                        self.reload("file changed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
