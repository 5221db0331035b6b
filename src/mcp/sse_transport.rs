//! The SSE transport of MCP 2024-11-05 (`MCPServerSse`, the `mcp` package's `sse_client`): the
//! client opens a GET stream, whose first event (`event: endpoint`) names the URL it POSTs its
//! messages to; the server answers each POST with 202 and sends every answer on the GET stream.
//!
//! A request the gateway refuses there must still be answered where the client reads answers.
//! The gateway forwards a `ping` with the refused request's id in its place (nothing of the
//! refused request goes upstream; the server answers the POST 202 as usual) and writes the
//! refusal's JSON-RPC error over the ping's answer when it comes back on the stream
//! (`Sessions::refuse`, then `Sessions::answer`).
//!
//! Invariants:
//! - A messages endpoint serves only the caller who opened its stream (`Sessions::owner`).
//! - Bounded: at most `MAX_SESSIONS` streams per route, `MAX_PENDING` refusals per stream; a
//!   stream's refusals go with it (`Sessions::close`).

use super::jsonrpc;
use serde_json::Value;
use std::collections::HashMap;

pub const MAX_SESSIONS: usize = 10_000;
pub const MAX_PENDING: usize = 256;

/// Whether an SSE line other than `data:` names the `endpoint` event.
pub fn is_endpoint_event(line: &str) -> bool {
    line.strip_prefix("event:")
        .is_some_and(|name| name.trim() == "endpoint")
}

/// The path and query of an endpoint event's data (a path, or an absolute URL whose path the
/// client POSTs to on the same origin); `None` for what is neither.
pub fn path_and_query(data: &str) -> Option<String> {
    let data = data.trim();
    let rest = match data.split_once("://") {
        Some((scheme, rest)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => rest,
        _ if data.starts_with('/') => return Some(data.to_string()),
        _ => return None,
    };
    let at = rest.find('/')?;
    Some(rest[at..].to_string())
}

/// The body forwarded in place of a refused POST: a `ping` per request id (a batch for several).
pub fn stand_in(ids: &[Value]) -> Vec<u8> {
    let pings: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
        .collect();
    match pings.as_slice() {
        [one] => one.to_string().into_bytes(),
        _ => Value::Array(pings).to_string().into_bytes(),
    }
}

struct Stream {
    owner: String,
    /// Refused requests' ids and the errors written over the server's answers to them.
    pending: Vec<(Value, Value)>,
}

/// The open SSE-transport streams of one route, by messages endpoint (path and query).
#[derive(Default)]
pub struct Sessions {
    streams: HashMap<String, Stream>,
}

impl Sessions {
    /// A stream announced `endpoint` to `owner`; `false` when the route has too many open.
    pub fn open(&mut self, endpoint: &str, owner: &str) -> bool {
        if self.streams.len() >= MAX_SESSIONS && !self.streams.contains_key(endpoint) {
            return false;
        }
        self.streams.insert(
            endpoint.to_string(),
            Stream {
                owner: owner.to_string(),
                pending: Vec::new(),
            },
        );
        true
    }

    pub fn close(&mut self, endpoint: &str) {
        self.streams.remove(endpoint);
    }

    /// Who opened the stream of `endpoint` (`None`: not an SSE-transport messages endpoint).
    pub fn owner(&self, endpoint: &str) -> Option<&str> {
        self.streams.get(endpoint).map(|s| s.owner.as_str())
    }

    /// Keeps `error` for the answer to `id` on `endpoint`'s stream; `false` when that stream is
    /// gone or has `MAX_PENDING` refusals waiting.
    pub fn refuse(&mut self, endpoint: &str, id: &Value, error: Value) -> bool {
        match self.streams.get_mut(endpoint) {
            Some(s) if s.pending.len() < MAX_PENDING => {
                s.pending.retain(|(i, _)| i != id);
                s.pending.push((id.clone(), error));
                true
            }
            _ => false,
        }
    }

    /// What the client gets instead of the server's message `m` on `endpoint`'s stream: the
    /// error kept for its id, when `m` is the answer to a refused request.
    pub fn answer(&mut self, endpoint: &str, m: &Value) -> Option<Value> {
        if jsonrpc::kind(m) != jsonrpc::Kind::Response {
            return None;
        }
        let id = jsonrpc::id(m)?;
        let s = self.streams.get_mut(endpoint)?;
        let at = s.pending.iter().position(|(i, _)| i == id)?;
        Some(s.pending.remove(at).1)
    }
}
