//! Who may use which tool, resource and prompt of an MCP route: a name (or URI) is usable when
//! a grant's pattern matches it and the grant names one of the caller's groups (or names none:
//! everyone the route admits). A kind with no list (`tools:` absent) is open; a list present
//! denies what it does not grant.

use super::jsonrpc::{self, Target};
use crate::config::{McpGrant, McpRoute};
use serde_json::Value;

/// Whether `pattern` matches all of `s`; `*` matches any run of characters (`/` included).
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// Whether `grants` let a caller in `groups` use `name` (`None`: no list, everything is open).
pub fn granted(grants: Option<&[McpGrant]>, name: &str, groups: &[String]) -> bool {
    let Some(grants) = grants else { return true };
    grants.iter().any(|g| {
        glob(&g.pattern, name)
            && g.groups
                .as_ref()
                .is_none_or(|gs| gs.iter().any(|x| groups.contains(x)))
    })
}

/// Why a request is refused, as the agent reads it in its JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i64,
    pub message: String,
    /// Stable reason (`tool_not_allowed`, `resource_not_allowed`, ...), also in the error's data.
    pub reason: &'static str,
}

/// Whether a caller in `groups` may send request `m` on `route` (under `policy`).
pub fn check(policy: &McpRoute, route: &str, groups: &[String], m: &Value) -> Result<(), Refusal> {
    let target = jsonrpc::target(m).map_err(|why| Refusal {
        code: jsonrpc::INVALID_PARAMS,
        message: why,
        reason: "invalid_params",
    })?;
    let (what, name, grants, reason) = match target {
        Target::Tool(n) => ("tool", n, policy.tools.as_deref(), "tool_not_allowed"),
        Target::Resource(u) => (
            "resource",
            u,
            policy.resources.as_deref(),
            "resource_not_allowed",
        ),
        Target::Prompt(n) => ("prompt", n, policy.prompts.as_deref(), "prompt_not_allowed"),
        Target::Other => return Ok(()),
    };
    if granted(grants, name, groups) {
        return Ok(());
    }
    Err(Refusal {
        code: jsonrpc::INVALID_PARAMS,
        message: format!(
            "{what} `{}` is not available to this caller on route `{route}` (agentgate)",
            cut(name)
        ),
        reason,
    })
}

/// The server-to-client request methods and whether the route allows each.
pub fn server_request_allowed(policy: &McpRoute, method: &str) -> bool {
    let s = &policy.server_requests;
    match method {
        "sampling/createMessage" => s.sampling,
        "elicitation/create" => s.elicitation,
        "roots/list" => s.roots,
        // ping and whatever a later revision adds that grants the server nothing.
        _ => true,
    }
}

/// Removes from an `initialize` request the client capabilities whose server requests the route
/// denies, so a well-behaved server does not send them at all. The names removed.
pub fn strip_denied_capabilities(policy: &McpRoute, m: &mut Value) -> Vec<&'static str> {
    let mut removed = Vec::new();
    if jsonrpc::method(m) != Some("initialize") {
        return removed;
    }
    let Some(caps) = m
        .pointer_mut("/params/capabilities")
        .and_then(Value::as_object_mut)
    else {
        return removed;
    };
    let s = &policy.server_requests;
    for (name, allowed) in [
        ("sampling", s.sampling),
        ("elicitation", s.elicitation),
        ("roots", s.roots),
    ] {
        if !allowed && caps.remove(name).is_some() {
            removed.push(name);
        }
    }
    removed
}

/// A name from a request cut to 128 characters for a message (a request cannot make the
/// gateway echo megabytes).
pub fn cut(s: &str) -> String {
    match s.char_indices().nth(128) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
