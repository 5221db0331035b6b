//! The upstream side of a route: a template `HttpPeer` (SNI, trust, ALPN, timeouts, pin
//! evidence hook) and a small DNS cache, so a request only clones the template.

pub mod client;

use crate::config::{TlsVersion, Upstream};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a resolved upstream address is reused before asking DNS again.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Facts about the upstream leaf certificate, attached to the TLS digest by the handshake
/// hook and checked in `connected_to_upstream` before any request byte is sent.
pub struct PeerCertFacts {
    /// SHA-256 of the SubjectPublicKeyInfo, compared with `pins_sha256`.
    pub spki_sha256: Option<[u8; 32]>,
    /// For an IP-literal upstream: whether the certificate has that IP in its subjectAltName.
    pub ip_matches: bool,
}

pub struct UpstreamTarget {
    template: HttpPeer,
    /// Set for IP-literal upstreams, whose certificate must carry this IP.
    pub expected_ip: Option<IpAddr>,
    host: String,
    port: u16,
    fixed: Option<SocketAddr>,
    cache: RwLock<Option<(SocketAddr, Instant)>>,
}

impl UpstreamTarget {
    pub fn new(route: &str, up: &Upstream) -> Result<UpstreamTarget, String> {
        let fixed = up
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, up.port));
        // A placeholder address until the first resolution; the template is never used as is.
        let placeholder = fixed.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], up.port)));
        let mut peer = HttpPeer::new(placeholder, up.tls, up.host.clone());
        let o = &mut peer.options;
        o.verify_cert = true;
        // BoringSSL matches the SNI against DNS names only; an IP-literal upstream is checked
        // against the certificate's IP SANs by the hook below (chain verification stays on).
        o.verify_hostname = fixed.is_none();
        o.alpn = if up.http2 { ALPN::H2H1 } else { ALPN::H1 };
        o.connection_timeout = Some(up.connect_timeout);
        o.total_connection_timeout = Some(up.connect_timeout);
        o.read_timeout = Some(up.read_timeout);
        o.write_timeout = Some(up.write_timeout);
        o.idle_timeout = Some(up.idle_timeout);
        if let Some(ca) = &up.ca_file {
            let store = crate::tls::trust_store_with(ca)
                .map_err(|e| format!("route `{route}`: upstream ca_file: {e}"))?;
            o.ca = Some(Arc::new(store.into_boxed_slice()));
        }
        let expected_ip = fixed.map(|a| a.ip());
        if up.tls && (!up.pins_sha256.is_empty() || expected_ip.is_some()) {
            o.upstream_tls_handshake_complete_hook = Some(Arc::new(move |ssl| {
                let cert = ssl.peer_certificate()?;
                let facts = PeerCertFacts {
                    spki_sha256: crate::tls::spki_sha256(&cert),
                    ip_matches: expected_ip.is_some_and(|ip| crate::tls::has_ip_san(&cert, ip)),
                };
                Some(Arc::new(facts) as Arc<dyn std::any::Any + Send + Sync>)
            }));
        }
        // Routes never share pooled connections: their trust and pins may differ.
        peer.group_key = fnv1a(route.as_bytes());
        Ok(UpstreamTarget {
            template: peer,
            expected_ip: if up.tls { expected_ip } else { None },
            host: up.host.clone(),
            port: up.port,
            fixed,
            cache: RwLock::new(None),
        })
    }

    /// Checks a connected upstream's TLS evidence (version, IP SAN, pins) before any request
    /// byte: `Err((code, why))`, where `code` is the error code the agent sees.
    pub fn check_evidence(
        &self,
        up: &Upstream,
        ssl: &SslDigest,
    ) -> Result<(), (&'static str, String)> {
        if !tls_version_ok(&ssl.version, up.min_tls_version) {
            let why = format!(
                "negotiated {} is below the minimum TLS version",
                ssl.version
            );
            return Err(("upstream_tls_failed", why));
        }
        let facts = ssl.extension.get::<PeerCertFacts>();
        if let Some(ip) = self.expected_ip {
            if !facts.is_some_and(|f| f.ip_matches) {
                let why = format!(
                    "the certificate is not valid for {ip} (no matching IP subjectAltName)"
                );
                return Err(("upstream_tls_failed", why));
            }
        }
        if !up.pins_sha256.is_empty() {
            let ok = facts
                .and_then(|f| f.spki_sha256)
                .is_some_and(|spki| up.pins_sha256.contains(&spki));
            if !ok {
                let why = "the certificate's public key matches none of pins_sha256".to_string();
                return Err(("upstream_pin_mismatch", why));
            }
        }
        Ok(())
    }

    pub async fn peer(&self) -> Result<Box<HttpPeer>, String> {
        let addr = match self.fixed {
            Some(a) => a,
            None => self.resolve().await?,
        };
        let mut p = Box::new(self.template.clone());
        p._address = PeerAddr::Inet(addr);
        Ok(p)
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(guard) = self.cache.read() {
            if let Some((addr, at)) = *guard {
                if at.elapsed() < DNS_TTL {
                    return Ok(addr);
                }
            }
        }
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve upstream host `{}`: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("upstream host `{}` resolved to no address", self.host))?;
        if let Ok(mut guard) = self.cache.write() {
            *guard = Some((found, Instant::now()));
        }
        Ok(found)
    }
}

pub fn tls_version_ok(version: &str, min: TlsVersion) -> bool {
    match version {
        "TLSv1.3" => true,
        "TLSv1.2" => min == TlsVersion::Tls12,
        _ => false,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_minimums() {
        assert!(tls_version_ok("TLSv1.3", TlsVersion::Tls13));
        assert!(tls_version_ok("TLSv1.2", TlsVersion::Tls12));
        assert!(!tls_version_ok("TLSv1.2", TlsVersion::Tls13));
        assert!(!tls_version_ok("TLSv1.1", TlsVersion::Tls12));
        assert!(!tls_version_ok("TLSv1", TlsVersion::Tls12));
    }
}
