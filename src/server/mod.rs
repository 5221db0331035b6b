//! Assembles the Pingora server from a validated `Config`: the proxy service with its
//! listeners, and the admin service. `main` stays a table of contents.

pub mod alloc;
pub mod drain;
mod listeners;
pub mod reload;
pub mod runtime;

use crate::admin::{AdminApp, Readiness};
use crate::config::Config;
use crate::identity::KeyRefresher;
use crate::proxy::{ActiveConfig, Gateway};
use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Socket read buffer per agent connection. Pingora's default is 64 KiB, zero-filled, kept for
/// the connection's life: with 1,000 open streams or pending approvals it alone pinned tens of
/// MiB (bench/README.md). Agent requests are mostly a few KiB: 4 KiB reads one in a syscall;
/// a full 16 KiB TLS record takes two reads instead of one.
const AGENT_L4_BUFFER: L4BufferSettings = L4BufferSettings {
    read: Some(4 * 1024),
    write: None,
};

/// The DNS names the admin listener answers to: `admin.public_url`'s host and the names of its
/// certificate (`admin.tls.names`).
fn admin_hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .admin
        .tls
        .iter()
        .flat_map(|t| t.names.iter().cloned())
        .collect();
    if let Ok(uri) = config.admin.public_url.parse::<http::Uri>() {
        hosts.extend(uri.host().map(str::to_string));
    }
    hosts
        .into_iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// Builds every service and runs until a signal stops the process.
pub fn run(config: Config, path: std::path::PathBuf) -> Result<(), String> {
    // Writing past a file size limit must fail with EFBIG (counted as disk full), not kill us.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    crate::metrics::init();
    crate::session_log::start_writer();
    std::fs::create_dir_all(&config.server.state_dir).map_err(|e| {
        format!(
            "cannot create state_dir {}: {e}",
            config.server.state_dir.display()
        )
    })?;
    let state = std::fs::canonicalize(&config.server.state_dir)
        .map_err(|e| format!("state_dir {}: {e}", config.server.state_dir.display()))?;

    let conf = ServerConf {
        threads: config.server.threads,
        // SIGTERM: agentgate's drainer refuses new requests and exits once nothing is in flight
        // (src/drain.rs); Pingora's own shutdown only ends what is left after the grace period.
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        pid_file: state.join("agentgate.pid").to_string_lossy().into_owned(),
        // Two tries: Pingora sends a request again after an error it marks retryable (an
        // idempotent request on a reused connection the upstream closed; see
        // `Gateway::error_while_proxy` for HTTP/2 streams the upstream never processed).
        max_retries: 2,
        upgrade_sock: state.join("upgrade.sock").to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Before the routes are built: their limits count in it.
    crate::limits::Ledger::open(state.join("usage.json"))?;
    if let Some(t) = &config.tracing {
        crate::telemetry::init(t)?;
        log::info!("tracing: spans to {}/v1/traces (OTLP/HTTP)", t.endpoint);
    }
    let key = runtime::HashKey::random()?;
    let active = ActiveConfig::new(runtime::build(&config, &key)?);
    // With `store.postgres`, approvals (and records) are shared with every replica through it.
    let db = match &config.store.postgres {
        Some(pg) => Some(crate::db::Database::open(pg, crate::db::Role::Server)?),
        None => None,
    };
    let recorder = if config
        .routes
        .iter()
        .any(|r| r.recording != crate::config::RecordingMode::Off)
    {
        let dir = config.recording.dir_under(&state);
        log::info!("recording exchanges under {}", dir.display());
        let (key, generated) =
            crate::record::checkpoint::signing_key(config.recording.signing_key.as_ref(), &state)?;
        if let Some(path) = generated {
            log::warn!(
                "recording.signing_key is not set: checkpoints are signed with the key kept in {} (public key {}). Anyone who can read this machine's state directory can sign with it: set recording.signing_key to a key mounted from a secret, and give auditors the public key (`agentgate audit pubkey`)",
                path.display(),
                key.public().to_text()
            );
        }
        Some(crate::record::Recorder::start(
            dir,
            config.recording.clone(),
            active.get().engine.clone(),
            key,
            db.clone(),
        )?)
    } else {
        None
    };
    let approvals = match &db {
        Some(db) => crate::approval::ApprovalStore::Shared(crate::approval::SharedApprovals::new(
            db.clone(),
        )),
        None => crate::approval::ApprovalStore::Local(crate::approval::Approvals::open(
            &state.join("approvals"),
        )?),
    };
    crate::proxy::mcp::PinStore::open(state.join("mcp-pins.json"))?;
    let gate =
        crate::proxy::approval_gate::Gate::new(approvals.clone(), config.admin.public_url.clone());
    let gateway = Gateway::new(&config, active.clone(), recorder.clone(), gate)?;
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "agentgate proxy",
    );
    let mut trust_hint = None;
    for l in &config.listeners {
        let addr = l.address.to_string();
        match &l.tls {
            Some(t) => {
                let (settings, ca) =
                    listeners::tls_settings(t, &state, &format!("listener `{}`", l.name))?;
                trust_hint = trust_hint.or(ca);
                proxy.add_listener(
                    ListenerConfig::tcp(&addr)
                        .tls(settings)
                        .l4_buffer(AGENT_L4_BUFFER),
                );
            }
            None => proxy.add_listener(ListenerConfig::tcp(&addr).l4_buffer(AGENT_L4_BUFFER)),
        }
        log::info!(
            "listener `{}` on {}://{addr}",
            l.name,
            if l.tls.is_some() { "https" } else { "http" }
        );
    }

    let ready = Arc::new(Readiness::default());
    let mut admin = Service::new(
        "agentgate admin".to_string(),
        HttpServer::new_app(AdminApp {
            ready: ready.clone(),
            active: active.clone(),
            records: recorder.as_ref().map(|r| r.dir().to_path_buf()),
            hosts: admin_hosts(&config),
            approvals: approvals.clone(),
            db: db.clone(),
            auditors: config.admin.auditors.clone(),
            console: config.admin.console.clone().map(|c| {
                log::info!(
                    "web console on {}/console/ (sign-in with {})",
                    config.admin.public_url,
                    c.issuer
                );
                // A person signed in to the console is the same approver as with a bearer token
                // from the same issuer: named by that issuer's `subject_claim`.
                let subject_claim = config
                    .identity
                    .oidc
                    .iter()
                    .find(|i| i.issuer == c.issuer)
                    .map_or("sub".to_string(), |i| i.subject_claim.clone());
                Arc::new(crate::admin::console::Console::new(
                    c,
                    &config.admin.public_url,
                    subject_claim,
                ))
            }),
        }),
    );
    let admin_addr = config.admin.address.to_string();
    match &config.admin.tls {
        Some(t) => {
            let (settings, _) = listeners::tls_settings(t, &state, "the admin listener")?;
            admin.add_tls_with_settings(&admin_addr, None, settings);
        }
        None => admin.add_tcp(&admin_addr),
    }
    log::info!("admin on {admin_addr}: /metrics /healthz /readyz");
    if let Some(ca) = trust_hint {
        log::info!(
            "generated certificate: agents must trust the CA at {} (e.g. SSL_CERT_FILE for the OpenAI Python SDK)",
            ca.display()
        );
    }

    server.add_service(pingora::services::background::background_service(
        "oidc keys",
        KeyRefresher::of(&active.get().auth),
    ));
    server.add_service(pingora::services::background::background_service(
        "approval expiry",
        crate::approval::Sweeper(approvals.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "drain",
        drain::Drainer {
            recorder: recorder.clone(),
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "reload",
        reload::Reloader {
            path,
            active: active.clone(),
            fixed: reload::fixed_parts(&config),
            key,
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "readiness",
        listeners::ReadyWhenListening {
            addresses: config.listeners.iter().map(|l| l.address).collect(),
            ready: ready.clone(),
        },
    ));
    server.add_service(proxy);
    server.add_service(admin);
    server.run(pingora::server::RunArgs::default());
    if let Some(r) = &recorder {
        r.flush(std::time::Duration::from_secs(10));
    }
    crate::session_log::flush();
    Ok(())
}
