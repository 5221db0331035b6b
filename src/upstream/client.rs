//! HTTPS requests for OIDC discovery and JWKS (and `sessions replay --resend`), over pingora's
//! own connector with the same checks as an upstream: chain and host name verified (system
//! roots plus the configured `ca_file`), TLS >= 1.2, IP SANs for IP-literal hosts. It implements
//! `openidconnect`'s async HTTP client.

use crate::config::{TlsVersion, Upstream};
use crate::upstream::UpstreamTarget;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use std::path::PathBuf;
use std::time::Duration;

/// Discovery documents and key sets are small; anything larger is refused.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

pub struct Fetcher {
    ca_file: Option<PathBuf>,
    timeout: Duration,
    connector: Connector,
    /// Plain `http://` to a loopback address is allowed (the CLI talking to a local admin
    /// listener); never for identity providers or webhooks.
    loopback_http: bool,
}

impl Fetcher {
    pub fn new(ca_file: Option<PathBuf>, timeout: Duration) -> Fetcher {
        Fetcher {
            ca_file,
            timeout,
            connector: Connector::new(None),
            loopback_http: false,
        }
    }

    /// Also allows `http://` to 127.0.0.0/8, ::1 and localhost.
    pub fn with_loopback_http(mut self) -> Fetcher {
        self.loopback_http = true;
        self
    }

    /// Sends `req` (a GET) and returns the whole response, within the fetch timeout.
    pub async fn send(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, FetchError> {
        let what = format!("{} {}", req.method(), req.uri());
        match tokio::time::timeout(self.timeout, self.get(&req)).await {
            Ok(r) => r.map_err(|e| FetchError(format!("{what}: {e}"))),
            Err(_) => Err(FetchError(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn get(&self, req: &http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, String> {
        let uri = req.uri();
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.loopback_http && loopback => false,
            _ if self.loopback_http => {
                return Err("only https:// URLs, or http:// on loopback, are fetched".into())
            }
            _ => return Err("only https:// URLs are fetched".into()),
        };
        let up = Upstream {
            url: uri.to_string(),
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            base_path: String::new(),
            ca_file: self.ca_file.clone(),
            pins_sha256: Vec::new(),
            http2: false,
            min_tls_version: TlsVersion::Tls12,
            connect_timeout: self.timeout,
            read_timeout: self.timeout,
            write_timeout: self.timeout,
            idle_timeout: self.timeout,
        };
        let target = UpstreamTarget::new("identity", &up)?;
        let peer = target.peer().await?;
        let (mut session, _) = self
            .connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if tls {
            let ssl = session
                .digest()
                .and_then(|d| d.ssl_digest.clone())
                .ok_or("the connection has no TLS evidence")?;
            target
                .check_evidence(&up, &ssl)
                .map_err(|(_, why)| format!("TLS refused: {why}"))?;
        }
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut head = RequestHeader::build(req.method().as_str(), pq.as_bytes(), None)
            .map_err(|e| e.to_string())?;
        let set = |h: &mut RequestHeader, k: &'static str, v: &str| {
            h.insert_header(k, v).map_err(|e| e.to_string())
        };
        set(&mut head, "host", &up.authority())?;
        for (k, v) in req.headers() {
            if k != http::header::HOST && k != http::header::CONNECTION {
                head.insert_header(k.clone(), v.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        if !req.body().is_empty() {
            set(&mut head, "content-length", &req.body().len().to_string())?;
        }
        set(
            &mut head,
            "user-agent",
            concat!("agentgate/", env!("CARGO_PKG_VERSION")),
        )?;
        set(&mut head, "connection", "close")?;
        session
            .write_request_header(Box::new(head))
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        if !req.body().is_empty() {
            session
                .write_request_body(bytes::Bytes::from(req.body().clone()), true)
                .await
                .map_err(|e| format!("sending the body: {e}"))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        session
            .read_response_header()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let head = session
            .response_header()
            .ok_or("no response header")?
            .clone();
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(format!("the response is larger than {MAX_BODY} bytes"));
            }
        }
        let mut resp = http::Response::builder().status(head.status);
        for (k, v) in head.headers.iter() {
            resp = resp.header(k, v);
        }
        resp.body(body).map_err(|e| e.to_string())
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Fetcher {
    type Error = FetchError;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, FetchError>>
                + Send
                + 'c,
        >,
    >;
    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
