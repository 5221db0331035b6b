//! A fast TLS mock of the OpenAI API for benchmarks and tests (HTTP/1.1 and HTTP/2).
//!
//! `GET /v1/models`; `POST /v1/chat/completions` answers JSON of about `--json-bytes`, or, when
//! the body has `"stream":true`, `--sse-events` SSE events `--sse-interval-ms` apart.
//! `--latency-ms` delays every response header. `GET /__mock/stats` reports TLS handshakes and
//! requests. Every response carries `x-mock-http-version`.
//!
//! cargo run --example mock_upstream -- --listen 127.0.0.1:9443 --cert c.pem --key k.pem

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Settings {
    latency: Duration,
    json_bytes: usize,
    sse_events: usize,
    sse_interval: Duration,
}

#[derive(Default)]
struct Stats {
    handshakes: AtomicU64,
    requests: AtomicU64,
}

struct CountHandshakes(Arc<Stats>);

#[async_trait]
impl TlsAccept for CountHandshakes {
    async fn handshake_complete_callback(
        &self,
        _ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.handshakes.fetch_add(1, Ordering::Relaxed);
        None
    }
}

struct Mock {
    settings: Settings,
    stats: Arc<Stats>,
    json_body: Bytes,
    options: HttpServerOptions,
}

fn chat_json(len: usize) -> Bytes {
    let filler = "lorem ipsum ".repeat(len / 12 + 1);
    let content = &filler[..len.saturating_sub(260).max(5)];
    Bytes::from(
        serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
        })
        .to_string(),
    )
}

/// CLOCK_MONOTONIC in nanoseconds: shared by all processes on the machine, so a client can
/// compute each event's transit time (Python's `time.monotonic_ns()` reads the same clock).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sse_event(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"mock-model\",\"t\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n",
        monotonic_ns()
    ))
}

impl Mock {
    async fn serve(&self, http: &mut ServerSession) -> pingora::Result<()> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut body = Vec::new();
        while let Some(chunk) = http.read_request_body().await? {
            body.extend_from_slice(&chunk);
        }
        let version = format!("{:?}", http.req_header().version);
        let path = http.req_header().uri.path().to_string();
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        let stream = wants_stream(&body);
        // Per-request overrides, so one mock serves every benchmark phase.
        let header_num = |name: &str, default: u64| {
            http.req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let events = header_num("x-mock-events", self.settings.sse_events as u64) as usize;
        let interval = Duration::from_millis(header_num(
            "x-mock-interval-ms",
            self.settings.sse_interval.as_millis() as u64,
        ));
        let (status, content_type, payload): (u16, &str, Option<Bytes>) = match path.as_str() {
            "/__mock/stats" => (
                200,
                "application/json",
                Some(Bytes::from(
                    serde_json::json!({
                        "handshakes": self.stats.handshakes.load(Ordering::Relaxed),
                        "requests": self.stats.requests.load(Ordering::Relaxed),
                    })
                    .to_string(),
                )),
            ),
            "/v1/models" => (
                200,
                "application/json",
                Some(Bytes::from_static(
                    br#"{"object":"list","data":[{"id":"mock-model","object":"model","created":0,"owned_by":"mock"}]}"#,
                )),
            ),
            "/v1/chat/completions" if stream => (200, "text/event-stream", None),
            "/v1/chat/completions" => (200, "application/json", Some(self.json_body.clone())),
            _ => (
                404,
                "application/json",
                Some(Bytes::from_static(br#"{"error":{"message":"mock: no such path","type":"invalid_request_error","code":null}}"#)),
            ),
        };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("x-mock-http-version", version)?;
        // `x-mock-trailer-echo`: a JSON answer ends with trailers that echo the credential the
        // mock received (HTTP/2 only), as a careless upstream might.
        let trailer_echo = http
            .req_header()
            .headers
            .contains_key("x-mock-trailer-echo")
            && http.req_header().version == http::Version::HTTP_2;
        match payload {
            Some(p) if trailer_echo => {
                http.write_response_header(Box::new(resp)).await?;
                http.write_response_body(p, false).await?;
                let mut trailers = http::HeaderMap::new();
                if let Some(auth) = http.req_header().headers.get("authorization").cloned() {
                    trailers.insert("x-echo-authorization", auth);
                }
                trailers.insert("x-mock-done", http::HeaderValue::from_static("1"));
                http.write_response_trailers(trailers).await?;
            }
            Some(p) => {
                resp.insert_header("content-length", p.len())?;
                http.write_response_header(Box::new(resp)).await?;
                http.write_response_body(p, true).await?;
            }
            None => {
                if http.req_header().version != http::Version::HTTP_2 {
                    resp.insert_header("transfer-encoding", "chunked")?;
                }
                http.write_response_header(Box::new(resp)).await?;
                for i in 0..events {
                    if i > 0 && !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                    http.write_response_body(sse_event(i), false).await?;
                }
                http.write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), true)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Whether a JSON request body asks for a stream (`"stream":true`, with or without a space).
fn wants_stream(body: &[u8]) -> bool {
    let s = String::from_utf8_lossy(body);
    s.contains("\"stream\":true") || s.contains("\"stream\": true")
}

#[async_trait]
impl HttpServerApp for Mock {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !http.read_request().await.ok()? {
            return None;
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if let Err(e) = self.serve(&mut http).await {
            eprintln!("mock_upstream: {e}");
            return None;
        }
        let persistent = pingora::apps::HttpPersistentSettings::for_session(&http);
        http.finish()
            .await
            .ok()?
            .map(|s| ReusedHttpStream::from_reusable_stream(s, persistent))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: String = arg(&args, "--listen", "127.0.0.1:9443".to_string());
    let cert: String = arg(&args, "--cert", String::new());
    let key: String = arg(&args, "--key", String::new());
    let threads: usize = arg(&args, "--threads", 1);
    let settings = Settings {
        latency: Duration::from_millis(arg(&args, "--latency-ms", 0)),
        json_bytes: arg(&args, "--json-bytes", 2048),
        sse_events: arg(&args, "--sse-events", 20),
        sse_interval: Duration::from_millis(arg(&args, "--sse-interval-ms", 0)),
    };
    let no_h2 = args.iter().any(|a| a == "--no-h2");
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let stats = Arc::new(Stats::default());
    let mut options = HttpServerOptions::default();
    options.h2c = false;
    let app = Mock {
        json_body: chat_json(settings.json_bytes),
        settings,
        stats: stats.clone(),
        options,
    };
    let mut service = Service::new("mock upstream".to_string(), app);
    let mut tls =
        TlsSettings::with_callbacks(Box::new(CountHandshakes(stats))).expect("tls settings");
    tls.set_certificate_chain_file(&cert)
        .expect("--cert: a PEM chain");
    tls.set_private_key_file(&key, pingora::tls::ssl::SslFiletype::PEM)
        .expect("--key: a PEM key");
    if !no_h2 {
        tls.enable_h2();
    }
    service.add_tls_with_settings(&listen, None, tls);
    server.add_service(service);
    eprintln!("mock_upstream listening on https://{listen}");
    server.run_forever();
}
