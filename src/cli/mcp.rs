//! `agentgate mcp ...`: the tool definitions MCP routes pinned, and accepting a changed one,
//! through the admin API (auditors).

use super::{send, AdminApiArgs, McpCommand};
use crate::config::Config;
use crate::upstream::client::Fetcher;
use std::time::Duration;

pub fn run(api: AdminApiArgs, cmd: McpCommand) -> Result<(), String> {
    let base = match (&api.admin, &api.config) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(c)) => {
            Config::load_without_secrets(c)
                .map_err(|e| e.to_string())?
                .admin
                .public_url
        }
        (None, None) => "http://127.0.0.1:9090".into(),
    };
    let token = api
        .token
        .ok_or("give your token with --token or AGENTGATE_TOKEN")?;
    let (method, path) = match &cmd {
        McpCommand::Pins => ("GET", "/v1/mcp/pins".to_string()),
        McpCommand::Accept { route, tool } => {
            ("POST", format!("/v1/mcp/pins/{route}/{tool}/accept"))
        }
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let fetcher = Fetcher::new(api.ca, Duration::from_secs(30)).with_loopback_http();
    let resp = send(&fetcher, req)?;
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    if !resp.status().is_success() {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let msg = v
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or(&body);
        return Err(format!("{msg} ({})", resp.status()));
    }
    match cmd {
        McpCommand::Pins => println!("{body}"),
        McpCommand::Accept { route, tool } => {
            println!("accepted the new definition of `{tool}` on route `{route}`")
        }
    }
    Ok(())
}
