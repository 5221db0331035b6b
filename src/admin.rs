//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process is up) and
//! `/readyz` (routes loaded, listeners started, every OIDC issuer's keys loaded once;
//! 503 otherwise, with the reason).

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct AdminApp {
    pub ready: Arc<Readiness>,
    /// Not ready until every OIDC issuer's keys were loaded once.
    pub auth: Arc<crate::identity::Authenticator>,
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let plain = "text/plain; charset=utf-8";
        match session.req_header().uri.path() {
            "/metrics" => {
                let (body, content_type) = crate::metrics::render();
                text(200, &content_type, body)
            }
            "/healthz" => text(200, plain, b"ok\n".to_vec()),
            "/readyz" if !self.ready.get() => text(503, plain, b"not ready\n".to_vec()),
            "/readyz" => match self.auth.readiness() {
                Ok(()) => text(200, plain, b"ready\n".to_vec()),
                Err(why) => text(503, plain, format!("not ready: {why}\n").into_bytes()),
            },
            _ => text(
                404,
                plain,
                b"not found: try /metrics, /healthz or /readyz\n".to_vec(),
            ),
        }
    }
}
