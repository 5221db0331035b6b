//! `routes[].mcp:`: which tools, resources and prompts of an MCP server each group may use
//! (a list present means default deny for that kind), whether tool definitions are pinned, and
//! which requests the server may send to the client.

use crate::config::at_field;
use crate::config::{McpGrant, McpRoute, McpServerRequests};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    #[serde(default)]
    tools: Option<Vec<RawGrant>>,
    #[serde(default)]
    resources: Option<Vec<RawGrant>>,
    #[serde(default)]
    prompts: Option<Vec<RawGrant>>,
    #[serde(default)]
    pin_definitions: bool,
    #[serde(default)]
    server_requests: RawServerRequests,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServerRequests {
    #[serde(default)]
    sampling: Option<String>,
    #[serde(default)]
    elicitation: Option<String>,
    #[serde(default)]
    roots: Option<String>,
}

/// `allow` → true, `deny` → false, absent → `default`.
fn allow(field: &str, v: Option<String>, default: bool) -> Result<bool, String> {
    match v.as_deref() {
        None => Ok(default),
        Some("allow") => Ok(true),
        Some("deny") => Ok(false),
        Some(o) => Err(at_field(
            field,
            format!("mcp.server_requests.{field}: `{o}` must be allow or deny"),
        )),
    }
}

/// One list of grants; `key` is the field that names the item (`name`, or `uri` for resources).
fn grants(
    kind: &str,
    key: &str,
    raw: Option<Vec<RawGrant>>,
) -> Result<Option<Vec<McpGrant>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let mut out = Vec::with_capacity(raw.len());
    for g in raw {
        let (pattern, other) = if key == "uri" {
            (g.uri, g.name)
        } else {
            (g.name, g.uri)
        };
        if other.is_some() {
            let wrong = if key == "uri" { "name" } else { "uri" };
            return Err(at_field(
                kind,
                format!("mcp.{kind}: an entry names its {kind} with `{key}`, not `{wrong}`"),
            ));
        }
        let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
            return Err(at_field(kind, format!(
                "mcp.{kind}: every entry needs a non-empty `{key}` (`*` matches any run of characters)"
            )));
        };
        if g.groups.as_ref().is_some_and(|gs| gs.is_empty()) {
            return Err(at_field(kind, format!(
                "mcp.{kind}: `{pattern}` has an empty `groups` list, so nobody could use it; remove the entry, or drop `groups` to allow everyone the route admits"
            )));
        }
        out.push(McpGrant {
            pattern,
            groups: g.groups,
        });
    }
    Ok(Some(out))
}

impl TryFrom<RawMcp> for McpRoute {
    type Error = String;
    fn try_from(r: RawMcp) -> Result<Self, String> {
        let s = r.server_requests;
        Ok(McpRoute {
            tools: grants("tools", "name", r.tools)?,
            resources: grants("resources", "uri", r.resources)?,
            prompts: grants("prompts", "name", r.prompts)?,
            pin_definitions: r.pin_definitions,
            server_requests: McpServerRequests {
                // Sampling spends the agent's model on the server's behalf: off unless allowed.
                sampling: allow("sampling", s.sampling, false)?,
                elicitation: allow("elicitation", s.elicitation, true)?,
                roots: allow("roots", s.roots, true)?,
            },
        })
    }
}
