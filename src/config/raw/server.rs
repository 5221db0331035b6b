//! `server:`: the state directory, worker threads, grace period, body and pool limits.

use crate::config::at_field;
use crate::config::units::{ByteSize, HumanDuration};
use crate::config::ServerSettings;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_grace")]
    grace_period: HumanDuration,
    #[serde(default = "default_max_body")]
    max_body: ByteSize,
    #[serde(default = "default_pool")]
    upstream_keepalive_pool: usize,
    #[serde(default = "default_client_timeout")]
    client_timeout: HumanDuration,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./var")
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_body() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_pool() -> usize {
    128
}
fn default_client_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            state_dir: default_state_dir(),
            threads: default_threads(),
            grace_period: default_grace(),
            max_body: default_max_body(),
            upstream_keepalive_pool: default_pool(),
            client_timeout: default_client_timeout(),
        }
    }
}

impl TryFrom<RawServer> for ServerSettings {
    type Error = String;
    fn try_from(r: RawServer) -> Result<Self, String> {
        if r.threads == 0 || r.threads > 1024 {
            return Err(at_field(
                "server.threads",
                format!(
                    "server.threads must be between 1 and 1024, got {}",
                    r.threads
                ),
            ));
        }
        if r.max_body.0 == 0 {
            return Err(at_field(
                "server.max_body",
                "server.max_body must be greater than 0".into(),
            ));
        }
        let client_timeout = r.client_timeout.0;
        if client_timeout < Duration::from_secs(1) || client_timeout > Duration::from_secs(3600) {
            return Err(at_field(
                "server.client_timeout",
                format!(
                    "server.client_timeout must be between 1s and 1h, got {}s",
                    client_timeout.as_secs_f64()
                ),
            ));
        }
        Ok(ServerSettings {
            client_timeout,
            state_dir: r.state_dir,
            threads: r.threads,
            grace_period: r.grace_period.0,
            max_body: r.max_body.0,
            upstream_keepalive_pool: r.upstream_keepalive_pool,
        })
    }
}
