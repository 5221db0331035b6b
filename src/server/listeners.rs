//! Inbound TLS for the agents' listeners and the admin listener: the certificate (given or
//! generated), mutual TLS, the minimum version, ALPN, and shedding the handshake config.

use crate::config::{ListenerTls, TlsVersion};
use crate::identity::client_cert::RecordClientCert;
use crate::tls::{self, ServingCert};
use pingora::listeners::tls::TlsSettings;
use pingora::tls::ssl::{SslFiletype, SslVerifyMode, SslVersion};

/// Inbound TLS: Mozilla intermediate settings (TLS >= 1.2), ALPN h2 + http/1.1.
pub fn tls_settings(
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

/// Sets the admin listener's readiness once every agent listener accepts connections: Pingora
/// binds listeners when its services start, after `main` has handed over, so readiness set
/// before `run` would tell Kubernetes (and tests) to send traffic to a port not yet bound.
/// Reads the kernel's socket table rather than connecting, which a TLS listener would count as
/// a failed handshake.
pub struct ReadyWhenListening {
    pub addresses: Vec<std::net::SocketAddr>,
    pub ready: std::sync::Arc<crate::admin::Readiness>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReadyWhenListening {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            match listening_sockets() {
                Some(open)
                    if self
                        .addresses
                        .iter()
                        .all(|a| open.iter().any(|o| serves(o, a))) =>
                {
                    break
                }
                // No socket table to read (not Linux): the services have had time to bind.
                None => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    break;
                }
                Some(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                _ = shutdown.changed() => return,
            }
        }
        self.ready.set(true);
    }
}

/// Whether a listening socket at `open` takes connections to `want` (an unspecified address
/// listens on every address of its family; an IPv6 one on IPv4 too, unless v6only).
fn serves(open: &std::net::SocketAddr, want: &std::net::SocketAddr) -> bool {
    open.port() == want.port()
        && (open.ip() == want.ip()
            || (open.ip().is_unspecified() && (open.is_ipv6() || want.is_ipv4())))
}

/// The local addresses in the LISTEN state (/proc/net/tcp and tcp6), or `None` without them.
fn listening_sockets() -> Option<Vec<std::net::SocketAddr>> {
    let mut open = Vec::new();
    let mut any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        any = true;
        open.extend(text.lines().skip(1).filter_map(listening_socket));
    }
    any.then_some(open)
}

/// `  0: 0100007F:1F90 00000000:0000 0A ...` -> 127.0.0.1:8080 (state 0A is LISTEN). The
/// address is the kernel's in-memory words as hex: each 32-bit word little-endian.
fn listening_socket(line: &str) -> Option<std::net::SocketAddr> {
    let mut cols = line.split_whitespace();
    let local = cols.nth(1)?;
    let state = cols.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in 0..ip.len() / 8 {
        let w = u32::from_str_radix(ip.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some((ip, port).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_table_lines() {
        let table = [
            ("   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0", Some("127.0.0.1:8080")),
            ("   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1 1", None),
            ("   2: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000", Some("[::1]:8443")),
            ("   3: 00000000:20FB 00000000:0000 0A", Some("0.0.0.0:8443")),
            ("garbage", None),
        ];
        for (line, want) in table {
            assert_eq!(
                listening_socket(line),
                want.map(|w| w.parse().unwrap()),
                "{line}"
            );
        }
    }

    #[test]
    fn which_listener_serves_an_address() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(serves(&a("127.0.0.1:8443"), &a("127.0.0.1:8443")));
        assert!(!serves(&a("127.0.0.2:8443"), &a("127.0.0.1:8443")));
        assert!(!serves(&a("[::1]:8443"), &a("127.0.0.1:8443")));
        assert!(!serves(&a("127.0.0.1:8444"), &a("127.0.0.1:8443")));
        assert!(serves(&a("0.0.0.0:8443"), &a("127.0.0.1:8443")));
        assert!(serves(&a("[::]:8443"), &a("127.0.0.1:8443")));
        assert!(!serves(&a("0.0.0.0:8443"), &a("[::1]:8443")));
    }

    #[test]
    fn a_bound_listener_is_seen() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(addr) else {
                continue; // no IPv6 here
            };
            let at = l.local_addr().unwrap();
            assert!(
                listening_sockets().unwrap().iter().any(|o| serves(o, &at)),
                "{at}"
            );
        }
    }
}
