//! Tables for `hosted.rs`: which hosted MCP tools a route lets through, in what canonical form a
//! `server_url` is compared, where in a document tools are found, and the forced approval.

use super::hosted::decide;
use crate::config::HostedMcp;
use serde_json::{json, Value};

fn policy(always: bool) -> HostedMcp {
    let yaml = format!(
        "allow: [\"https://mcp.example.com/*\", \"https://*.tools.example/mcp\", \"https://pinned.example:8443/sse\"]\nconnectors: [connector_googledrive]\n{}",
        if always { "require_approval: always\n" } else { "" }
    );
    serde_yaml::from_str(&yaml).expect("policy")
}

fn tool(url: &str) -> Value {
    json!({"type": "mcp", "server_label": "x", "server_url": url, "require_approval": "never"})
}

fn body(tools: Vec<Value>) -> Value {
    json!({"model": "gpt-4.1", "input": "hi", "tools": tools})
}

/// `Ok(changed)` or the refusal's code.
fn run(p: &HostedMcp, mut doc: Value) -> (Result<bool, &'static str>, Value) {
    let r = decide(p, "openai", &mut doc).map_err(|e| e.code);
    (r, doc)
}

#[test]
fn server_urls_are_compared_in_canonical_form() {
    const NOT: Result<bool, &str> = Err("mcp_server_not_allowed");
    let p = policy(false);
    let table: &[(&str, Result<bool, &str>)] = &[
        ("https://mcp.example.com/sse", Ok(false)),
        ("https://mcp.example.com", Ok(false)),
        ("https://mcp.example.com/a/b?c=d", Ok(false)),
        ("HTTPS://MCP.Example.COM./sse", Ok(false)),
        ("https://mcp.example.com:443/sse", Ok(false)),
        ("https://mcp.example.com:444/sse", NOT),
        ("http://mcp.example.com/sse", NOT),
        ("https://mcp.example.com@evil.example/", NOT),
        ("https://evil.example@mcp.example.com/", NOT),
        ("https://evil.example/?next=https://mcp.example.com/", NOT),
        ("https://mcp.example.com.evil.example/", NOT),
        ("https://evil.example/#https://mcp.example.com/", NOT),
        ("https://evil.example\\@mcp.example.com/", NOT),
        ("https://mcp.example.com /", NOT),
        ("https://mcp%2eexample.com/", NOT),
        ("https://xn--mcp-example.com/", NOT),
        ("https://a.tools.example/mcp", Ok(false)),
        ("https://a.b.tools.example/mcp", Ok(false)),
        ("https://a.tools.example/%6Dcp", Ok(false)),
        ("https://tools.example/mcp", NOT),
        ("https://atools.example/mcp", NOT),
        ("https://a.tools.example/mcp/", NOT),
        ("https://a.tools.example/mcp?x=1", NOT),
        ("https://a.tools.example/x/../mcp", NOT),
        ("https://a.tools.example/mcp%2F..%2Fadmin", NOT),
        ("https://pinned.example:8443/sse", Ok(false)),
        ("https://pinned.example/sse", NOT),
        ("", NOT),
    ];
    for (url, want) in table {
        assert_eq!(run(&p, body(vec![tool(url)])).0, *want, "{url}");
    }
}

#[test]
fn every_mcp_object_is_found_wherever_it_is() {
    let p = policy(false);
    let evil = "https://evil.example/mcp";
    let table: Vec<(&str, Value, Result<bool, &str>)> = vec![
        ("no tools", json!({"model": "m", "input": "hi"}), Ok(false)),
        (
            "a function tool",
            json!({"tools": [{"type": "function", "name": "f", "parameters": {"properties": {"server_url": {"type": "string"}}}}]}),
            Ok(false),
        ),
        (
            "type in capitals",
            json!({"tools": [{"type": "MCP", "server_url": evil}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "`type` in capitals",
            json!({"tools": [{"TYPE": "mcp", "server_url": evil}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "a second `Server_URL`",
            json!({"tools": [{"type": "mcp", "server_url": "https://mcp.example.com/", "Server_URL": evil}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "a `CONNECTOR_ID`",
            json!({"tools": [{"type": "mcp", "CONNECTOR_ID": "connector_gmail"}]}),
            Err("mcp_connector_not_allowed"),
        ),
        (
            "type with spaces",
            json!({"tools": [{"type": " mcp\t", "server_url": evil}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "after an allowed one",
            body(vec![tool("https://mcp.example.com/"), tool(evil)]),
            Err("mcp_server_not_allowed"),
        ),
        (
            "nested in input",
            json!({"input": [{"role": "user", "content": [{"type": "mcp", "server_url": evil}]}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "a realtime session's tools",
            json!({"session": {"type": "realtime", "tools": [{"type": "mcp", "server_url": evil}]}}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "a top-level array",
            json!([{"tools": [{"type": "mcp", "server_url": evil}]}]),
            Err("mcp_server_not_allowed"),
        ),
        (
            "server_url not a string",
            json!({"tools": [{"type": "mcp", "server_url": ["https://mcp.example.com/"]}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "no server at all",
            json!({"tools": [{"type": "mcp", "server_label": "x"}]}),
            Err("mcp_server_missing"),
        ),
        (
            "an allowed connector",
            json!({"tools": [{"type": "mcp", "connector_id": "connector_googledrive"}]}),
            Ok(false),
        ),
        (
            "another connector",
            json!({"tools": [{"type": "mcp", "connector_id": "connector_gmail"}]}),
            Err("mcp_connector_not_allowed"),
        ),
        (
            "a connector in another case",
            json!({"tools": [{"type": "mcp", "connector_id": "Connector_GoogleDrive"}]}),
            Err("mcp_connector_not_allowed"),
        ),
        (
            "an allowed connector and a server",
            json!({"tools": [{"type": "mcp", "connector_id": "connector_googledrive", "server_url": evil}]}),
            Err("mcp_server_not_allowed"),
        ),
        (
            "earlier turns' MCP items",
            json!({"input": [{"type": "mcp_call", "server_label": "x", "name": "t"}, {"type": "mcp_list_tools", "server_label": "x", "tools": []}, {"type": "mcp_approval_response", "approve": true, "approval_request_id": "a"}]}),
            Ok(false),
        ),
    ];
    for (name, doc, want) in table {
        assert_eq!(run(&p, doc).0, want, "{name}");
    }
}

#[test]
fn require_approval_is_forced_to_always() {
    let p = policy(true);
    let forms = [
        json!("never"),
        json!({"never": {"tool_names": ["delete"]}}),
        json!(null),
        json!("Always"),
    ];
    for form in forms {
        let mut t = tool("https://mcp.example.com/");
        t["require_approval"] = form.clone();
        let (r, doc) = run(&p, body(vec![t]));
        assert_eq!(r, Ok(true), "{form}");
        assert_eq!(doc["tools"][0]["require_approval"], "always", "{form}");
    }
    let mut t = tool("https://mcp.example.com/");
    t.as_object_mut().unwrap().remove("require_approval");
    let (r, doc) = run(&p, body(vec![t]));
    assert_eq!(
        (r, &doc["tools"][0]["require_approval"]),
        (Ok(true), &json!("always"))
    );
    // Another spelling of the key is dropped: only `require_approval: "always"` leaves.
    let mut t = tool("https://mcp.example.com/");
    t["require_approval"] = json!("always");
    t["Require_Approval"] = json!("never");
    let (r, doc) = run(&p, body(vec![t]));
    assert_eq!(r, Ok(true));
    let keys: Vec<&String> = doc["tools"][0].as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| *k == "Require_Approval"), "{keys:?}");
    assert_eq!(doc["tools"][0]["require_approval"], "always");
    // Already `always`: the body goes as it came.
    let mut t = tool("https://mcp.example.com/");
    t["require_approval"] = json!("always");
    assert_eq!(run(&p, body(vec![t])).0, Ok(false));
    // Without the setting, the agent's choice stands.
    let (r, doc) = run(&policy(false), body(vec![tool("https://mcp.example.com/")]));
    assert_eq!(
        (r, &doc["tools"][0]["require_approval"]),
        (Ok(false), &json!("never"))
    );
    // Function tools are never touched.
    let f = json!({"type": "function", "name": "f", "require_approval": "never"});
    let (r, doc) = run(&p, body(vec![f.clone()]));
    assert_eq!((r, &doc["tools"][0]), (Ok(false), &f));
}

#[test]
fn huge_tool_arrays_are_decided_whole() {
    let p = policy(true);
    let mut tools: Vec<Value> = (0..100_000)
        .map(|i| json!({"type": "function", "name": format!("f{i}")}))
        .collect();
    tools.push(tool("https://evil.example/"));
    assert_eq!(run(&p, body(tools)).0, Err("mcp_server_not_allowed"));
    let tools: Vec<Value> = (0..50_000)
        .map(|_| tool("https://mcp.example.com/"))
        .collect();
    let (r, doc) = run(&p, body(tools));
    assert_eq!(r, Ok(true));
    assert!(doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["require_approval"] == "always"));
}

#[test]
fn refusals_name_the_server_and_the_route_and_are_cut() {
    let long = format!("https://evil.example/{}", "a".repeat(5000));
    let mut doc = body(vec![tool(&long)]);
    let e = decide(&policy(false), "openai", &mut doc).unwrap_err();
    assert!(
        e.message.contains("route `openai`") && e.message.contains("https://evil.example/aaa"),
        "{}",
        e.message
    );
    assert!(e.message.len() < 600, "{}", e.message.len());
    let mut doc = body(vec![tool("https://user@mcp.example.com/")]);
    let e = decide(&policy(false), "openai", &mut doc).unwrap_err();
    assert!(e.message.contains("user name or password"), "{}", e.message);
}

#[test]
fn anthropic_mcp_servers_and_tool_choice_are_read_for_what_they_are() {
    let p = policy(true);
    let anthropic = |url: Value| {
        json!({"model": "claude-sonnet-4", "max_tokens": 64, "messages": [],
               "mcp_servers": [{"type": "url", "url": url, "name": "s"}],
               "tools": [{"type": "mcp_toolset", "mcp_server_name": "s"}]})
    };
    // Anthropic's MCP connector names servers by `url` in `mcp_servers` (type "url", never
    // "mcp"): they were not decided at all.
    assert_eq!(
        run(&p, anthropic(json!("https://evil.example/sse"))).0,
        Err("mcp_server_not_allowed")
    );
    assert_eq!(
        run(&p, anthropic(json!("https://mcp.example.com/sse"))).0,
        Ok(false)
    );
    assert_eq!(
        run(&p, anthropic(json!(7))).0,
        Err("mcp_server_not_allowed")
    );
    let no_url = json!({"mcp_servers": [{"type": "url", "name": "s"}]});
    assert_eq!(run(&p, no_url).0, Err("mcp_server_missing"));
    let cased = json!({"MCP_Servers": [{"type": "url", "URL": "https://evil.example/"}]});
    assert_eq!(run(&p, cased).0, Err("mcp_server_not_allowed"));
    // `tool_choice: {type: mcp, server_label, name}` picks a tool defined in `tools`: it was
    // refused as a tool naming no server; it is left alone (and gets no require_approval).
    let mut doc = body(vec![tool("https://mcp.example.com/sse")]);
    doc["tool_choice"] = json!({"type": "mcp", "server_label": "x", "name": "search"});
    let (r, out) = run(&p, doc);
    assert_eq!(r, Ok(true));
    assert_eq!(
        out["tool_choice"],
        json!({"type": "mcp", "server_label": "x", "name": "search"})
    );
    // A tool_choice that does name a server is decided like a tool.
    let mut doc = body(vec![]);
    doc["tool_choice"] = tool("https://evil.example/sse");
    assert_eq!(run(&p, doc).0, Err("mcp_server_not_allowed"));
}

#[test]
fn multipart_bodies_are_split_strictly() {
    use super::hosted::{multipart_boundary, multipart_parts};
    assert_eq!(
        multipart_boundary("multipart/form-data; boundary=abc").as_deref(),
        Some("abc")
    );
    assert_eq!(
        multipart_boundary("Multipart/Form-Data; boundary=\"a b\"").as_deref(),
        Some("a b")
    );
    assert_eq!(
        multipart_boundary("multipart/form-data; boundary=a; boundary=b"),
        None
    );
    assert_eq!(multipart_boundary("multipart/form-data"), None);
    assert_eq!(multipart_boundary("application/json; boundary=a"), None);
    let good = "--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\n\r\nv=0\r\n--b\r\nContent-Disposition: form-data; name=\"session\"\r\nContent-Type: application/json\r\n\r\n{\"a\":1}\r\n--b--\r\n";
    let parts = multipart_parts(good.as_bytes(), "b").expect("strict parts");
    let contents: Vec<&str> = parts.iter().map(|p| &good[p.content.clone()]).collect();
    assert_eq!(contents, ["v=0", "{\"a\":1}"]);
    assert!(good[parts[1].headers.clone()].contains("application/json"));
    // Anything a lenient parser could read differently is refused.
    for bad in [
        good.replace("\r\n", "\n"),                  // LF-only lines
        good.replace("v=0", "v=0--b"),               // the boundary inside a part
        format!("{good}--b\r\n"),                    // a delimiter after the close
        good.replace("--b--\r\n", ""),               // no close delimiter
        good.replacen("--b\r\n", "--b junk\r\n", 1), // text after a delimiter
        good.replace("\r\n\r\nv=0", "\r\nv=0"),      // no end to the header block
    ] {
        assert_eq!(multipart_parts(bad.as_bytes(), "b"), None, "{bad:?}");
    }
}
