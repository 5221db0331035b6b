//! `routes[].mcp:`: which tools, resources and prompts of an MCP server each group may use
//! (a list present means default deny for that kind), whether tool definitions are pinned, and
//! which requests the server may send to the client.

use crate::config::at_field;
use crate::config::{HostedMcp, McpGrant, McpOAuth, McpRoute, McpServerRequests, ServerPattern};
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
    #[serde(default)]
    oauth: Option<RawOAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    authorization_servers: Vec<String>,
}

fn oauth(raw: Option<RawOAuth>) -> Result<Option<McpOAuth>, String> {
    let Some(o) = raw else { return Ok(None) };
    if o.authorization_servers.is_empty() {
        return Err(at_field("oauth", "mcp.oauth.authorization_servers: name at least one issuer of identity.oidc (clients get their tokens there)".into()));
    }
    for s in &o.authorization_servers {
        if !s.starts_with("https://") {
            return Err(at_field(
                "oauth",
                format!("mcp.oauth.authorization_servers: `{s}` must be an https:// issuer URL"),
            ));
        }
    }
    if let Some(r) = &o.resource {
        if !r.starts_with("https://") || r.contains(['#', ' ', '"']) {
            return Err(at_field("oauth", format!("mcp.oauth.resource: `{r}` must be the https:// URL agents use for this route (no fragment)")));
        }
    }
    Ok(Some(McpOAuth {
        resource: o.resource,
        authorization_servers: o.authorization_servers,
    }))
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
            oauth: oauth(r.oauth)?,
            server_requests: McpServerRequests {
                // Sampling spends the agent's model on the server's behalf: off unless allowed.
                sampling: allow("sampling", s.sampling, false)?,
                elicitation: allow("elicitation", s.elicitation, true)?,
                roots: allow("roots", s.roots, true)?,
            },
        })
    }
}

/// `routes[].hosted_mcp:` (see `HostedMcp`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostedMcp {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    connectors: Vec<String>,
    #[serde(default)]
    require_approval: Option<String>,
}

/// One `hosted_mcp.allow` pattern, parsed as the request URLs it is compared with.
fn server_pattern(text: &str) -> Result<ServerPattern, String> {
    let bad = |why: String| {
        at_field("allow", format!(
            "hosted_mcp.allow: `{text}` {why}; write https://HOST[:PORT][/PATH], HOST may start with `*.` and PATH may hold `*` (e.g. https://mcp.example.com/*)"
        ))
    };
    let lower = text.to_ascii_lowercase();
    let (url, subdomains) = match lower.strip_prefix("https://*.") {
        Some(_) => (format!("https://{}", &text["https://*.".len()..]), true),
        None => (text.to_string(), false),
    };
    let u = crate::canonical::https_url(&url).map_err(|e| bad(format!("is refused: {e}")))?;
    if u.query.is_some() {
        return Err(bad(
            "has a query (a `*` at the end of the path matches any query)".into(),
        ));
    }
    let ip = u.host.starts_with('[') || u.host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if subdomains && ip {
        return Err(bad("puts `*.` before an IP address".into()));
    }
    Ok(ServerPattern {
        text: text.to_string(),
        host: u.host,
        subdomains,
        port: u.port,
        path: u.path,
    })
}

impl TryFrom<RawHostedMcp> for HostedMcp {
    type Error = String;
    fn try_from(r: RawHostedMcp) -> Result<Self, String> {
        // Both empty is a route that refuses every hosted MCP tool: default deny.
        let allow = r
            .allow
            .iter()
            .map(|p| server_pattern(p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(c) = r
            .connectors
            .iter()
            .find(|c| c.is_empty() || c.contains('*'))
        {
            return Err(at_field(
                "connectors",
                format!("hosted_mcp.connectors: `{c}` must be a connector id as the API names it (e.g. connector_googledrive), no `*`"),
            ));
        }
        let require_approval_always = match r.require_approval.as_deref() {
            None => false,
            Some("always") => true,
            Some(o) => {
                return Err(at_field(
                    "require_approval",
                    format!("hosted_mcp.require_approval: `{o}` must be `always` (or leave it out to keep what the agent sends)"),
                ))
            }
        };
        Ok(HostedMcp {
            allow,
            connectors: r.connectors,
            require_approval_always,
        })
    }
}
