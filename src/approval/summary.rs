//! What an approver sees of a held request: a summary of its body (model, tool names, tool
//! calls with their arguments cut short, the last user message, and the start of the body). It
//! is built from the body as masking left it, so it holds nothing the record would not.

/// The masked summary an approver sees: from the (already masked) body.
pub fn summarize(masked_body: &[u8]) -> serde_json::Value {
    const EXCERPT: usize = 1000;
    let text = String::from_utf8_lossy(masked_body);
    let start: String = text.chars().take(EXCERPT).collect();
    let mut out = serde_json::json!({ "body_excerpt": start, "body_bytes": masked_body.len() });
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(masked_body) else {
        return out;
    };
    let cut = |s: &str| -> String {
        if s.chars().count() > 300 {
            format!("{}…", s.chars().take(300).collect::<String>())
        } else {
            s.to_string()
        }
    };
    if let Some(m) = doc.get("model").and_then(|m| m.as_str()) {
        out["model"] = m.into();
    }
    let tools: Vec<String> = doc
        .get("tools")
        .and_then(|t| t.as_array())
        .map(|t| {
            t.iter()
                .filter_map(|x| {
                    x.pointer("/function/name")
                        .or_else(|| x.get("name"))
                        .and_then(|n| n.as_str())
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    if !tools.is_empty() {
        out["tools"] = tools.into();
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
                "name": c.pointer("/function/name"),
                "arguments": c.pointer("/function/arguments").and_then(|a| a.as_str()).map(cut),
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
            last_user = text.map(|t| cut(&t));
        }
    }
    if !calls.is_empty() {
        out["tool_calls"] = calls.into();
    }
    if let Some(u) = last_user {
        out["last_user_message"] = u.into();
    }
    out
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
}
