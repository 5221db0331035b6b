//! OAuth for MCP clients (the MCP authorization spec): the gateway is the resource server of its
//! MCP routes. It publishes each route's protected-resource metadata (RFC 9728) at
//! `/.well-known/oauth-protected-resource<route path>` (and the first such route's at the bare
//! path), points unauthenticated clients at it from the 401's `WWW-Authenticate`, and, when the
//! route names its resource URL, accepts only tokens issued for it (`aud`, RFC 8707).
//!
//! Invariant: every URL the gateway writes here is built from a Host the agent sent only when
//! that Host is a plain authority (letters, digits, `.-:[]`), so no header or JSON can be forged.

use crate::config::McpOAuth;
use serde_json::Value;

pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// `scheme://host` of the gateway as the agent reached it; `None` for a Host that is not a plain
/// authority.
pub fn origin(tls: bool, host: &str) -> Option<String> {
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// The route's resource URL: the configured one, or the gateway's origin and the route's path.
pub fn resource(oauth: &McpOAuth, origin: &str, path_prefix: &str) -> String {
    oauth
        .resource
        .clone()
        .unwrap_or_else(|| format!("{origin}{}", path_prefix.trim_end_matches('/')))
}

/// Where the route's metadata is served.
pub fn metadata_url(origin: &str, path_prefix: &str) -> String {
    format!("{origin}{WELL_KNOWN}{}", path_prefix.trim_end_matches('/'))
}

/// The protected-resource metadata document (RFC 9728 §2).
pub fn metadata(oauth: &McpOAuth, resource: &str, route: &str) -> Value {
    serde_json::json!({
        "resource": resource,
        "authorization_servers": oauth.authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("agentgate MCP route {route}"),
    })
}

/// The challenge of a 401 on an MCP route: the identity's own (realm, error) with the metadata URL.
pub fn challenge(identity_challenge: Option<&str>, metadata_url: &str) -> String {
    let base = identity_challenge.unwrap_or(r#"Bearer realm="agentgate""#);
    format!(r#"{base}, resource_metadata="{metadata_url}""#)
}

/// The `aud` of a JWT whose signature the identity checks already verified (one string or a
/// list); empty for a token that is not a JWT.
pub fn audiences(token: &str) -> Vec<String> {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return Vec::new();
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Vec::new();
    };
    match serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("aud").cloned())
    {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}
