//! MCP routes in the proxy: a POST's JSON-RPC messages are decided before anything goes
//! upstream (who may call which tool, read which resource, get which prompt; the client
//! capabilities the route denies are taken out of `initialize`), and the server's answers (a
//! JSON body or an SSE stream, the POST's or a GET stream's) are filtered message by message
//! (list answers, denied server requests). GET streams and DELETE pass with the route's access
//! rule; `Mcp-Session-Id` and `MCP-Protocol-Version` pass both ways untouched.
//!
//! Invariant: a refused request sends nothing upstream and gets JSON-RPC errors (HTTP 200), not
//! an HTTP error, so MCP clients surface them as tool errors.

use super::error::ApiError;
use super::exchange::Exchange;
use super::headers::{self, per_request_value, X_REQUEST_ID};
use super::routes::RouteRuntime;
use super::Gateway;
use crate::config::McpRoute;
use crate::mcp::filter::{self, Awaited};
use crate::mcp::jsonrpc::{self, Kind};
use crate::mcp::pins::{Pins, Seen};
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
}

/// What the decision on a POST came to.
pub enum Decided {
    /// Forward this body (the agent's, or with `initialize` capabilities taken out).
    Forward(Vec<u8>),
    /// The request was answered here.
    Answered,
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
        let mcp = McpExchange {
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
            write_jsonrpc(session, &ctx.id, 200, &v).await;
            // The record shows what was refused (the writer masks it like every body).
            if let Some(c) = ctx.capture.as_mut() {
                c.request_chunk(&Bytes::from(body));
            }
            ctx.error = Some(refused(refusals[0].1.reason, refusals[0].1.message.clone()));
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
        ctx: &mut Exchange,
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
        write_jsonrpc(session, &ctx.id, 200, &v).await;
        ctx.error = Some(err);
        Ok(true)
    }
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

/// Writes a JSON-RPC answer the gateway makes itself.
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
    let awaited = &mcp.awaited;
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
    let mut f = |m: &mut Value| filter::server_message(policy, groups, awaited, m, &mut all);
    let chunk = body.as_deref().unwrap_or(&[]);
    let before = stream.dropped.len();
    let out = stream.push(chunk, end, &mut f);
    for method in &stream.dropped[before..] {
        log::info!("mcp: route `{}` dropped a `{method}` request from the server (denied by mcp.server_requests)", route.route.name);
        metrics::MCP_SERVER_REQUESTS_DROPPED
            .with_label_values(&[&route.route.name, method])
            .inc();
    }
    *body = Some(Bytes::from(out));
}
