//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process is up) and
//! `/readyz` (routes loaded, listeners started, every OIDC issuer's keys loaded once, the
//! PostgreSQL store's schema checked when there is one;
//! 503 otherwise, with the reason); and, for people, `/v1/approvals` (approvers decide) and
//! `/v1/sessions` (auditors read records), authenticated with the gateway's own identity
//! sources (OIDC token or service-account token as `Authorization: Bearer`) or the web
//! console's session; and the web console itself under `/console`.

mod api;
pub mod console;

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
    pub approvals: crate::approval::ApprovalStore,
    /// The PostgreSQL store (`store.postgres`): not ready until its schema is known.
    pub db: Option<Arc<crate::db::Database>>,
    /// Groups that may read sessions and every approval.
    pub auditors: Vec<String>,
    /// The web console (`admin.console`), when configured.
    pub console: Option<Arc<console::Console>>,
    /// DNS names the admin listener answers to (`admin.public_url`'s host, `admin.tls.names`,
    /// `localhost`), lowercase; IP literals are always answered.
    pub hosts: Vec<String>,
}

/// Whether a request's `Host` (or `:authority`) names this listener. A page on another site
/// that rebinds its own DNS name to 127.0.0.1 sends that name: refusing names the listener was
/// not given keeps `/metrics` and the rest from being read through a victim's browser. IP
/// literals need no DNS, so they cannot be rebound.
pub fn host_allowed(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || names.contains(&name)
}

const JSON: &str = "application/json";

pub fn json_error(status: u16, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    text(
        status,
        JSON,
        serde_json::json!({"error": {"message": message.to_string()}})
            .to_string()
            .into_bytes(),
    )
}

/// A query parameter, percent-decoded (`+` is a space); a key without `=` has the empty value.
pub fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every answer of the admin listener and the console: never cached.
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
        let host = uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
            session
                .req_header()
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        if !host_allowed(host.as_deref(), &self.hosts) {
            return text(
                421,
                plain,
                b"misdirected request: this admin listener answers to its own names only (admin.public_url, admin.tls.names, localhost, IP addresses)\n".to_vec(),
            );
        }
        let path = uri.path();
        if path == "/console" || path.starts_with("/console/") {
            let Some(console) = &self.console else {
                return json_error(404, "the web console is not configured (admin.console)");
            };
            let req = session.req_header();
            return console
                .handle(&req.method, path, uri.query(), &req.headers)
                .await;
        }
        let approvals = path == "/v1/approvals" || path.starts_with("/v1/approvals/");
        let sessions = path == "/v1/sessions" || path.starts_with("/v1/sessions/");
        let pins = path == "/v1/mcp/pins" || path.starts_with("/v1/mcp/pins/");
        if approvals || sessions || pins || path == "/v1/usage" {
            return self.api(session, path, uri.query()).await;
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                crate::metrics::REQUESTS_IN_FLIGHT.set(crate::shutdown::in_flight() as i64);
                crate::metrics::PSEUDONYM_VAULT_BYTES.set(crate::mask::vault::total_bytes() as i64);
                let (body, content_type) = crate::metrics::render();
                text(200, &content_type, body)
            }
            "/healthz" => text(200, plain, b"ok\n".to_vec()),
            "/readyz" => {
                // Every reason at once: a probe (or a person) sees all that is missing.
                let mut why = Vec::new();
                if crate::shutdown::draining() {
                    why.push("shutting down".to_string());
                } else if !self.ready.get() || !crate::shutdown::armed() {
                    why.push("the proxy's listeners are not open yet".to_string());
                }
                if let Err(e) = self.active.get().auth.readiness() {
                    why.push(e.to_string());
                }
                if let Some(w) = self.db.as_ref().and_then(|d| d.not_ready()) {
                    why.push(w);
                }
                match why.is_empty() {
                    true => text(200, plain, b"ready\n".to_vec()),
                    false => text(
                        503,
                        plain,
                        format!("not ready: {}\n", why.join("; ")).into_bytes(),
                    ),
                }
            }
            _ => text(
                404,
                plain,
                b"not found: try /metrics, /healthz, /readyz, /v1/approvals or /v1/sessions\n"
                    .to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn the_admin_listener_answers_to_its_own_names_only() {
        let names = vec!["agentgate-admin.example".to_string()];
        let cases: &[(Option<&str>, bool)] = &[
            (Some("127.0.0.1:9090"), true),
            (Some("10.1.2.3"), true),
            (Some("[::1]:9090"), true),
            (Some("localhost:9090"), true),
            (Some("LOCALHOST"), true),
            (Some("agentgate-admin.example"), true),
            (Some("Agentgate-Admin.example.:443"), true),
            // A rebinding page's own name, and near misses.
            (Some("rebind.attacker.example:9090"), false),
            (Some("localhost.attacker.example"), false),
            (Some("127.0.0.1.nip.io:9090"), false),
            (Some("agentgate-admin.example.attacker"), false),
            (Some("[not-an-ip]:9090"), false),
            (Some(""), false),
            (None, false),
        ];
        for (host, want) in cases {
            assert_eq!(host_allowed(*host, &names), *want, "{host:?}");
        }
    }
}
