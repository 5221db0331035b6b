//! `agentgate approvals ...`: list, show, approve and deny through the admin API.

use super::{send, AdminApiArgs, ApprovalsCommand};
use crate::config::Config;
use crate::upstream::client::Fetcher;
use std::time::Duration;

/// Calls the admin API as the person whose token is given, and prints its answer.
pub fn run(api: AdminApiArgs, cmd: ApprovalsCommand) -> Result<(), String> {
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
    let (method, path, body) = match &cmd {
        ApprovalsCommand::List { state, .. } => {
            ("GET", format!("/v1/approvals?state={state}"), Vec::new())
        }
        ApprovalsCommand::Show { id } => ("GET", format!("/v1/approvals/{id}"), Vec::new()),
        ApprovalsCommand::Approve { id, reason } | ApprovalsCommand::Deny { id, reason } => {
            let action = if matches!(cmd, ApprovalsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let body = serde_json::json!({ "reason": reason })
                .to_string()
                .into_bytes();
            ("POST", format!("/v1/approvals/{id}/{action}"), body)
        }
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let fetcher = Fetcher::new(api.ca, Duration::from_secs(30)).with_loopback_http();
    let resp = send(&fetcher, req)?;
    let v: serde_json::Value = serde_json::from_slice(resp.body()).map_err(|_| {
        format!(
            "{} answered {}: {}",
            base,
            resp.status(),
            String::from_utf8_lossy(resp.body())
        )
    })?;
    if !resp.status().is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        return Err(format!("{} ({})", msg, resp.status()));
    }
    match cmd {
        ApprovalsCommand::List { json: false, .. } => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no approvals");
            }
            for a in list {
                println!(
                    "{}  {:<11} {:<20} {} {}{} route={} by={} waiting={}s left={}s{}",
                    a["id"].as_str().unwrap_or("?"),
                    a["state"].as_str().unwrap_or("?"),
                    a["rule"].as_str().unwrap_or("?"),
                    a["method"].as_str().unwrap_or("?"),
                    a["path"].as_str().unwrap_or("?"),
                    match a["query"].as_str() {
                        Some(q) if !q.is_empty() => format!("?{q}"),
                        _ => String::new(),
                    },
                    a["route"].as_str().unwrap_or("?"),
                    a.pointer("/requester/subject")
                        .and_then(|s| s.as_str())
                        .unwrap_or("?"),
                    a["waiting_s"],
                    a["expires_in_s"],
                    if a["can_decide"] == true {
                        "  (you may decide)"
                    } else {
                        ""
                    },
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
    }
    Ok(())
}
