//! Hosted MCP tools in model API requests: the Responses API's `tools: [{"type": "mcp",
//! "server_url": ..., "require_approval": ...}]` makes the provider call an MCP server on the
//! agent's behalf, from the provider's network, where the gateway sees none of the calls. The
//! route's `hosted_mcp` decides which servers a request may name, and may make every call come
//! back to the agent for approval first.
//!
//! Invariants (keys are matched in any ASCII case: a lenient upstream could read `TYPE` or
//! `Server_URL` as `type` or `server_url`):
//! - Every object in the request whose `type` is `mcp` (ASCII case and surrounding whitespace
//!   aside), wherever it sits in the document, names only servers the route allows: its
//!   `server_url` in canonical form (`canonical::https_url`: no userinfo, no fragment, no raw
//!   bytes, host without trailing dot, effective port, path without dot segments) matches an
//!   `allow` pattern, and its `connector_id` is listed in `connectors`. One that does not — or
//!   names neither, or names them with something other than a string — refuses the request
//!   whole.
//! - With `require_approval: always`, every such object leaves with
//!   `"require_approval": "always"` and no other spelling of that key, whatever the agent wrote.
//! - The decision is made on the parsed document the upstream will read (the proxy hands the
//!   body after masking, and has refused duplicate keys and bodies that are not strict JSON).

use super::access::{cut, glob};
use crate::canonical::{https_url, HttpsUrl};
use crate::config::{HostedMcp, ServerPattern};
use serde_json::{Map, Value};

/// Why a request was refused, as the agent reads it (an HTTP 403 in the API's error shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable: `mcp_server_not_allowed` (also for a `server_url` that cannot be read),
    /// `mcp_connector_not_allowed`, `mcp_server_missing`.
    pub code: &'static str,
    pub message: String,
}

/// The values of `o`'s keys that are `key` in any ASCII case (a lenient upstream could read
/// `Server_URL` as `server_url`; each is decided).
fn fields<'a>(o: &'a Map<String, Value>, key: &'a str) -> impl Iterator<Item = &'a Value> {
    o.iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Whether `o` is a hosted MCP tool (see the invariant).
pub fn is_mcp_tool(o: &Map<String, Value>) -> bool {
    fields(o, "type").any(|t| {
        t.as_str()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case("mcp"))
    })
}

/// Whether the canonical URL `u` falls under pattern `p`.
pub fn matches(p: &ServerPattern, u: &HttpsUrl) -> bool {
    let host = if p.subdomains {
        u.host.len() > p.host.len() + 1
            && u.host.ends_with(&p.host)
            && u.host.as_bytes()[u.host.len() - p.host.len() - 1] == b'.'
    } else {
        u.host == p.host
    };
    if !host || u.port != p.port {
        return false;
    }
    if p.path.contains('*') {
        match &u.query {
            Some(q) => glob(&p.path, &format!("{}?{q}", u.path)),
            None => glob(&p.path, &u.path),
        }
    } else {
        u.path == p.path && u.query.is_none()
    }
}

/// Checks one hosted MCP tool against the policy.
fn check_tool(policy: &HostedMcp, route: &str, o: &Map<String, Value>) -> Result<(), Refusal> {
    let not_allowed = |what: String| {
        Refusal {
        code: "mcp_server_not_allowed",
        message: format!("hosted MCP server {what} is not allowed on route `{route}` (agentgate: see the route's hosted_mcp.allow)"),
    }
    };
    let mut named = false;
    for url in fields(o, "server_url") {
        named = true;
        let Value::String(raw) = url else {
            return Err(not_allowed("(a `server_url` that is not a string)".into()));
        };
        let u = https_url(raw).map_err(|e| not_allowed(format!("`{}` ({e})", cut(raw))))?;
        if !policy.allow.iter().any(|p| matches(p, &u)) {
            return Err(not_allowed(format!("`{}`", cut(raw))));
        }
    }
    for connector in fields(o, "connector_id") {
        named = true;
        if let Value::String(id) = connector {
            if policy.connectors.iter().any(|c| c == id) {
                continue;
            }
        }
        let shown = connector
            .as_str()
            .map_or_else(|| "(not a string)".into(), |s| format!("`{}`", cut(s)));
        return Err(Refusal {
            code: "mcp_connector_not_allowed",
            message: format!("hosted MCP connector {shown} is not allowed on route `{route}` (agentgate: see the route's hosted_mcp.connectors)"),
        });
    }
    if !named {
        return Err(Refusal {
            code: "mcp_server_missing",
            message: format!("a hosted MCP tool names no `server_url` or `connector_id`; route `{route}` allows only the servers it lists (agentgate)"),
        });
    }
    Ok(())
}

/// Sets `require_approval` to "always" and drops other spellings of the key: whether `o`
/// changed.
fn force_approval(o: &mut Map<String, Value>) -> bool {
    let before = o.len();
    o.retain(|k, _| k == "require_approval" || !k.eq_ignore_ascii_case("require_approval"));
    let mut changed = o.len() != before;
    if o.get("require_approval").and_then(Value::as_str) != Some("always") {
        o.insert("require_approval".into(), Value::from("always"));
        changed = true;
    }
    changed
}

/// Decides a request document: `Ok(true)` when it was changed (approval forced), `Ok(false)`
/// when it goes as it is, or the refusal. Every object at every depth is looked at (the
/// document is bounded by the body limit and the parser's depth limit).
pub fn decide(policy: &HostedMcp, route: &str, doc: &mut Value) -> Result<bool, Refusal> {
    let mut changed = false;
    let mut stack: Vec<&mut Value> = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if is_mcp_tool(o) {
                    check_tool(policy, route, o)?;
                    if policy.require_approval_always {
                        changed |= force_approval(o);
                    }
                }
                stack.extend(o.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    Ok(changed)
}
