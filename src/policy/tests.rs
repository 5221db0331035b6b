use super::*;

fn rule(yaml: &str) -> ApprovalRule {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn req<'a>(body: &'a [u8], headers: &'a http::HeaderMap, groups: &'a [String]) -> Request<'a> {
    Request {
        route: "openai",
        method: "POST",
        path: "/v1/chat/completions",
        groups,
        headers,
        body,
    }
}

const TOOLS: &str = r#"{"model":"m","tools":[
  {"type":"function","function":{"name":"search"}},
  {"type":"function","function":{"name":"delete_records","parameters":{}}}],
 "messages":[{"role":"user","content":"please wipe the table"},
   {"role":"assistant","tool_calls":[{"id":"c1","function":{"name":"transfer_funds","arguments":"{\"amount\":500}"}}]},
   {"role":"user","content":[{"type":"text","text":"IBAN DE89 3704"}]}],
 "n":2,"stream":true}"#;

#[test]
fn predicates_table() {
    let base = "name: r\napprovers: { groups: [sec] }\nwhen:\n";
    // (when-body, body, matches?, first reason)
    let cases: &[(&str, &str, bool, Option<&str>)] = &[
        ("  route: openai", TOOLS, true, None),
        ("  route: [other, openai]", TOOLS, true, None),
        ("  route: other", TOOLS, false, None),
        ("  method: [post]", TOOLS, true, None),
        ("  method: GET", TOOLS, false, None),
        ("  path: /v1/chat/completions", TOOLS, true, None),
        ("  path: /v1/chat", TOOLS, false, None),
        ("  path_prefix: /v1/", TOOLS, true, None),
        ("  path_prefix: /v2/", TOOLS, false, None),
        ("  groups: [agents]", TOOLS, true, None),
        ("  groups: [contractors]", TOOLS, false, None),
        ("  headers: { x-env: { equals: prod } }", TOOLS, true, None),
        ("  headers: { x-env: { equals: dev } }", TOOLS, false, None),
        (
            "  headers: { x-missing: { exists: false } }",
            TOOLS,
            true,
            None,
        ),
        (
            "  headers: { x-env: { exists: false } }",
            TOOLS,
            false,
            None,
        ),
        (
            "  headers: { x-missing: { contains: a } }",
            TOOLS,
            false,
            None,
        ),
        // JSON paths into nested arrays.
        (
            r#"  json: { "tools[*].function.name": { any_of: [delete_records, transfer_funds] } }"#,
            TOOLS,
            true,
            Some("tools[1].function.name = delete_records"),
        ),
        (
            r#"  json: { "tools[0].function.name": { any_of: [delete_records] } }"#,
            TOOLS,
            false,
            None,
        ),
        (
            r#"  json: { "tools[*].function.name": { equals: drop } }"#,
            TOOLS,
            false,
            None,
        ),
        (
            r#"  json: { "messages[*].tool_calls[*].function.name": { equals: transfer_funds } }"#,
            TOOLS,
            true,
            Some("messages[1].tool_calls[0].function.name = transfer_funds"),
        ),
        (
            r#"  json: { "messages[*].content": { contains: WIPE } }"#,
            TOOLS,
            true,
            Some("messages[0].content = please wipe the table"),
        ),
        // content given as parts: `contains`/`regex` look at every string inside.
        (
            r#"  json: { "messages[*].content": { regex: "DE\\d{2} \\d{4}" } }"#,
            TOOLS,
            true,
            None,
        ),
        (
            r#"  json: { "messages[*].content": { regex: "^nothing$" } }"#,
            TOOLS,
            false,
            None,
        ),
        (
            r#"  json: { "n": { any_of: [2] } }"#,
            TOOLS,
            true,
            Some("n = 2"),
        ),
        (
            r#"  json: { "stream": { equals: true } }"#,
            TOOLS,
            true,
            None,
        ),
        (
            r#"  json: { "tools": { exists: true } }"#,
            TOOLS,
            true,
            Some("tools is present"),
        ),
        (
            r#"  json: { "functions": { exists: true } }"#,
            TOOLS,
            false,
            None,
        ),
        (
            r#"  json: { "functions": { exists: false } }"#,
            TOOLS,
            true,
            None,
        ),
        (
            r#"  json: { "metadata.*": { equals: x } }"#,
            TOOLS,
            false,
            None,
        ),
        (
            r#"  json: { "*": { equals: m } }"#,
            TOOLS,
            true,
            Some("model = m"),
        ),
        // A path through the wrong type selects nothing.
        (
            r#"  json: { "model[*]": { exists: true } }"#,
            TOOLS,
            false,
            None,
        ),
        // Malformed bodies: JSON conditions cannot be checked, so the rule matches (fail closed).
        (
            r#"  json: { "tools[*].function.name": { equals: x } }"#,
            "{not json",
            true,
            Some("the body is not JSON, so the rule's JSON conditions could not be checked"),
        ),
        (
            r#"  json: { "tools[*].function.name": { equals: x } }"#,
            "",
            true,
            None,
        ),
        // ...but a rule without JSON conditions does not care about the body.
        ("  route: other", "{not json", false, None),
        // All predicates must hold.
        ("  route: openai\n  method: GET", TOOLS, false, None),
    ];
    let mut headers = http::HeaderMap::new();
    headers.insert("x-env", "prod".parse().unwrap());
    let groups = vec!["agents".to_string()];
    for (when, body, want, reason) in cases {
        let r = rule(&format!("{base}{when}\n"));
        let got = matching(
            std::slice::from_ref(&r),
            &req(body.as_bytes(), &headers, &groups),
        );
        assert_eq!(!got.is_empty(), *want, "{when} on {body:.30}");
        if let (Some(reason), Some((_, m))) = (reason, got.first()) {
            assert_eq!(
                m.reasons.first().map(String::as_str),
                Some(*reason),
                "{when}"
            );
        }
    }
}

#[test]
fn an_empty_when_matches_everything_and_defaults_apply() {
    let r = rule("name: all\napprovers: { groups: [sec] }\n");
    let h = http::HeaderMap::new();
    assert!(r.matches(&req(b"{}", &h, &[]), None).is_some());
    assert_eq!(
        (r.min_approvals, r.timeout, r.grant, r.mode),
        (1, DEFAULT_TIMEOUT, Grant::Once, Mode::Wait)
    );
}

#[test]
fn file_format_errors_are_clear() {
    let cases: &[(&str, &str)] = &[
        ("name: x\napprovers: { groups: [] }", "nobody could approve"),
        ("name: x\napprovers: { groups: [a], min_approvals: 0 }", "at least 1"),
        ("name: 'a b'\napprovers: { groups: [a] }", "letters, digits"),
        ("name: x\napprovers: { groups: [a] }\ntimeout: 2d", "unknown duration unit"),
        ("name: x\napprovers: { groups: [a] }\ntimeout: 25h", "between 1s and 24h"),
        ("name: x\napprovers: { groups: [a] }\ngrant: { scope: window }", "needs a `duration`"),
        ("name: x\napprovers: { groups: [a] }\ngrant: { scope: forever }", "once or window"),
        ("name: x\napprovers: { groups: [a] }\nmode: later", "wait or ticket"),
        ("name: x\napprovers: { groups: [a] }\nnotify: { webhook: { url: 'http://h/x' } }", "must be https://"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { 'a..b': { exists: true } } }", "empty segment"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { 'a[x]': { exists: true } } }", "is not [*] or [number]"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { 'a[0': { exists: true } } }", "without `]`"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { a: { regex: '(' } } }", "regex `(`"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { a: {} } }", "say one of"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { a: { equals: 1, exists: true } } }", "only one of"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { json: { a: { any_of: [[1]] } } }", "strings, numbers or booleans"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { headers: { 'bad header': { exists: true } } }", "is not a header name"),
        ("name: x\napprovers: { groups: [a] }\nwhen: { colour: red }", "unknown field"),
    ];
    for (yaml, want) in cases {
        let err = serde_yaml::from_str::<ApprovalRule>(yaml)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "{yaml}: got `{err}`, want `{want}`");
    }
}

#[test]
fn paths_parse_and_print() {
    for (p, ok) in [
        ("a", true),
        ("a.b[*].c", true),
        ("[*].x", true),
        ("a[0][1]", true),
        ("a[0]b", false),
        ("", false),
        ("a.", false),
    ] {
        assert_eq!(JsonPath::parse(p).is_ok(), ok, "{p}");
    }
    let doc: serde_json::Value = serde_json::from_str(r#"[{"x":[1,[2,3]]}]"#).unwrap();
    let mut seen = Vec::new();
    JsonPath::parse("[*].x[1][*]")
        .unwrap()
        .select(&doc, &mut |at, v| seen.push(format!("{at}={v}")));
    assert_eq!(seen, ["[0].x[1][0]=2", "[0].x[1][1]=3"]);
}

#[test]
fn long_values_are_cut_in_reasons() {
    let r = rule("name: r\napprovers: { groups: [s] }\nwhen: { json: { q: { contains: x } } }");
    let body = format!(r#"{{"q":"x{}"}}"#, "y".repeat(500));
    let h = http::HeaderMap::new();
    let m = matching(std::slice::from_ref(&r), &req(body.as_bytes(), &h, &[]))
        .pop()
        .unwrap()
        .1;
    assert!(
        m.reasons[0].ends_with('…') && m.reasons[0].chars().count() < 100,
        "{}",
        m.reasons[0]
    );
}

#[test]
fn the_head_decides_whether_the_body_is_needed() {
    let r = rule(
        r#"name: r
approvers: { groups: [s] }
when: { method: POST, path_prefix: /v1/chat, json: { "tools[*].function.name": { equals: x } } }"#,
    );
    let h = http::HeaderMap::new();
    let mut q = req(b"", &h, &[]);
    assert!(
        r.head_matches(&q),
        "POST /v1/chat/completions: the body decides"
    );
    q.method = "GET";
    assert!(
        !r.head_matches(&q),
        "a GET can never match: no need to read its body"
    );
    q.method = "POST";
    q.path = "/v1/models";
    assert!(!r.head_matches(&q));
}

#[test]
fn mcp_predicates_table() {
    let base = "name: r\napprovers: { groups: [sec] }\nwhen:\n  mcp:\n";
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_repo","arguments":{"name":"prod","opts":{"force":true},"paths":["/a","/etc/x"]}}}"#;
    let batch = format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"tools/list"}},{call}]"#);
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    // (mcp-body, body, matches?, last reason)
    let cases: &[(&str, &str, bool, Option<&str>)] = &[
        (
            "    method: tools/call",
            call,
            true,
            Some("mcp method = tools/call"),
        ),
        ("    method: [prompts/get, tools/call]", call, true, None),
        ("    method: tools/call", list, false, None),
        (
            "    tool: { any_of: [delete_repo, drop_db] }",
            call,
            true,
            Some("mcp tool = delete_repo"),
        ),
        ("    tool: { any_of: [drop_db] }", call, false, None),
        ("    tool: { regex: \"^delete_\" }", call, true, None),
        ("    tool: { exists: true }", list, false, None),
        ("    tool: { exists: false }", list, true, None),
        (
            "    method: tools/call\n    tool: { equals: delete_repo }",
            &batch,
            true,
            Some("mcp tool = delete_repo"),
        ),
        (
            "    arguments: { name: { equals: prod } }",
            call,
            true,
            Some("mcp arguments.name = prod"),
        ),
        (
            "    arguments: { name: { equals: dev } }",
            call,
            false,
            None,
        ),
        (
            "    arguments: { opts.force: { equals: true } }",
            call,
            true,
            None,
        ),
        (
            "    arguments: { \"paths[*]\": { contains: /etc/ } }",
            call,
            true,
            Some("mcp arguments.paths[1] = /etc/x"),
        ),
        (
            "    arguments: { missing: { exists: false } }",
            call,
            true,
            None,
        ),
        (
            "    arguments: { name: { exists: false } }",
            call,
            false,
            None,
        ),
        (
            "    arguments: { name: { equals: prod } }",
            list,
            false,
            None,
        ),
        // Not JSON: the gateway cannot tell, a human decides.
        ("    tool: { equals: delete_repo }", "not json", true, None),
    ];
    let headers = http::HeaderMap::new();
    let groups = vec!["agents".to_string()];
    for (when, body, want, reason) in cases {
        let r = rule(&format!("{base}{when}"));
        let m = matching(
            std::slice::from_ref(&r),
            &req(body.as_bytes(), &headers, &groups),
        );
        assert_eq!(!m.is_empty(), *want, "{when} on {body}");
        if let (Some(reason), Some((_, m))) = (reason, m.first()) {
            assert_eq!(
                m.reasons.last().map(String::as_str),
                Some(*reason),
                "{when}"
            );
        }
    }
    for bad in [
        "    tool: {}",
        "    arguments: { \"a[\": { equals: x } }",
        "    methods: x",
    ] {
        assert!(
            serde_yaml::from_str::<ApprovalRule>(&format!("{base}{bad}")).is_err(),
            "{bad}"
        );
    }
}
