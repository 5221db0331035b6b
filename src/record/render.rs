//! `agentgate sessions show` and `replay`: a recorded exchange rendered for people (messages,
//! tool calls and results, the answer reassembled from SSE deltas) and a stream re-emitted
//! with its original timing.

use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

fn body_json(v: &Value) -> Option<Value> {
    v.as_str().and_then(|s| serde_json::from_str(s).ok())
}

fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The answer of a recorded response: text and tool calls, from SSE events or a JSON body.
pub fn answer(record: &Value) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    if let Some(events) = record.pointer("/response/events").and_then(Value::as_array) {
        for ev in events {
            let Some(v) = body_json(&ev["data"]) else {
                continue;
            };
            if let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(c);
            }
            if let Some(tc) = v
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
            {
                for call in tc {
                    let i = call["index"].as_u64().unwrap_or(0) as usize;
                    while calls.len() <= i {
                        calls.push((String::new(), String::new()));
                    }
                    if let Some(n) = call.pointer("/function/name").and_then(Value::as_str) {
                        calls[i].0.push_str(n);
                    }
                    if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                        calls[i].1.push_str(a);
                    }
                }
            }
            match v.get("type").and_then(Value::as_str) {
                Some("response.output_text.delta") => {
                    text.push_str(v["delta"].as_str().unwrap_or(""))
                }
                Some("content_block_delta") => text.push_str(
                    v.pointer("/delta/text")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                ),
                Some("response.output_item.done")
                    if v.pointer("/item/type") == Some(&Value::from("function_call")) =>
                {
                    calls.push((
                        v.pointer("/item/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        v.pointer("/item/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    ));
                }
                _ => {}
            }
        }
    } else if let Some(v) = body_json(&record["response"]["body"]) {
        if let Some(m) = v.pointer("/choices/0/message") {
            text = content_text(&m["content"]);
            for c in m["tool_calls"].as_array().into_iter().flatten() {
                calls.push((
                    c.pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    c.pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                ));
            }
        }
        for item in v["output"].as_array().into_iter().flatten() {
            match item["type"].as_str() {
                Some("message") => text.push_str(&content_text(&item["content"])),
                Some("function_call") => calls.push((
                    item["name"].as_str().unwrap_or("").into(),
                    item["arguments"].as_str().unwrap_or("").into(),
                )),
                _ => {}
            }
        }
        if let Some(c) = v
            .get("content")
            .filter(|_| v.get("type") == Some(&Value::from("message")))
        {
            text.push_str(&content_text(c));
        }
    }
    (
        text,
        calls
            .into_iter()
            .map(|(n, a)| format!("{n}({a})"))
            .collect(),
    )
}

/// A readable rendering of one record.
pub fn show(r: &Value) -> String {
    let mut o = String::new();
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let _ = writeln!(o, "exchange {}  {}", s(&r["id"]), s(&r["ts"]));
    let _ = writeln!(
        o,
        "route {}  {} {}  -> {} in {:.1} ms",
        s(&r["route"]),
        s(&r["method"]),
        s(&r["path"]),
        r["response"]["status"],
        r["duration_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(id) = r.get("identity").filter(|i| !i.is_null()) {
        let _ = writeln!(
            o,
            "identity {} ({}, {}) groups {}",
            s(&id["subject"]),
            s(&id["method"]),
            s(&id["issuer"]),
            id["groups"]
        );
    }
    let _ = writeln!(o, "conversation {}", s(&r["conversation"]));
    let tls = |p: &str| {
        r.pointer(p)
            .filter(|v| !v.is_null())
            .map(|t| format!("{} {}", s(&t["version"]), s(&t["cipher"])))
            .unwrap_or_else(|| "none".into())
    };
    let _ = writeln!(
        o,
        "tls agent leg {} / upstream leg {}",
        tls("/tls/downstream"),
        tls("/tls/upstream")
    );
    let d = &r["decisions"];
    if !d["masked"].is_null() {
        let _ = writeln!(o, "masking {}", d["masked"]);
    }
    if !d["guardrail"].is_null() {
        let _ = writeln!(o, "guardrail {}", s(&d["guardrail"]));
    }
    if !d["error"].is_null() {
        let _ = writeln!(o, "error {}", s(&d["error"]));
    }
    if let Some(m) = mcp(r) {
        o.push_str(&m);
        return o;
    }
    let _ = writeln!(o, "--- request ---");
    match body_json(&r["request"]["body"]) {
        Some(req) => {
            let msgs = req["messages"]
                .as_array()
                .cloned()
                .or_else(|| match &req["input"] {
                    Value::String(t) => {
                        Some(vec![serde_json::json!({"role": "user", "content": t})])
                    }
                    Value::Array(a) => Some(a.clone()),
                    _ => None,
                });
            for m in msgs.unwrap_or_default() {
                let role = m["role"].as_str().or(m["type"].as_str()).unwrap_or("?");
                let mut line = content_text(&m["content"]);
                if line.is_empty() {
                    line = content_text(&m["output"]);
                }
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let _ = write!(
                        line,
                        " [tool call {}({})]",
                        s(&c["function"]["name"]),
                        s(&c["function"]["arguments"])
                    );
                }
                let _ = writeln!(o, "[{role}] {line}");
            }
        }
        None => {
            let _ = writeln!(o, "{}", s(&r["request"]["body"]));
        }
    }
    let _ = writeln!(o, "--- answer ---");
    let (text, calls) = answer(r);
    let _ = writeln!(o, "[assistant] {text}");
    for c in calls {
        let _ = writeln!(o, "[tool call] {c}");
    }
    if let Some(ev) = r.pointer("/response/events").and_then(Value::as_array) {
        let last = ev.last().and_then(|e| e["t_ms"].as_f64()).unwrap_or(0.0);
        let _ = writeln!(o, "({} SSE events over {:.1} ms)", ev.len(), last);
    }
    o
}

/// The JSON-RPC messages of a body or of SSE events (a batch counts message by message).
fn jsonrpc_messages(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .filter(|m| m.get("jsonrpc").is_some())
            .collect(),
        m if m.get("jsonrpc").is_some() => vec![m],
        _ => Vec::new(),
    }
}

/// An MCP exchange (the request body is JSON-RPC): its session, each request with what it
/// names and its arguments, the decision trail, and each answer (result text or error).
fn mcp(r: &Value) -> Option<String> {
    let requests = jsonrpc_messages(body_json(&r["request"]["body"])?);
    if requests.is_empty() {
        return None;
    }
    let mut o = String::new();
    let header = |name: &str| {
        r.pointer(&format!("/request/headers/{name}"))
            .or_else(|| r.pointer(&format!("/response/headers/{name}")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let _ = writeln!(o, "--- mcp ---");
    if let Some(sid) = header("mcp-session-id") {
        let _ = writeln!(o, "mcp session {sid}");
    }
    for m in &requests {
        let method = m["method"].as_str().unwrap_or("(response)");
        let id = m.get("id").map(Value::to_string);
        let what = m
            .pointer("/params/name")
            .or_else(|| m.pointer("/params/uri"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let args = m
            .pointer("/params/arguments")
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        match (method, id) {
            ("tools/call", Some(id)) => {
                let _ = writeln!(o, "[tool call {id}] {what}{args}");
            }
            (_, Some(id)) => {
                let _ = writeln!(o, "[request {id}] {method} {what}");
            }
            (_, None) => {
                let _ = writeln!(o, "[notification] {method}");
            }
        }
    }
    if let Some(a) = r.pointer("/decisions/approval").filter(|a| !a.is_null()) {
        let _ = writeln!(o, "approval {a}");
    }
    let mut answers = Vec::new();
    if let Some(events) = r.pointer("/response/events").and_then(Value::as_array) {
        for ev in events {
            if let Some(v) = body_json(&ev["data"]) {
                answers.extend(jsonrpc_messages(v));
            }
        }
    } else if let Some(v) = body_json(&r["response"]["body"]) {
        answers.extend(jsonrpc_messages(v));
    }
    for a in answers {
        let id = a.get("id").map(Value::to_string).unwrap_or_default();
        if let Some(e) = a.get("error") {
            let _ = writeln!(
                o,
                "[error {id}] {} {}",
                e["code"],
                e["message"].as_str().unwrap_or("")
            );
        } else if let Some(res) = a.get("result") {
            let text = content_text(&res["content"]);
            let shown = if text.is_empty() {
                res.to_string()
            } else {
                text
            };
            let flag = if res["isError"] == Value::Bool(true) {
                " (tool error)"
            } else {
                ""
            };
            let _ = writeln!(o, "[result {id}]{flag} {shown}");
        } else if let Some(method) = a["method"].as_str() {
            let _ = writeln!(o, "[from server] {method}");
        }
    }
    Some(o)
}

/// Re-emits a recorded SSE stream to `out` with its original timing divided by `speed`.
pub fn replay(r: &Value, speed: f64, out: &mut dyn Write) -> std::io::Result<usize> {
    let events = r
        .pointer("/response/events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let first = events
        .first()
        .and_then(|e| e["t_ms"].as_f64())
        .unwrap_or(0.0);
    let start = Instant::now();
    for e in &events {
        let t = (e["t_ms"].as_f64().unwrap_or(0.0) - first) / speed.max(0.001);
        let due = Duration::from_secs_f64(t.max(0.0) / 1000.0);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let data = e["data"].as_str().unwrap_or("");
        for line in data.split('\n') {
            writeln!(out, "data: {line}")?;
        }
        writeln!(out)?;
        out.flush()?;
    }
    Ok(events.len())
}
