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
/// Checks one MCP server named by `o`: its `url_key` fields (`server_url` of an OpenAI tool,
/// `url` of an Anthropic `mcp_servers` entry) and `connector_id`s against the route's lists.
fn check_tool(
    policy: &HostedMcp,
    route: &str,
    o: &Map<String, Value>,
    url_key: &str,
) -> Result<(), Refusal> {
    let not_allowed = |what: String| {
        Refusal {
        code: "mcp_server_not_allowed",
        message: format!("hosted MCP server {what} is not allowed on route `{route}` (agentgate: see the route's hosted_mcp.allow)"),
    }
    };
    let mut named = false;
    for url in fields(o, url_key) {
        named = true;
        let Value::String(raw) = url else {
            return Err(not_allowed(format!("(a `{url_key}` that is not a string)")));
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
/// Where a value sits, for what its objects mean.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Other,
    /// Under `tool_choice`: `{"type": "mcp", "server_label", "name"}` chooses a tool the
    /// request defines elsewhere; it defines no server.
    ToolChoice,
    /// An entry of Anthropic's `mcp_servers` (the MCP connector): a server by its `url`.
    AnthropicServers,
}

pub fn decide(policy: &HostedMcp, route: &str, doc: &mut Value) -> Result<bool, Refusal> {
    let mut changed = false;
    let mut stack: Vec<(&mut Value, Place)> = vec![(doc, Place::Other)];
    while let Some((v, place)) = stack.pop() {
        match v {
            Value::Object(o) => {
                let names_server = fields(o, "server_url").next().is_some()
                    || fields(o, "connector_id").next().is_some();
                if place == Place::AnthropicServers {
                    check_tool(policy, route, o, "url")?;
                } else if is_mcp_tool(o) && (place != Place::ToolChoice || names_server) {
                    check_tool(policy, route, o, "server_url")?;
                    if policy.require_approval_always {
                        changed |= force_approval(o);
                    }
                }
                for (k, child) in o.iter_mut() {
                    let place = if k.eq_ignore_ascii_case("tool_choice") {
                        Place::ToolChoice
                    } else if k.eq_ignore_ascii_case("mcp_servers") {
                        Place::AnthropicServers
                    } else if place == Place::ToolChoice {
                        Place::ToolChoice
                    } else {
                        Place::Other
                    };
                    stack.push((child, place));
                }
            }
            // The entries of `mcp_servers` are servers; deeper arrays are not.
            Value::Array(a) => stack.extend(a.iter_mut().map(|x| (x, place))),
            _ => {}
        }
    }
    Ok(changed)
}

/// One part of a `multipart/form-data` body: its header block and its content, as ranges of
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub headers: std::ops::Range<usize>,
    pub content: std::ops::Range<usize>,
}

/// The `boundary` parameter of a `multipart/...` content type (quoted or not).
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    let mut found = None;
    for p in params.split(';') {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            if found.is_some() {
                return None; // two boundaries: which one a parser takes is not ours to guess
            }
            found = Some(v.trim().trim_matches('"').to_string());
        }
    }
    found.filter(|b| !b.is_empty() && b.len() <= 70)
}

/// Splits a multipart body strictly (RFC 2046): the first delimiter line, then parts separated
/// by `CRLF--boundary`, each with a header block ended by an empty line, and the close
/// delimiter. `None` when the body is framed any other way (LF-only lines, a boundary string
/// inside a line, no close delimiter): a parser that reads it differently could find parts
/// this one did not, so such a body is refused rather than guessed at.
pub fn multipart_parts(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // Every occurrence of `--boundary` must be a delimiter at a line start (or the body's).
    let every: Vec<usize> = memchr::memmem::find_iter(body, dash.as_bytes()).collect();
    let first = *every.first()?;
    if first != 0 && !body[..first].ends_with(b"\r\n") {
        return None;
    }
    let mut parts = Vec::new();
    let mut delimiters = vec![first];
    let mut at = first + dash.len();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            // The close delimiter: each `--boundary` in the body was one of the delimiters.
            return (every == delimiters).then_some(parts);
        }
        let line_end = at + memchr::memmem::find(rest, b"\r\n")?;
        if body[at..line_end]
            .iter()
            .any(|b| !matches!(b, b' ' | b'\t'))
        {
            return None; // text after the delimiter on its line
        }
        let head_start = line_end + 2;
        let head_len = memchr::memmem::find(&body[head_start..], b"\r\n\r\n")
            .map(|i| i + 2)
            .or_else(|| body[head_start..].starts_with(b"\r\n").then_some(0))?;
        let content_start = head_start + head_len + 2;
        let next = content_start + memchr::memmem::find(&body[content_start..], delim.as_bytes())?;
        parts.push(Part {
            headers: head_start..head_start + head_len,
            content: content_start..next,
        });
        at = next + delim.len();
        delimiters.push(next + 2);
    }
}

/// The `Content-Type` of a part's header block.
pub fn part_content_type(headers: &[u8]) -> String {
    String::from_utf8_lossy(headers)
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_ascii_lowercase())
        })
        .unwrap_or_default()
}
