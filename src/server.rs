//! Assembles the Pingora server from a validated `Config`: the proxy service with its
//! listeners, and the admin service. `main` stays a table of contents.

use crate::admin::{AdminApp, Readiness};
use crate::config::{Config, ListenerTls, TlsVersion};
use crate::identity::client_cert::RecordClientCert;
use crate::identity::{Authenticator, KeyRefresher};
use crate::proxy::{Active, ActiveConfig, Gateway};
use crate::tls::{self, ServingCert};
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use pingora::tls::ssl::{SslFiletype, SslVerifyMode, SslVersion};
use std::sync::Arc;

/// Socket read buffer per agent connection. Pingora's default is 64 KiB, zero-filled, kept for
/// the connection's life: with 1,000 open streams or pending approvals it alone pinned tens of
/// MiB (bench/README.md). Agent requests are mostly a few KiB: 4 KiB reads one in a syscall;
/// a full 16 KiB TLS record takes two reads instead of one.
const AGENT_L4_BUFFER: L4BufferSettings = L4BufferSettings {
    read: Some(4 * 1024),
    write: None,
};

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

    let auth = Arc::new(Authenticator::new(&config.identity)?);
    // One masking engine for the routes and the recorder (compiling it is the slow part).
    let engine = crate::masking::engine(&config)?;
    let recorder = if config
        .routes
        .iter()
        .any(|r| r.recording != crate::record::Mode::Off)
    {
        let dir = config.recording.dir_under(&state);
        log::info!("recording exchanges under {}", dir.display());
        Some(crate::record::Recorder::start(
            dir,
            config.recording.clone(),
            engine.clone(),
        )?)
    } else {
        None
    };
    let approvals = crate::approval::Approvals::open(&state.join("approvals"))?;
    let gate = crate::approval::gate::Gate::new(
        approvals.clone(),
        engine.clone(),
        config.admin.public_url.clone(),
    );
    let active = ActiveConfig::new(Active {
        routes: crate::proxy::build_routes(&config, engine)?,
        auth: auth.clone(),
    });
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
                let (settings, ca) = tls_settings(t, &state, &format!("listener `{}`", l.name))?;
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
            approvals: approvals.clone(),
            auditors: config.admin.auditors.clone(),
            console: config.admin.console.clone().map(|c| {
                log::info!(
                    "web console on {}/console/ (sign-in with {})",
                    config.admin.public_url,
                    c.issuer
                );
                Arc::new(crate::console::Console::new(c, &config.admin.public_url))
            }),
        }),
    );
    let admin_addr = config.admin.address.to_string();
    match &config.admin.tls {
        Some(t) => {
            let (settings, _) = tls_settings(t, &state, "the admin listener")?;
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

    if !auth.issuers().is_empty() {
        server.add_service(pingora::services::background::background_service(
            "oidc keys",
            KeyRefresher(auth.clone()),
        ));
    }
    server.add_service(pingora::services::background::background_service(
        "approval expiry",
        crate::approval::Sweeper(approvals.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "drain",
        crate::drain::Drainer {
            recorder: recorder.clone(),
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "reload",
        crate::reload::Reloader {
            path,
            active: active.clone(),
            fixed: crate::reload::fixed_parts(&config),
        },
    ));
    server.add_service(proxy);
    server.add_service(admin);
    ready.set(true);
    server.run(pingora::server::RunArgs::default());
    if let Some(r) = &recorder {
        r.flush(std::time::Duration::from_secs(10));
    }
    crate::session_log::flush();
    Ok(())
}

/// Inbound TLS: Mozilla intermediate settings (TLS >= 1.2), ALPN h2 + http/1.1.
fn tls_settings(
    t: &ListenerTls,
    state: &std::path::Path,
    what: &str,
) -> Result<(TlsSettings, Option<std::path::PathBuf>), String> {
    let cert = match &t.cert_key {
        Some((c, k)) => ServingCert {
            cert: c.clone(),
            key: k.clone(),
            generated_ca: None,
        },
        None => tls::ensure_generated_cert(&state.join("tls"), &t.names)
            .map_err(|e| format!("{what}: generating a certificate: {e}"))?,
    };
    let cert_path = cert.cert.to_string_lossy();
    let key_path = cert.key.to_string_lossy();
    let load_err = |e: &dyn std::fmt::Display| {
        format!("{what}: cannot load certificate {cert_path} / key {key_path}: {e}")
    };
    let mut settings = match &t.client_ca {
        None => TlsSettings::intermediate(&cert_path, &key_path).map_err(|e| load_err(&e))?,
        Some(ca) => {
            // Mutual TLS: the handshake verifies a client certificate against `client_ca` and
            // the callback keeps its names for the identity check.
            let mut s = TlsSettings::with_callbacks(Box::new(RecordClientCert))
                .map_err(|e| load_err(&e))?;
            s.set_certificate_chain_file(&*cert_path)
                .map_err(|e| load_err(&e))?;
            s.set_private_key_file(&*key_path, SslFiletype::PEM)
                .map_err(|e| load_err(&e))?;
            s.check_private_key().map_err(|e| load_err(&e))?;
            s.set_ca_file(ca)
                .map_err(|e| format!("{what}: client_ca {}: {e}", ca.display()))?;
            let names = boring::x509::X509Name::load_client_ca_file(ca)
                .map_err(|e| format!("{what}: client_ca {}: {e}", ca.display()))?;
            s.set_client_ca_list(names);
            let mut mode = SslVerifyMode::PEER;
            if t.client_cert_required {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
            }
            s.set_verify(mode);
            s
        }
    };
    let min = match t.min_version {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    settings
        .set_min_proto_version(Some(min))
        .map_err(|e| format!("{what}: setting the minimum TLS version: {e}"))?;
    settings.enable_h2();
    settings.set_info_callback(shed_handshake_config);
    Ok((settings, cert.generated_ca))
}

/// Lets BoringSSL free a connection's copy of the handshake configuration (credentials,
/// cipher and verify settings, ~1.2 KiB) once its handshake is done: an open connection,
/// idle or holding a request that waits for approval, then keeps only its session state.
/// What is read later (version, cipher, peer certificate, SNI, ALPN) lives in the session.
fn shed_handshake_config(
    ssl: &pingora::tls::ssl::SslRef,
    mode: pingora::tls::ssl::SslInfoCallbackMode,
    _: pingora::tls::ssl::SslInfoCallbackValue,
) {
    use foreign_types::ForeignTypeRef;
    if mode == pingora::tls::ssl::SslInfoCallbackMode::HANDSHAKE_START {
        // SAFETY: `ssl` is the live connection this callback runs for; the call only sets a
        // flag BoringSSL acts on when the handshake completes (servers never renegotiate).
        unsafe { boring_sys::SSL_set_shed_handshake_config(ssl.as_ptr(), 1) };
    }
}
