//! MCP routes in the proxy: a POST's JSON-RPC messages are decided before anything goes
//! upstream (who may call which tool, read which resource, get which prompt; the client
//! capabilities the route denies are taken out of `initialize`), and the server's answers (a
//! JSON body or an SSE stream, the POST's or a GET stream's) are filtered message by message
//! (list answers, denied server requests). GET streams and DELETE pass with the route's access
//! rule; `Mcp-Session-Id` and `MCP-Protocol-Version` pass both ways untouched.
//!
//! On the SSE transport of 2024-11-05 answers travel on the GET stream: there a refused POST
//! sends a `ping` with the refused ids in its place and the errors are written over the ping's
//! answers on the stream (`mcp/sse_transport.rs`); a messages endpoint serves only the caller
//! who opened its stream.
//!
//! Invariant: a refused request sends nothing upstream and gets JSON-RPC errors (HTTP 200, or on
//! the SSE transport on its stream), not an HTTP error, so MCP clients surface them as tool
//! errors.

use super::error::ApiError;
use super::exchange::Exchange;
use super::headers::{self, per_request_value, X_REQUEST_ID};
use super::routes::RouteRuntime;
use super::Gateway;
use crate::config::McpRoute;
use crate::mcp::filter::{self, Awaited};
use crate::mcp::jsonrpc::{self, Kind};
use crate::mcp::pins::{Pins, Seen};
use crate::mcp::sse_transport::{self, Sessions};
use crate::mcp::stream::{Framing, MessageStream};
use crate::metrics;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// At most this many distinct tool names per route become metric labels (then `other`).
const TOOL_LABELS: usize = 256;

/// What an MCP route keeps across requests.
#[derive(Default)]
pub struct McpRuntime {
    tool_labels: Mutex<HashSet<String>>,
    /// Tool descriptions from the server's `tools/list` answers (what approvers see beside a
    /// held call), at most `TOOL_LABELS` tools, each cut to 1,000 characters.
    descriptions: Mutex<HashMap<String, String>>,
    /// The route's open SSE-transport streams, by messages endpoint.
    sse: Mutex<Sessions>,
}

/// An SSE-transport stream's endpoint, registered while the stream is open.
pub struct SseStream {
    runtime: Arc<McpRuntime>,
    endpoint: String,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        locked(&self.runtime.sse).close(&self.endpoint);
    }
}

/// Who a caller is, as SSE-transport streams are owned.
fn owner(ctx: &Exchange) -> String {
    ctx.identity
        .as_ref()
        .map(|w| format!("{} {}", w.issuer, w.subject))
        .unwrap_or_default()
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl McpRuntime {
    /// Keeps the description of a tool the server listed.
    fn describe(&self, tool: &Value) {
        let (Some(name), Some(d)) = (
            tool.get("name").and_then(Value::as_str),
            tool.get("description").and_then(Value::as_str),
        ) else {
            return;
        };
        let mut map = locked(&self.descriptions);
        if map.len() < TOOL_LABELS || map.contains_key(name) {
            let cut: String = d.chars().take(1000).collect();
            map.insert(name.to_string(), cut);
        }
    }

    /// The descriptions of `tools` the server gave last time it listed them.
    pub fn descriptions(&self, tools: &[ToolCall]) -> Vec<(String, String)> {
        let map = locked(&self.descriptions);
        tools
            .iter()
            .filter_map(|t| map.get(&t.tool).map(|d| (t.tool.clone(), d.clone())))
            .collect()
    }

    /// The metric label of `tool`: its name while the route has seen fewer than 256 names.
    fn label(&self, tool: &str) -> String {
        let mut seen = locked(&self.tool_labels);
        if seen.contains(tool) || (seen.len() < TOOL_LABELS && tool.len() <= 128) {
            seen.insert(tool.to_string());
            return tool.to_string();
        }
        "other".into()
    }

    pub fn count(&self, route: &str, tool: &str, outcome: &str) {
        metrics::MCP_CALLS
            .with_label_values(&[route, &self.label(tool), outcome])
            .inc();
    }
}

/// The pinned tool definitions of every MCP route with `pin_definitions`, kept in
/// `state_dir/mcp-pins.json` (written again on every change: first sight, change, acceptance).
/// One per process, opened at start-up; shared by the proxy and the admin API.
pub struct PinStore {
    pins: Mutex<Pins>,
    path: std::path::PathBuf,
}

static PINS: std::sync::OnceLock<Arc<PinStore>> = std::sync::OnceLock::new();

impl PinStore {
    /// Opens (or starts) the pin file and makes it the process's store.
    pub fn open(path: std::path::PathBuf) -> Result<Arc<PinStore>, String> {
        let pins = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: not a pin file: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pins::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let store = Arc::new(PinStore {
            pins: Mutex::new(pins),
            path,
        });
        Ok(PINS.get_or_init(|| store).clone())
    }

    /// The process's store (`None` before start-up opened it: unit tests, `check`).
    pub fn get() -> Option<&'static Arc<PinStore>> {
        PINS.get()
    }

    fn save(&self, pins: &Pins) {
        let tmp = self.path.with_extension("json.tmp");
        let r = serde_json::to_vec_pretty(pins)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = r {
            log::error!("mcp: cannot write {}: {e}", self.path.display());
        }
    }

    /// Whether a listed tool is shown: pinned at first sight; a changed definition is hidden
    /// (logged and counted the first time it is seen).
    fn shown(&self, route: &str, tool: &Value) -> bool {
        let mut pins = locked(&self.pins);
        let seen = pins.observe(route, tool);
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        match seen {
            Seen::Pinned => {
                self.save(&pins);
                true
            }
            Seen::Same => !pins.refused(route, name),
            Seen::Changed { new, fields } => {
                if new {
                    self.save(&pins);
                    metrics::MCP_DEFINITION_CHANGES
                        .with_label_values(&[route])
                        .inc();
                    log::warn!(
                        "mcp: route `{route}`: the server changed the definition of tool `{}` ({}); it is hidden and its calls refused until accepted (agentgate mcp accept {route} {})",
                        crate::mcp::access::cut(name),
                        if fields.is_empty() { "more tools than can be pinned".to_string() } else { format!("{} changed", fields.join(", ")) },
                        crate::mcp::access::cut(name),
                    );
                }
                false
            }
        }
    }

    pub fn refused(&self, route: &str, tool: &str) -> bool {
        locked(&self.pins).refused(route, tool)
    }

    /// Accepts a changed definition (the admin API).
    pub fn accept(&self, route: &str, tool: &str, by: &str) -> Result<Value, String> {
        let mut pins = locked(&self.pins);
        let d = pins.accept(route, tool)?;
        self.save(&pins);
        log::info!(
            "mcp: route `{route}`: {by} accepted the new definition of tool `{}`",
            crate::mcp::access::cut(tool)
        );
        Ok(serde_json::json!({"route": route, "tool": tool, "sha256": d.sha256}))
    }

    /// Every pin (the admin API).
    pub fn list(&self) -> Value {
        serde_json::to_value(&*locked(&self.pins)).unwrap_or(Value::Null)
    }
}

/// One tool call of a POST, for metrics and the record.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub tool: String,
}

/// The MCP side of one exchange.
#[derive(Default)]
pub struct McpExchange {
    /// The ids of the POST's requests (to answer each when the whole POST is refused).
    ids: Vec<Value>,
    batch: bool,
    /// The list requests whose answers are filtered.
    awaited: Awaited,
    pub calls: Vec<ToolCall>,
    /// The answer's filter, once the response header said how it is framed.
    stream: Option<MessageStream>,
    /// This answer is an SSE-transport stream that announced its messages endpoint.
    sse_stream: Option<SseStream>,
    /// This POST went to an SSE-transport messages endpoint (its path and query).
    sse_post: Option<String>,
    /// What goes upstream is the gateway's stand-in for refused requests, not the agent's body
    /// (the record keeps the agent's).
    pub stand_in: bool,
}

/// What the decision on a POST came to.
pub enum Decided {
    /// Forward this body (the agent's, or with `initialize` capabilities taken out).
    Forward(Vec<u8>),
    /// The request was answered here.
    Answered,
    /// Refused on an SSE-transport session: forward this stand-in as it is (no masking, no
    /// approval rule); the errors reach the client on its stream.
    StandIn(Vec<u8>),
}

impl Gateway {
    /// Decides on an MCP POST body: refused requests are answered here with JSON-RPC errors.
    pub(super) async fn decide_mcp(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
        route: &RouteRuntime,
        policy: &McpRoute,
        body: Vec<u8>,
    ) -> Result<Decided, ApiError> {
        let name = &route.route.name;
        if let Err(e) = crate::mask::json::validate(&body) {
            let v = jsonrpc::error(&Value::Null, jsonrpc::PARSE_ERROR, &e.to_string(), None);
            write_jsonrpc(session, &ctx.id, 400, &v).await;
            ctx.error = Some(refused("mcp_invalid_json", e.to_string()));
            return Ok(Decided::Answered);
        }
        let mut parsed = match jsonrpc::parse(&body) {
            Ok(p) => p,
            Err(why) => {
                let v = jsonrpc::error(&Value::Null, jsonrpc::PARSE_ERROR, &why, None);
                write_jsonrpc(session, &ctx.id, 400, &v).await;
                ctx.error = Some(refused("mcp_invalid_json", why));
                return Ok(Decided::Answered);
            }
        };
        let groups = ctx
            .identity
            .as_ref()
            .map(|w| w.groups.clone())
            .unwrap_or_default();
        let sse_post = route.mcp.as_ref().and_then(|rt| {
            let pq = session.req_header().uri.path_and_query()?.as_str();
            let sessions = locked(&rt.sse);
            let who = sessions.owner(pq)?;
            Some((pq.to_string(), who == owner(ctx)))
        });
        if let Some((_, false)) = sse_post {
            return Err(ApiError::new(
                403,
                "permission_error",
                "mcp_session_not_yours",
                format!("this MCP session's stream on route `{name}` was opened by another caller; open your own (GET the SSE endpoint)"),
            ));
        }
        let mcp = McpExchange {
            sse_post: sse_post.map(|(pq, _)| pq),
            ids: parsed
                .messages
                .iter()
                .filter(|m| jsonrpc::kind(m) == Kind::Request)
                .filter_map(|m| jsonrpc::id(m).cloned())
                .collect(),
            batch: parsed.batch,
            awaited: Awaited::of(&parsed.messages),
            calls: parsed
                .messages
                .iter()
                .filter(|m| jsonrpc::method(m) == Some("tools/call"))
                .filter_map(|m| m.pointer("/params/name").and_then(Value::as_str))
                .map(|t| ToolCall {
                    tool: t.to_string(),
                })
                .collect(),
            stream: None,
            sse_stream: None,
            stand_in: false,
        };
        let mut refusals = Vec::new();
        let mut refused_tools = Vec::new();
        for m in &parsed.messages {
            match jsonrpc::kind(m) {
                Kind::Request => {
                    let changed = policy.pin_definitions
                        && jsonrpc::method(m) == Some("tools/call")
                        && m.pointer("/params/name")
                            .and_then(Value::as_str)
                            .zip(PinStore::get())
                            .is_some_and(|(t, p)| p.refused(name, t));
                    let verdict = if changed {
                        let tool = m
                            .pointer("/params/name")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        Err(crate::mcp::access::Refusal {
                            code: jsonrpc::REFUSED,
                            message: format!(
                                "tool `{}` on route `{name}` changed its definition since it was pinned; its calls are refused until someone accepts the change (agentgate)",
                                crate::mcp::access::cut(tool)
                            ),
                            reason: "tool_definition_changed",
                        })
                    } else {
                        crate::mcp::access::check(policy, name, &groups, m)
                    };
                    if let Err(r) = verdict {
                        if jsonrpc::method(m) == Some("tools/call") {
                            if let Some(t) = m.pointer("/params/name").and_then(Value::as_str) {
                                refused_tools.push(t.to_string());
                            }
                        }
                        refusals.push((jsonrpc::id(m).cloned().unwrap_or(Value::Null), r));
                    }
                }
                Kind::Invalid => {
                    let why =
                        "a message that is neither a JSON-RPC request, notification nor response"
                            .to_string();
                    let v = jsonrpc::error(&Value::Null, jsonrpc::INVALID_REQUEST, &why, None);
                    write_jsonrpc(session, &ctx.id, 400, &v).await;
                    ctx.error = Some(refused("mcp_invalid_message", why));
                    return Ok(Decided::Answered);
                }
                _ => {}
            }
        }
        if !refusals.is_empty() {
            if let Some(rt) = route.mcp.as_deref() {
                for c in &mcp.calls {
                    let changed = refusals
                        .iter()
                        .any(|(_, r)| r.reason == "tool_definition_changed");
                    let outcome = if refused_tools.contains(&c.tool) && changed {
                        "changed_definition"
                    } else if refused_tools.contains(&c.tool) {
                        "refused"
                    } else {
                        "not_sent"
                    };
                    rt.count(name, &c.tool, outcome);
                }
            }
            let answers: Vec<Value> = mcp
                .ids
                .iter()
                .map(|id| match refusals.iter().find(|(rid, _)| rid == id) {
                    Some((_, r)) => jsonrpc::error(
                        id,
                        r.code,
                        &r.message,
                        Some(serde_json::json!({"agentgate": r.reason})),
                    ),
                    None => jsonrpc::error(
                        id,
                        jsonrpc::REFUSED,
                        "not sent: another request of this batch was refused",
                        Some(serde_json::json!({"agentgate": "batch_refused"})),
                    ),
                })
                .collect();
            let v = if mcp.batch {
                Value::Array(answers)
            } else {
                answers.into_iter().next().unwrap_or(Value::Null)
            };
            log::info!(
                "mcp: route `{name}` refused {} for {}: {}",
                refusals
                    .iter()
                    .map(|(_, r)| r.reason)
                    .collect::<Vec<_>>()
                    .join(", "),
                ctx.identity
                    .as_ref()
                    .map(|w| w.subject.as_str())
                    .unwrap_or("?"),
                refusals
                    .iter()
                    .map(|(_, r)| r.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            // The record shows what was refused (the writer masks it like every body).
            if let Some(c) = ctx.capture.as_mut() {
                c.request_chunk(&Bytes::from(body));
            }
            ctx.error = Some(refused(refusals[0].1.reason, refusals[0].1.message.clone()));
            let mut mcp = mcp;
            if let Some(stand_in) = on_stream(route, &mut mcp, &v)? {
                ctx.mcp = Some(Box::new(mcp));
                return Ok(Decided::StandIn(stand_in));
            }
            write_jsonrpc(session, &ctx.id, 200, &v).await;
            ctx.mcp = Some(Box::new(mcp));
            return Ok(Decided::Answered);
        }
        let mut stripped = Vec::new();
        for m in parsed.messages.iter_mut() {
            stripped.extend(crate::mcp::access::strip_denied_capabilities(policy, m));
        }
        ctx.mcp = Some(Box::new(mcp));
        if stripped.is_empty() {
            Ok(Decided::Forward(body))
        } else {
            log::info!(
                "mcp: route `{name}` denies the server {}; taken out of the client's initialize",
                stripped.join(", ")
            );
            Ok(Decided::Forward(parsed.to_bytes()))
        }
    }

    /// Answers an MCP POST with `err` as JSON-RPC errors (one per request in it) when the body
    /// was read as MCP, else as the usual HTTP error.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Box<Exchange>,
        err: ApiError,
    ) -> pingora::Result<bool> {
        let Some(mcp) = ctx.mcp.as_ref() else {
            return self.answer(session, ctx, err).await;
        };
        let data = match err.detail.as_deref() {
            Some((k, d)) => serde_json::json!({"agentgate": err.code, *k: d}),
            None => serde_json::json!({"agentgate": err.code}),
        };
        let answers: Vec<Value> = mcp
            .ids
            .iter()
            .map(|id| jsonrpc::error(id, jsonrpc::REFUSED, &err.message, Some(data.clone())))
            .collect();
        let v = if mcp.batch {
            Value::Array(answers)
        } else {
            answers.into_iter().next().unwrap_or(Value::Null)
        };
        if let (Some(rt), Some(route)) = (
            ctx.route.as_ref().and_then(|r| r.mcp.clone()),
            ctx.route.clone(),
        ) {
            let outcome = match err.code {
                "approval_denied" => "denied",
                "approval_expired" => "expired",
                _ => "approval_refused",
            };
            for c in &mcp.calls {
                rt.count(&route.route.name, &c.tool, outcome);
            }
        }
        let stand_in = match (ctx.route.clone(), ctx.mcp.as_mut()) {
            (Some(route), Some(mcp)) => match on_stream(&route, mcp, &v) {
                Ok(s) => s,
                Err(e) => return self.answer(session, ctx, e).await,
            },
            _ => None,
        };
        if let Some(body) = stand_in {
            ctx.error = Some(err);
            return self.forward_decided(session, ctx, body).await;
        }
        write_jsonrpc(session, &ctx.id, 200, &v).await;
        ctx.error = Some(err);
        Ok(true)
    }
}

/// On an SSE-transport session, keeps the answers `v` (one error or a batch of them) to be
/// written over the server's answers to the stand-in, and returns the stand-in to forward;
/// `None` on any other POST (the answers go in the POST's own answer).
fn on_stream(
    route: &RouteRuntime,
    mcp: &mut McpExchange,
    v: &Value,
) -> Result<Option<Vec<u8>>, ApiError> {
    let (Some(endpoint), Some(rt)) = (mcp.sse_post.as_deref(), route.mcp.as_ref()) else {
        return Ok(None);
    };
    let answers = match v {
        Value::Array(a) => a.as_slice(),
        one => std::slice::from_ref(one),
    };
    let mut sessions = locked(&rt.sse);
    for a in answers {
        let id = jsonrpc::id(a).cloned().unwrap_or(Value::Null);
        if !sessions.refuse(endpoint, &id, a.clone()) {
            return Err(ApiError::new(
                429,
                "rate_limit_error",
                "mcp_stream_unavailable",
                format!(
                    "route `{}` refused this request and cannot answer it on the session's stream (closed, or {} refusals already waiting there)",
                    route.route.name,
                    sse_transport::MAX_PENDING
                ),
            ));
        }
    }
    mcp.stand_in = true;
    Ok(Some(sse_transport::stand_in(&mcp.ids)))
}

/// Counts the tool calls of a POST that goes upstream.
pub fn count_forwarded(ctx: &Exchange) {
    let (Some(mcp), Some(route)) = (ctx.mcp.as_ref(), ctx.route.as_ref()) else {
        return;
    };
    if let Some(rt) = route.mcp.as_ref() {
        for c in &mcp.calls {
            rt.count(&route.route.name, &c.tool, "allowed");
        }
    }
}

/// The error kept for the session line and the record of a request refused as MCP (the agent
/// got JSON-RPC errors).
fn refused(code: &'static str, message: String) -> ApiError {
    ApiError::new(200, "invalid_request_error", code, message)
}

/// Writes a JSON answer the gateway makes itself (JSON-RPC, or metadata).
async fn write_jsonrpc(session: &mut Session, request_id: &str, status: u16, v: &Value) {
    let body = Bytes::from(v.to_string());
    let Ok(mut resp) = ResponseHeader::build(status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if let Ok(v) = per_request_value(request_id) {
        let _ = resp.insert_header(X_REQUEST_ID, v);
    }
    if let Err(e) = session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
    {
        log::debug!("could not send a JSON-RPC answer to the agent: {e}");
    }
}

/// Sets up the filter of an MCP route's answer from its response header: SSE streams always
/// (a server request the route denies may come in any of them), JSON bodies when they answer a
/// list request. A filtered body's length may change: `Content-Length` goes.
pub fn start_response(
    resp: &mut ResponseHeader,
    ctx: &mut Exchange,
    max: u64,
) -> pingora::Result<()> {
    if ctx.route.as_ref().is_none_or(|r| r.route.mcp.is_none()) {
        return Ok(());
    }
    let ct = headers::content_type(&resp.headers);
    let mcp = ctx.mcp.get_or_insert_with(Default::default);
    let framing = if ct.starts_with("text/event-stream") {
        Framing::Sse
    } else if ct.contains("json") && !mcp.awaited.is_empty() {
        Framing::Json
    } else {
        return Ok(());
    };
    mcp.stream = Some(MessageStream::new(framing, max as usize));
    resp.remove_header(&header::CONTENT_LENGTH);
    if resp.version != http::Version::HTTP_2 {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Filters one chunk of an MCP route's answer in place (before masking sees it).
pub fn filter_response(ctx: &mut Exchange, body: &mut Option<Bytes>, end: bool) {
    let (Some(route), Some(mcp)) = (ctx.route.clone(), ctx.mcp.as_mut()) else {
        return;
    };
    let (Some(policy), Some(stream)) = (route.route.mcp.as_ref(), mcp.stream.as_mut()) else {
        return;
    };
    let groups = ctx
        .identity
        .as_ref()
        .map(|w| w.groups.as_slice())
        .unwrap_or(&[]);
    let runtime = route.mcp.clone();
    let pins = PinStore::get().filter(|_| policy.pin_definitions);
    let name = route.route.name.as_str();
    let mut all = |t: &Value| {
        if let Some(p) = pins {
            if !p.shown(name, t) {
                return false;
            }
        }
        if let Some(rt) = &runtime {
            rt.describe(t);
        }
        true
    };
    let sse_endpoint = mcp.sse_stream.as_ref().map(|s| s.endpoint.as_str());
    let mut f = |m: &mut Value| {
        // The answer to a stand-in: the refusal it stands for.
        if let (Some(ep), Some(rt)) = (sse_endpoint, runtime.as_ref()) {
            if let Some(error) = locked(&rt.sse).answer(ep, m) {
                *m = error;
                return filter::Verdict::Changed;
            }
        }
        filter::server_message(policy, groups, m, &mut all)
    };
    let chunk = body.as_deref().unwrap_or(&[]);
    let before = stream.dropped.len();
    let out = stream.push(chunk, end, &mut f);
    for method in &stream.dropped[before..] {
        log::info!("mcp: route `{}` dropped a `{method}` request from the server (denied by mcp.server_requests)", route.route.name);
        metrics::MCP_SERVER_REQUESTS_DROPPED
            .with_label_values(&[&route.route.name, method])
            .inc();
    }
    let announced = stream.endpoint.take();
    *body = Some(Bytes::from(out));
    if let (Some(data), Some(rt)) = (announced, route.mcp.clone()) {
        let Some(endpoint) = sse_transport::path_and_query(&data) else {
            return;
        };
        let who = owner(ctx);
        let opened = locked(&rt.sse).open(&endpoint, &who);
        if !opened {
            log::warn!(
                "mcp: route `{}` has {} SSE-transport streams open; this one's refusals are answered in the POST (its client may not read them)",
                route.route.name,
                sse_transport::MAX_SESSIONS
            );
            return;
        }
        if let Some(mcp) = ctx.mcp.as_mut() {
            mcp.sse_stream = Some(SseStream {
                runtime: rt,
                endpoint,
            });
        }
    }
}

/// The gateway's origin as this request reached it (`None`: a Host that is not a plain authority).
fn origin_of(session: &Session) -> Option<String> {
    let req = session.req_header();
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    crate::mcp::oauth::origin(tls, host)
}

/// The MCP route with `oauth` that a path (and the request's Host) falls in.
fn oauth_route(
    active: &super::routes::Active,
    session: &Session,
    path: &str,
) -> Option<Arc<RouteRuntime>> {
    let host = headers::request_host(session.req_header());
    active
        .match_route(host.as_deref(), path)
        .filter(|r| r.route.mcp.as_ref().is_some_and(|m| m.oauth.is_some()))
        .cloned()
}

/// Adds to a 401 on an MCP route with `oauth` where its protected-resource metadata is.
pub fn point_at_metadata(session: &Session, active: &super::routes::Active, err: &mut ApiError) {
    let path = session.req_header().uri.path();
    let (Some(route), Some(origin)) = (oauth_route(active, session, path), origin_of(session))
    else {
        return;
    };
    let url = crate::mcp::oauth::metadata_url(&origin, &route.route.path_prefix);
    err.challenge = Some(crate::mcp::oauth::challenge(err.challenge.as_deref(), &url));
}

/// On an MCP route whose `oauth.resource` is set, an OIDC token must be issued for that
/// resource (`aud`, RFC 8707): a token for another audience the issuer accepts is refused.
pub fn check_audience(
    session: &Session,
    route: &RouteRuntime,
    who: &crate::identity::Identity,
) -> Result<(), ApiError> {
    let Some(resource) = route
        .route
        .mcp
        .as_ref()
        .and_then(|m| m.oauth.as_ref())
        .and_then(|o| o.resource.as_deref())
    else {
        return Ok(());
    };
    if who.method != crate::identity::AuthMethod::Oidc {
        return Ok(());
    }
    let token = session
        .req_header()
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    if crate::mcp::oauth::audiences(token)
        .iter()
        .any(|a| a == resource)
    {
        return Ok(());
    }
    let why = format!(
        "the token was not issued for route `{}`'s resource {resource} (its `aud` does not name it); request one with resource={resource} (RFC 8707)",
        route.route.name
    );
    let mut e = ApiError::new(401, "authentication_error", "wrong_audience", why.clone());
    e.challenge = Some(format!(
        r#"Bearer realm="agentgate", error="invalid_token", error_description="{}""#,
        why.replace(['"', '\\'], "'")
    ));
    Err(e)
}

impl Gateway {
    /// `GET /.well-known/oauth-protected-resource[<route path>]`: the MCP route's metadata
    /// (RFC 9728), public like the issuer's own discovery documents.
    pub(super) async fn protected_resource_metadata(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<bool> {
        let active = self.active.get();
        let path = session.req_header().uri.path().to_string();
        let suffix = &path[crate::mcp::oauth::WELL_KNOWN.len()..];
        let route = if suffix.is_empty() {
            active
                .routes
                .iter()
                .find(|r| r.route.mcp.as_ref().is_some_and(|m| m.oauth.is_some()))
                .cloned()
        } else {
            oauth_route(&active, session, suffix).filter(|r| {
                r.route.path_prefix.trim_end_matches('/') == suffix.trim_end_matches('/')
            })
        };
        let (Some(route), Some(origin)) = (route, origin_of(session)) else {
            let e = ApiError::new(
                404,
                "invalid_request_error",
                "route_not_found",
                format!("no MCP route with `mcp.oauth` publishes metadata at {path}"),
            );
            return self.answer(session, ctx, e).await;
        };
        let (Some(policy), true) = (
            route.route.mcp.as_ref().and_then(|m| m.oauth.as_ref()),
            session.req_header().method == http::Method::GET,
        ) else {
            let e = ApiError::new(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "GET only",
            );
            return self.answer(session, ctx, e).await;
        };
        let resource = crate::mcp::oauth::resource(policy, &origin, &route.route.path_prefix);
        let v = crate::mcp::oauth::metadata(policy, &resource, &route.route.name);
        write_jsonrpc(session, &ctx.id, 200, &v).await;
        Ok(true)
    }
}
