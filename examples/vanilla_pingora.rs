//! The framework's floor for benchmarks: a minimal Pingora TLS -> TLS reverse proxy with the
//! same crates, thread count and upstream settings as agentgate, and nothing else.
//!
//! cargo run --release --example vanilla_pingora -- --listen 127.0.0.1:8444 --cert c.pem --key k.pem \
//!     --upstream 127.0.0.1:9443 --ca upstream-ca.pem --threads 2

use async_trait::async_trait;
use boring::x509::X509;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

struct Vanilla {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Vanilla {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn arg(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn main() {
    // The same allocator and tuning as agentgate (the lib's global allocator), so the
    // comparison measures what agentgate's code adds.
    agentgate::server::alloc::tune();
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads").parse().expect("--threads N");
    let upstream: std::net::SocketAddr = arg(&args, "--upstream")
        .parse()
        .expect("--upstream IP:PORT");
    let ca = std::fs::read(arg(&args, "--ca")).expect("--ca FILE");
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut peer = HttpPeer::new(upstream, true, upstream.ip().to_string());
    peer.options.verify_cert = true;
    // IP upstream: chain verified, name not (agentgate checks the IP SAN after the handshake).
    peer.options.verify_hostname = false;
    peer.options.alpn = ALPN::H1;
    peer.options.ca = Some(Arc::new(
        X509::stack_from_pem(&ca)
            .expect("CA PEM")
            .into_boxed_slice(),
    ));
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Vanilla { peer });
    let mut tls =
        TlsSettings::intermediate(&arg(&args, "--cert"), &arg(&args, "--key")).expect("cert/key");
    tls.enable_h2();
    proxy.add_tls_with_settings(&arg(&args, "--listen"), None, tls);
    server.add_service(proxy);
    server.run_forever();
}
