//! `agentgate sessions ...`: list recorded exchanges, show one, replay its stream, or send its
//! request again and compare the answers.

use super::{send, SessionsCommand};
use crate::record::query::{self, FindError};
use crate::record::render;
use crate::upstream::client::Fetcher;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn run(cmd: SessionsCommand) -> Result<(), String> {
    match cmd {
        SessionsCommand::List {
            store,
            since,
            route,
            identity,
            conversation,
            limit,
        } => {
            let since_ms = match since {
                Some(d) => {
                    let d = crate::config::units::parse_duration(&d)?;
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    now.saturating_sub(d).as_millis() as u64
                }
                None => 0,
            };
            println!(
                "{:<32}  {:<24}  {:<12}  {:<20}  {:>6}  REQUEST",
                "ID", "TIME", "ROUTE", "IDENTITY", "STATUS"
            );
            let filter = query::Filter {
                since_ms,
                route,
                subject: identity,
                conversation,
                limit,
            };
            if let Some(db) = store.shared()? {
                let list = db
                    .block_on(crate::record::shared::list(&db, &filter))
                    .map_err(|e| e.to_string())?;
                for e in list {
                    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
                    let ts = crate::util::time::rfc3339(
                        UNIX_EPOCH + Duration::from_millis(e["ts_ms"].as_u64().unwrap_or(0)),
                    );
                    println!(
                        "{:<32}  {:<24}  {:<12}  {:<20}  {:>6}  {} {}  [replica {}]",
                        s("id"),
                        ts,
                        s("route"),
                        s("subject"),
                        e["status"],
                        s("method"),
                        s("path"),
                        s("replica")
                    );
                }
                return Ok(());
            }
            let dir = store.records_dir()?;
            for e in query::list(&dir, &filter) {
                let ts = crate::util::time::rfc3339(UNIX_EPOCH + Duration::from_millis(e.ts_ms));
                println!(
                    "{:<32}  {:<24}  {:<12}  {:<20}  {:>6}  {} {}",
                    e.id,
                    ts,
                    e.route.as_deref().unwrap_or("-"),
                    e.subject.as_deref().unwrap_or("-"),
                    e.status,
                    e.method,
                    e.path
                );
            }
            Ok(())
        }
        SessionsCommand::Show { id, store, json } => {
            let r = find(&store, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", render::show(&r));
            }
            Ok(())
        }
        SessionsCommand::Replay {
            id,
            store,
            resend: Some(url),
            token,
            ca,
            ..
        } => {
            let r = find(&store, &id)?;
            resend(&r, &url, token.as_deref(), ca)
        }
        SessionsCommand::Replay {
            id, store, speed, ..
        } => {
            let r = find(&store, &id)?;
            let mut out = std::io::stdout().lock();
            let n = render::replay(&r, speed, &mut out).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "exchange {id} has no recorded stream (not SSE, or recorded as metadata)"
                ));
            }
            Ok(())
        }
    }
}

/// The record `id` (the whole id or an unambiguous prefix) names: in the shared store (every
/// replica's) when the configuration has one, else in the records directory.
fn find(store: &super::StoreArgs, id: &str) -> Result<serde_json::Value, String> {
    if let Some(db) = store.shared()? {
        return db
            .block_on(crate::record::shared::find(&db, id))
            .map_err(|e| match e {
                crate::record::shared::FindError::Unknown => {
                    format!("no recorded exchange {id} on any replica")
                }
                e => e.to_string(),
            });
    }
    find_in_dir(&store.records_dir()?, id)
}

fn find_in_dir(dir: &Path, id: &str) -> Result<serde_json::Value, String> {
    query::find(dir, id).map_err(|e| match e {
        FindError::Unknown => format!("no recorded exchange {id} in {}", dir.display()),
        e => e.to_string(),
    })
}

/// Sends a recorded request (its masked body) again and prints the old and new answers.
fn resend(
    r: &serde_json::Value,
    url: &str,
    token: Option<&str>,
    ca: Option<PathBuf>,
) -> Result<(), String> {
    let method = r["method"].as_str().unwrap_or("POST");
    let path = r["path"].as_str().unwrap_or("/");
    let body = r
        .pointer("/request/body")
        .and_then(|b| b.as_str())
        .unwrap_or("")
        .as_bytes()
        .to_vec();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", url.trim_end_matches('/')));
    for (k, v) in r
        .pointer("/request/headers")
        .and_then(|h| h.as_object())
        .into_iter()
        .flatten()
    {
        let keep = ["content-type", "accept", "x-agentgate-session"].contains(&k.as_str())
            || k.starts_with("openai-")
            || k.starts_with("anthropic-");
        if let (true, Some(v)) = (keep, v.as_str()) {
            req = req.header(k.as_str(), v);
        }
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body).map_err(|e| e.to_string())?;
    let resp = send(&Fetcher::new(ca, Duration::from_secs(600)), req)?;
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut again = serde_json::json!({"response": {"status": status}});
    if sse {
        let events: Vec<serde_json::Value> = crate::util::sse::data_of_stream(&text)
            .into_iter()
            .map(|data| serde_json::json!({"t_ms": 0.0, "data": data}))
            .collect();
        again["response"]["events"] = events.into();
    } else {
        again["response"]["body"] = text.clone().into();
    }
    let (old_text, old_calls) = render::answer(r);
    let (new_text, new_calls) = render::answer(&again);
    println!(
        "recorded: {} -> {}",
        r["id"].as_str().unwrap_or("?"),
        r["response"]["status"]
    );
    println!("resent:   {method} {url}{path} -> {status}");
    println!("--- recorded answer ---\n{old_text}");
    for c in &old_calls {
        println!("[tool call] {c}");
    }
    println!("--- new answer ---\n{new_text}");
    for c in &new_calls {
        println!("[tool call] {c}");
    }
    if status >= 400 && new_text.is_empty() {
        println!("{text}");
    }
    if old_text == new_text
        && old_calls == new_calls
        && Some(status as u64) == r["response"]["status"].as_u64()
    {
        println!("=== identical ===");
    } else {
        println!("=== different ===");
    }
    Ok(())
}
