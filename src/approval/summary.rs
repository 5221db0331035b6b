//! What an approver sees of a held request: a summary of its body (model, tool names, tool
//! calls with their arguments cut short, the last user message, and the start of the body). It
//! is built from the body as masking left it, so it holds nothing the record would not.

/// Longest name (model, tool) kept whole; longer ones are cut with `…`.
const NAME: usize = 128;
/// Tools and tool calls listed at most (then `"… N more"`).
const LISTED: usize = 32;

/// `s` cut to `n` characters, with `…` when something was cut.
pub fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A list kept to `LISTED` entries, the rest counted.
fn bounded(mut v: Vec<serde_json::Value>) -> serde_json::Value {
    if v.len() > LISTED {
        let more = v.len() - LISTED;
        v.truncate(LISTED);
        v.push(format!("… {more} more").into());
    }
    v.into()
}

/// The masked summary an approver sees: from the (already masked) body. Bounded whatever the
/// body: every string is cut, lists are capped (an agent cannot make approvers, the approvals
/// log or the console hold megabytes per request).
pub fn summarize(masked_body: &[u8]) -> serde_json::Value {
    const EXCERPT: usize = 1000;
    let text = String::from_utf8_lossy(masked_body);
    let start: String = text.chars().take(EXCERPT).collect();
    let mut out = serde_json::json!({ "body_excerpt": start, "body_bytes": masked_body.len() });
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(masked_body) else {
        return out;
    };
    let cut300 = |s: &str| cut(s, 300);
    if let Some(m) = doc.get("model").and_then(|m| m.as_str()) {
        out["model"] = cut(m, NAME).into();
    }
    let tools: Vec<serde_json::Value> = doc
        .get("tools")
        .and_then(|t| t.as_array())
        .map(|t| {
            t.iter()
                .filter_map(|x| {
                    x.pointer("/function/name")
                        .or_else(|| x.get("name"))
                        .and_then(|n| n.as_str())
                        .map(|n| cut(n, NAME).into())
                })
                .collect()
        })
        .unwrap_or_default();
    if !tools.is_empty() {
        out["tools"] = bounded(tools);
    }
    let mut calls = Vec::new();
    let mut last_user = None;
    for m in doc
        .get("messages")
        .or_else(|| doc.get("input"))
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        for c in m
            .get("tool_calls")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            calls.push(serde_json::json!({
                "name": c.pointer("/function/name").and_then(|n| n.as_str()).map(|n| cut(n, NAME)),
                "arguments": c.pointer("/function/arguments").and_then(|a| a.as_str()).map(cut300),
            }));
        }
        if m.get("role").and_then(|r| r.as_str()) == Some("user") {
            let text = match m.get("content") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(parts)) => Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            };
            last_user = text.map(|t| cut300(&t));
        }
    }
    if !calls.is_empty() {
        out["tool_calls"] = bounded(calls);
    }
    if let Some(u) = last_user {
        out["last_user_message"] = u.into();
    }
    let mcp = mcp_requests(&doc);
    if !mcp.is_empty() {
        out["mcp"] = bounded(mcp);
    }
    out
}

/// The JSON-RPC (MCP) requests of a body: method, the tool (or prompt, or resource URI) and
/// its arguments, cut short.
fn mcp_requests(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    let messages: &[serde_json::Value] = match doc {
        serde_json::Value::Array(a) => a,
        one => std::slice::from_ref(one),
    };
    messages
        .iter()
        .filter(|m| m.get("jsonrpc").is_some() && m.get("id").is_some())
        .filter_map(|m| {
            let method = m.get("method")?.as_str()?;
            let mut r = serde_json::json!({ "method": cut(method, NAME) });
            if let Some(n) = m.pointer("/params/name").and_then(|n| n.as_str()) {
                r["name"] = cut(n, NAME).into();
            }
            if let Some(u) = m.pointer("/params/uri").and_then(|n| n.as_str()) {
                r["uri"] = cut(u, 512).into();
            }
            if let Some(a) = m.pointer("/params/arguments") {
                r["arguments"] = cut(&a.to_string(), 1000).into();
            }
            Some(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_show_tools_calls_and_the_last_user_message() {
        let body = br#"{"model":"gpt","tools":[{"type":"function","function":{"name":"delete_records"}}],
      "messages":[{"role":"user","content":"first"},{"role":"assistant","tool_calls":[{"function":{"name":"transfer_funds","arguments":"{\"to\":\"[REDACTED]\"}"}}]},
      {"role":"user","content":[{"type":"text","text":"now"}]}]}"#;
        let s = summarize(body);
        assert_eq!(s["model"], "gpt");
        assert_eq!(s["tools"], serde_json::json!(["delete_records"]));
        assert_eq!(s["tool_calls"][0]["name"], "transfer_funds");
        assert_eq!(s["last_user_message"], "now");
        assert_eq!(summarize(b"not json")["body_excerpt"], "not json");
    }

    #[test]
    fn summaries_show_mcp_tool_calls() {
        let body = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_repo","arguments":{"name":"[REDACTED]"}}}"#;
        let s = summarize(body);
        assert_eq!(
            s["mcp"],
            serde_json::json!([{"method": "tools/call", "name": "delete_repo", "arguments": "{\"name\":\"[REDACTED]\"}"}])
        );
        let batch = br#"[{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}]"#;
        assert_eq!(summarize(batch)["mcp"][0]["uri"], "file:///a");
        assert!(summarize(br#"{"model":"m"}"#).get("mcp").is_none());
    }

    /// However large the body, a summary stays small: a 4 MiB tool name, 10,000 tools and a
    /// huge model name are cut (issue 22: a 4 MiB tool name was copied into memory, the
    /// approvals log and every `GET /v1/approvals`).
    #[test]
    fn summaries_are_bounded() {
        let huge = "x".repeat(4 << 20);
        let tools: Vec<_> = (0..10_000)
            .map(|i| serde_json::json!({"type": "function", "function": {"name": if i == 0 { huge.clone() } else { format!("t{i}") }}}))
            .collect();
        let body = serde_json::json!({"model": huge, "tools": tools,
            "messages": [{"role": "assistant", "tool_calls": (0..100).map(|i| if i == 0 { serde_json::json!({"function": {"name": huge, "arguments": huge}}) } else { serde_json::json!({"function": {"name": "n", "arguments": "{}"}}) }).collect::<Vec<_>>()},
                         {"role": "user", "content": huge}]})
        .to_string();
        let s = summarize(body.as_bytes());
        assert!(
            s.to_string().len() < 64 << 10,
            "{} bytes",
            s.to_string().len()
        );
        assert_eq!(s["tools"].as_array().unwrap().len(), LISTED + 1);
        assert_eq!(s["tools"][LISTED], "… 9968 more");
        assert!(s["tools"][0].as_str().unwrap().ends_with('…'));
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
    }
}
