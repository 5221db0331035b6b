//! TLS to PostgreSQL over the BoringSSL that pingora links (`pingora::tls`), as tokio-postgres's
//! `MakeTlsConnect`: the tree keeps one TLS library, and the database leg gets what every other
//! leg gets — TLS 1.2 at least, the peer's certificate verified against the system roots plus
//! `store.postgres.ca_file`, and its name (or IP) checked against the URL's host.
//!
//! Invariant: there is no setting that turns verification off; plaintext is `NoTls`, which the
//! configuration allows only to a loopback host.

use pingora::tls::ssl::{SslConnector, SslMethod, SslVersion};
use pingora::tls::tokio_ssl::SslStream;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes one verified TLS connector per connection, for the host that connection goes to.
#[derive(Clone)]
pub struct BoringTls {
    connector: SslConnector,
}

impl BoringTls {
    /// System roots plus `ca_file`, TLS >= 1.2, peer verification on.
    pub fn new(ca_file: Option<&Path>) -> Result<BoringTls, String> {
        let err = |what: &str, e: pingora::tls::error::ErrorStack| format!("{what}: {e}");
        let mut b = SslConnector::builder(SslMethod::tls())
            .map_err(|e| err("TLS library error making the database connector", e))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| err("TLS library error", e))?;
        if let Some(ca) = ca_file {
            b.set_ca_file(ca).map_err(|e| {
                format!(
                    "store.postgres.ca_file {}: not a readable PEM CA bundle: {e}",
                    ca.display()
                )
            })?;
        }
        Ok(BoringTls {
            connector: b.build(),
        })
    }
}

impl<S> MakeTlsConnect<S> for BoringTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = DbTlsStream<S>;
    type TlsConnect = HostTls;
    type Error = pingora::tls::error::ErrorStack;

    fn make_tls_connect(&mut self, domain: &str) -> Result<HostTls, Self::Error> {
        // SNI (for names) and the name or IP check, as for an upstream.
        let ssl = self.connector.configure()?.into_ssl(domain)?;
        Ok(HostTls { ssl })
    }
}

/// The TLS session for one connection, ready for its handshake.
pub struct HostTls {
    ssl: pingora::tls::ssl::Ssl,
}

impl<S> TlsConnect<S> for HostTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = DbTlsStream<S>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<DbTlsStream<S>, Self::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut s = SslStream::new(self.ssl, stream)?;
            Pin::new(&mut s).connect().await.map_err(|e| {
                let why: Box<dyn std::error::Error + Send + Sync> = match s.ssl().verify_result() {
                    Err(v) => format!("the database's certificate was refused: {v}").into(),
                    Ok(()) => format!("TLS handshake with the database failed: {e}").into(),
                };
                why
            })?;
            Ok(DbTlsStream(s))
        })
    }
}

/// A verified TLS connection to the database.
pub struct DbTlsStream<S>(SslStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for DbTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM's tls-server-end-point: the hash of the server's certificate (RFC 5929) with its
        // signature's digest (SHA-256 for MD5 and SHA-1), binding the password exchange to this
        // TLS session.
        let Some(cert) = self.0.ssl().peer_certificate() else {
            return ChannelBinding::none();
        };
        let digest = match cert
            .signature_algorithm()
            .object()
            .nid()
            .signature_algorithms()
        {
            Some(algs) => match pingora::tls::hash::MessageDigest::from_nid(algs.digest) {
                Some(d)
                    if d.type_() != pingora::tls::nid::Nid::MD5
                        && d.type_() != pingora::tls::nid::Nid::SHA1 =>
                {
                    d
                }
                _ => pingora::tls::hash::MessageDigest::sha256(),
            },
            None => return ChannelBinding::none(),
        };
        match cert.digest(digest) {
            Ok(d) => ChannelBinding::tls_server_end_point(d.to_vec()),
            Err(_) => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for DbTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DbTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
