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
    /// Not ready until every OIDC issuer's keys (of the active configuration) were loaded once.
    pub active: Arc<crate::proxy::ActiveConfig>,
    /// The record store, for `GET /v1/sessions[/{id}]`.
    pub records: Option<std::path::PathBuf>,
}

fn query_param<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

impl AdminApp {
    fn sessions(&self, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        let json = "application/json";
        let Some(dir) = &self.records else {
            return text(404, json, br#"{"error":"recording is off"}"#.to_vec());
        };
        use crate::record::store;
        if let Some(id) = path.strip_prefix("/v1/sessions/") {
            let entry = store::read_index(dir)
                .into_iter()
                .rev()
                .find(|e| e.id == id);
            return match entry.map(|e| store::read_record(dir, &e)) {
                Some(Ok(r)) => text(200, json, r.to_string().into_bytes()),
                Some(Err(e)) => text(
                    500,
                    json,
                    serde_json::json!({"error": e.to_string()})
                        .to_string()
                        .into_bytes(),
                ),
                None => text(404, json, br#"{"error":"no such session"}"#.to_vec()),
            };
        }
        let limit: usize = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let route = query_param(query, "route");
        let who = query_param(query, "identity");
        let conv = query_param(query, "conversation");
        let since: u64 = query_param(query, "since_ms")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let list: Vec<_> = store::read_index(dir)
            .into_iter()
            .rev()
            .filter(|e| e.ts_ms >= since)
            .filter(|e| route.is_none_or(|r| e.route.as_deref() == Some(r)))
            .filter(|e| who.is_none_or(|w| e.subject.as_deref() == Some(w)))
            .filter(|e| conv.is_none_or(|c| e.conversation == c))
            .take(limit)
            .collect();
        text(200, json, serde_json::to_vec(&list).unwrap_or_default())
    }
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
        let uri = session.req_header().uri.clone();
        if uri.path() == "/v1/sessions" || uri.path().starts_with("/v1/sessions/") {
            return self.sessions(uri.path(), uri.query());
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                let (body, content_type) = crate::metrics::render();
                text(200, &content_type, body)
            }
            "/healthz" => text(200, plain, b"ok\n".to_vec()),
            "/readyz" if !self.ready.get() || !crate::drain::armed() => {
                text(503, plain, b"not ready\n".to_vec())
            }
            "/readyz" if crate::drain::draining() => {
                text(503, plain, b"not ready: shutting down\n".to_vec())
            }
            "/readyz" => match self.active.get().auth.readiness() {
                Ok(()) => text(200, plain, b"ready\n".to_vec()),
                Err(why) => text(503, plain, format!("not ready: {why}\n").into_bytes()),
            },
            _ => text(
                404,
                plain,
                b"not found: try /metrics, /healthz, /readyz or /v1/sessions\n".to_vec(),
            ),
        }
    }
}
