//! `store:`: where state that several replicas share lives. Only `postgres` today; without it,
//! approvals and records stay in local files under `state_dir`.

use crate::config::at_field;
use crate::config::units::HumanDuration;
use crate::config::{secret, PostgresStore, StoreConfig};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default)]
    postgres: Option<RawPostgres>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`, usually `${env:..}` or `${file:..}`.
    url: String,
    /// Extra CA for the database's certificate (system roots are always trusted).
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_pool")]
    pool: usize,
    /// This replica's name in the database; default: the host name (the pod's name).
    #[serde(default)]
    replica: Option<String>,
    #[serde(default = "default_lease")]
    lease: HumanDuration,
    #[serde(default = "default_queue")]
    queue: usize,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: HumanDuration,
}

fn default_pool() -> usize {
    8
}
fn default_lease() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}
fn default_queue() -> usize {
    10_000
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl TryFrom<RawStore> for StoreConfig {
    type Error = String;
    fn try_from(r: RawStore) -> Result<Self, String> {
        Ok(StoreConfig {
            postgres: r.postgres.map(PostgresStore::try_from).transpose()?,
        })
    }
}

/// A replica name: it goes into the database and into metrics, so it stays short and plain.
fn valid_replica(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Loopback: 127.0.0.0/8, ::1, `localhost`, or a Unix socket (a path).
fn is_loopback(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

impl TryFrom<RawPostgres> for PostgresStore {
    type Error = String;
    fn try_from(r: RawPostgres) -> Result<Self, String> {
        let url = secret::resolve(&r.url, secret::current_source())
            .map_err(|e| at_field("url", format!("store.postgres.url: {e}")))?;
        let mut tls = true;
        if !secret::placeholders_active() {
            // The URL holds a password: the parser's message is shown, never the URL.
            let parsed: tokio_postgres::Config = url.expose().parse().map_err(|e| {
                at_field("url", format!(
                    "store.postgres.url is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE): {e}"
                ))
            })?;
            if parsed.get_hosts().is_empty() {
                return Err(at_field("url", "store.postgres.url names no host".into()));
            }
            if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                if let Some(h) = parsed.get_hosts().iter().find(|h| !is_loopback(h)) {
                    return Err(at_field("url", format!(
                        "store.postgres.url says sslmode=disable for {h:?}: plaintext to the database is allowed only on loopback; \
                         remove sslmode (TLS with verification is the default) and give the database's CA in ca_file"
                    )));
                }
                tls = false;
            }
        }
        if r.pool == 0 || r.pool > 1000 {
            return Err(at_field(
                "pool",
                format!(
                    "store.postgres.pool is {}: give 1 to 1000 connections",
                    r.pool
                ),
            ));
        }
        if r.queue == 0 {
            return Err(at_field(
                "queue",
                "store.postgres.queue must be greater than 0".into(),
            ));
        }
        if r.lease.0 < Duration::from_secs(2) {
            return Err(at_field(
                "lease",
                "store.postgres.lease must be at least 2s (a replica renews it every third of it)"
                    .into(),
            ));
        }
        if let Some(n) = &r.replica {
            if !valid_replica(n) {
                return Err(at_field(
                    "replica",
                    format!(
                    "store.postgres.replica `{n}`: use 1 to 63 letters, digits, `-`, `_` or `.`"
                ),
                ));
            }
        }
        Ok(PostgresStore {
            url,
            tls,
            ca_file: r.ca_file,
            pool: r.pool,
            replica: r.replica,
            lease: r.lease.0,
            queue: r.queue,
            connect_timeout: r.connect_timeout.0,
        })
    }
}
