use super::*;

const BASE: &str = r#"
server: { state_dir: ./var, threads: 2, grace_period: 30s }
listeners:
  - { name: agents, address: "127.0.0.1:8443", tls: {} }
admin: { address: "127.0.0.1:9090" }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    upstream:
      url: https://api.openai.com
    credentials:
      set_headers: { Authorization: "Bearer ${env:AGENTGATE_TEST_KEY}" }
    access: { groups: [agents] }
identity:
  service_accounts:
    - { name: ci, token_sha256: 52429752765c16a4897560e0f4b0a373ee9dfab7da0c8ca37a09c9e62cccd576, groups: [agents] }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    // SAFETY-free in edition 2021; the variable name is unique to these tests.
    std::env::set_var("AGENTGATE_TEST_KEY", "sk-test-123");
    Config::parse(text, Path::new("test.yaml"))
}

#[test]
fn base_config_parses_with_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.server.threads, 2);
    assert_eq!(c.server.grace_period, Duration::from_secs(30));
    assert_eq!(c.server.max_body, 32 << 20);
    assert_eq!(c.server.client_timeout, Duration::from_secs(60));
    let r = &c.routes[0];
    assert_eq!(r.path_prefix, "/v1/");
    assert!(r.upstream.tls);
    assert_eq!(
        (r.upstream.host.as_str(), r.upstream.port),
        ("api.openai.com", 443)
    );
    assert_eq!(r.upstream.authority(), "api.openai.com");
    assert_eq!(r.set_headers[0].secret.expose(), "Bearer sk-test-123");
    assert_eq!(r.set_headers[0].value, "Bearer sk-test-123");
    assert!(c.listeners[0].tls.as_ref().unwrap().cert_key.is_none());
    assert!(
        !format!("{c:?}").contains("sk-test-123"),
        "Debug must not print secrets"
    );
}

/// Each case replaces one line of BASE (or adds text) and expects an error mentioning a fragment
/// and the line of the offending value.
#[test]
fn refused_configs() {
    let table: &[(&str, &str, &str, usize)] = &[
        // (original, replacement, expected fragment, expected line)
        (
            "address: \"127.0.0.1:8443\"",
            "address: \"127.0.0.1:0\"",
            "has port 0",
            4,
        ),
        (
            "admin: { address: \"127.0.0.1:9090\" }",
            "admin: { address: \"127.0.0.1:0\" }",
            "has port 0",
            5,
        ),
        (
            "grace_period: 30s }",
            "grace_period: 30s, client_timeout: 0s }",
            "server.client_timeout must be between 1s and 1h",
            2,
        ),
        (
            "url: https://api.openai.com",
            "url: http://api.openai.com",
            "plaintext http://",
            10,
        ),
        (
            "url: https://api.openai.com",
            "url: http://10.0.0.1:80\n      allow_plaintext_loopback: true",
            "only to 127.0.0.0/8 or ::1",
            10,
        ),
        (
            "url: https://api.openai.com",
            "url: https://api.openai.com\n      verify: false",
            "cannot be disabled",
            11,
        ),
        (
            "url: https://api.openai.com",
            "url: https://api.openai.com\n      min_tls_version: \"1.1\"",
            "minimum is 1.2",
            11,
        ),
        (
            "url: https://api.openai.com",
            "url: ftp://x",
            "must start with https://",
            10,
        ),
        (
            "url: https://api.openai.com",
            "url: https://api.openai.com\n      pins_sha256: [YWJj]",
            "not a SHA-256",
            11,
        ),
        (
            "url: https://api.openai.com",
            "url: https://api.openai.com\n      ca_file: /nonexistent/ca.pem",
            "does not exist",
            11,
        ),
        (
            "url: https://api.openai.com",
            "uri: https://api.openai.com",
            "unknown field `uri`",
            10,
        ),
        (
            r#"address: "127.0.0.1:8443", tls: {} }"#,
            r#"address: "0.0.0.0:8443" }"#,
            "plaintext is allowed only on loopback",
            4,
        ),
        (
            r#"address: "127.0.0.1:8443", tls: {} }"#,
            r#"address: "localhost:8443" }"#,
            "not an IP address",
            4,
        ),
        (
            r#"address: "127.0.0.1:8443", tls: {} }"#,
            r#"address: "127.0.0.1:8443", tls: { min_tls_version: 1.0 } }"#,
            "minimum is 1.2",
            4,
        ),
        (
            r#"address: "127.0.0.1:8443", tls: {} }"#,
            r#"address: "127.0.0.1:8443", tls: { cert: a.pem } }"#,
            "both `cert` and `key`",
            4,
        ),
        (
            r#"admin: { address: "127.0.0.1:9090" }"#,
            r#"admin: { address: "0.0.0.0:9090" }"#,
            "admin listener",
            5,
        ),
        (
            r#"admin: { address: "127.0.0.1:9090" }"#,
            r#"admin: { address: "127.0.0.1:8443" }"#,
            "is also used by listener `agents`",
            5,
        ),
        ("threads: 2", "threads: 0", "between 1 and 1024", 2),
        (
            "grace_period: 30s",
            "grace_period: 30 parsecs",
            "unknown duration unit",
            2,
        ),
        (
            "match: { path_prefix: /v1/ }",
            "match: { path_prefix: v1 }",
            "must start with `/`",
            8,
        ),
        (
            "match: { path_prefix: /v1/ }",
            "mtch: { path_prefix: /v1/ }",
            "unknown field `mtch`",
            8,
        ),
        ("name: openai", "name: open ai", "only letters", 7),
        (
            "${env:AGENTGATE_TEST_KEY}",
            "${env:AGENTGATE_TEST_MISSING_VAR}",
            "`AGENTGATE_TEST_MISSING_VAR` is not set",
            12,
        ),
        (
            "{ Authorization:",
            "{ Content-Length:",
            "cannot set `Content-Length`",
            12,
        ),
        (
            "{ Authorization:",
            "{ \"Bad Header\":",
            "not a valid header name",
            12,
        ),
    ];
    let mut wrong = Vec::new();
    for (from, to, fragment, line) in table {
        assert!(BASE.contains(from), "case {from:?} does not apply");
        let text = BASE.replacen(from, to, 1);
        let err = parse(&text).expect_err(&format!("accepted: {to}"));
        let rendered = err.to_string();
        assert!(rendered.contains(fragment), "{to}: got `{rendered}`");
        assert!(rendered.starts_with("test.yaml:"), "{rendered}");
        if err.line != Some(*line) {
            wrong.push(format!("{to}: want line {line}, got `{rendered}`"));
        }
        assert!(!rendered.contains("sk-test-123"), "{rendered}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn duplicate_route_names_are_refused() {
    let text = BASE.replace(
        "identity:",
        "  - name: openai\n    match: { path_prefix: /x/ }\n    upstream: { url: https://example.com }\n    access: { any_authenticated: true }\nidentity:",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("route name `openai` is used twice"), "{err}");
}

#[test]
fn loopback_plaintext_upstream_and_listener_are_allowed_when_asked() {
    let text = BASE
        .replace(
            "url: https://api.openai.com",
            "url: http://127.0.0.1:9999/base/\n      allow_plaintext_loopback: true",
        )
        .replace(
            r#"address: "127.0.0.1:8443", tls: {} }"#,
            r#"address: "[::1]:8443" }"#,
        );
    let c = parse(&text).unwrap();
    let up = &c.routes[0].upstream;
    assert!(!up.tls);
    assert_eq!(up.base_path, "/base");
    assert_eq!(up.authority(), "127.0.0.1:9999");
    assert!(c.listeners[0].tls.is_none());
}

#[test]
fn malformed_yaml_points_to_the_line() {
    let err = parse("listeners:\n  - { name: a\nroutes: []\n").unwrap_err();
    assert!(err.line.is_some(), "{err}");
}

/// Identity and access: each case edits BASE and expects a message fragment.
#[test]
fn refused_identity_configs() {
    let sa = "    - { name: ci, token_sha256: 52429752765c16a4897560e0f4b0a373ee9dfab7da0c8ca37a09c9e62cccd576, groups: [agents] }\n";
    let oidc =
        |extra: &str| format!("identity:\n  oidc:\n    - issuer: https://idp.example.com\n{extra}");
    let table: Vec<(String, String, &str)> = vec![
        ("    access: { groups: [agents] }\n".into(), "".into(), "has no `access` rule"),
        ("access: { groups: [agents] }".into(), "access: { groups: [] }".into(), "exactly one of"),
        ("access: { groups: [agents] }".into(), "access: { groups: [a], any_authenticated: true }".into(), "exactly one of"),
        ("access: { groups: [agents] }".into(), "access: { any_authenticated: false }".into(), "exactly one of"),
        (format!("identity:\n  service_accounts:\n{sa}"), "".into(), "no identity source"),
        ("token_sha256: 5242".into(), "token_sha256: agt_5242".into(), "64 hex digits"),
        (sa.into(), format!("{sa}{sa}"), "defined twice"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: [agentgate]\n      algorithms: [HS256]\n"), "algorithm `HS256` is not accepted"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: []\n"), "`audiences` must list"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: [a]\n      jwks_uri: http://idp.example.com/keys\n"), "must be an https:// URL"),
        (format!("identity:\n  service_accounts:\n{sa}"), "identity:\n  oidc:\n    - { issuer: http://idp.example.com, audiences: [a] }\n".into(), "must be an https:// URL"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: [a]\n      leeway: 1h\n"), "leeway above 5m"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: [a]\n      access_token_typ: []\n"), "`access_token_typ` lists"),
        (format!("identity:\n  service_accounts:\n{sa}"), oidc("      audiences: [a]\n      subject_fallback: [\"\"]\n"), "claim names must not be empty"),
        (format!("identity:\n  service_accounts:\n{sa}"), "identity:\n  client_certs:\n    - { subject_cn: bot, groups: [agents] }\n".into(), "needs a listener with `tls.client_ca`"),
        (format!("identity:\n  service_accounts:\n{sa}"), "identity:\n  client_certs:\n    - { subject_cn: bot, san_dns: bot.corp, groups: [agents] }\n".into(), "exactly one of subject_cn"),
        ("tls: {} }".into(), "tls: { client_auth: required } }".into(), "needs `client_ca`"),
        ("tls: {} }".into(), "tls: { client_ca: /nonexistent/ca.pem } }".into(), "cannot read"),
    ];
    for (from, to, fragment) in table {
        assert!(BASE.contains(&from), "case {from:?} does not apply");
        let text = BASE.replacen(&from, &to, 1);
        let err = match parse(&text) {
            Ok(_) => panic!("accepted: {to}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(fragment), "{to}: got `{err}`");
        assert!(err.starts_with("test.yaml:"), "{err}");
    }
}

#[test]
fn identity_config_parses() {
    let text = BASE.replace(
        "identity:\n",
        "identity:\n  oidc:\n    - { issuer: https://idp.example.com, audiences: [agentgate], groups_claim: realm_access.roles }\n",
    );
    let c = parse(&text).unwrap();
    let i = &c.identity.oidc[0];
    assert_eq!(i.groups_claim, "realm_access.roles");
    assert_eq!(i.leeway, Duration::from_secs(30));
    // RFC 9068 access tokens only, and no subject but `sub`, unless the issuer says otherwise.
    assert_eq!(i.access_token_typ, vec!["at+jwt"]);
    assert!(i.subject_fallback.is_empty());
    let lenient = parse(&text.replace(
        "groups_claim: realm_access.roles }",
        "groups_claim: realm_access.roles, access_token_typ: [at+jwt, JWT, none], subject_fallback: [client_id] }",
    ))
    .unwrap();
    let i = &lenient.identity.oidc[0];
    assert_eq!(i.access_token_typ, vec!["at+jwt", "jwt", "none"]);
    assert_eq!(i.subject_fallback, vec!["client_id"]);
    assert!(
        i.algorithms.iter().any(|a| a == "ES256")
            && !i.algorithms.iter().any(|a| a.starts_with("HS"))
    );
    assert_eq!(c.identity.service_accounts[0].groups, vec!["agents"]);
    assert_eq!(c.routes[0].access, Access::Groups(vec!["agents".into()]));
    // `check --skip-secrets` accepts a token_sha256 that comes from a secret reference.
    let by_ref = BASE.replace(
        "token_sha256: 52429752765c16a4897560e0f4b0a373ee9dfab7da0c8ca37a09c9e62cccd576",
        "token_sha256: \"${file:/nonexistent/dev-token.sha256}\"",
    );
    assert!(parse(&by_ref).is_err());
    assert!(secret::with_placeholders(|| parse(&by_ref)).is_ok());
}

#[test]
fn masking_config() {
    let with = |extra: &str, route_extra: &str| {
        BASE.replace(
            "    access: { groups: [agents] }\n",
            &format!("    access: {{ groups: [agents] }}\n{route_extra}"),
        ) + extra
    };
    let good = with(
        "masking:\n  policies:\n    default:\n      request: { secrets: redact, pii: pseudonymize, detectors: { email: hash } }\n      response: { pii: redact, restore_pseudonyms: true }\n  custom_detectors:\n    - { name: employee_id, regex: \"EMP-[0-9]{6}\" }\nguardrails:\n  - { name: no-keys, direction: request, detectors: [private_key, employee_id] }\n",
        "    masking: default\n    guardrails: [no-keys]\n",
    );
    let c = parse(&good).unwrap();
    let p = &c.masking.policies["default"];
    assert_eq!(p.request.detectors["email"], crate::mask::Action::Hash);
    assert_eq!(p.response.pii, crate::mask::Action::Redact);
    assert!(p.restore_pseudonyms);
    assert_eq!(c.routes[0].guardrails, vec!["no-keys"]);
    let refused: &[(&str, &str, &str)] = &[
        (
            "",
            "    masking: nope\n",
            "masking policy `nope` is not defined",
        ),
        (
            "",
            "    guardrails: [nope]\n",
            "guardrail `nope` is not defined",
        ),
        (
            "masking:\n  custom_detectors:\n    - { name: x, regex: \"EMP-[0-9]+\" }\n",
            "",
            "unbounded",
        ),
        (
            "masking:\n  custom_detectors:\n    - { name: Bad-Name, words: [a] }\n",
            "",
            "lowercase",
        ),
        (
            "masking:\n  custom_detectors:\n    - { name: email, words: [a] }\n",
            "",
            "already used",
        ),
        (
            "masking:\n  policies:\n    p:\n      response: { pii: pseudonymize }\n",
            "",
            "pseudonymize applies to requests",
        ),
        (
            "masking:\n  policies:\n    p:\n      request: { secrets: shred }\n",
            "",
            "unknown action `shred`",
        ),
        (
            "guardrails:\n  - { name: g, direction: sideways, deny_words: [x] }\n",
            "",
            "must be request or response",
        ),
        (
            "guardrails:\n  - { name: g, direction: request, detectors: [nope] }\n",
            "",
            "unknown detector `nope`",
        ),
        (
            "guardrails:\n  - { name: g, direction: request }\n",
            "",
            "needs `detectors` or `deny_words`",
        ),
    ];
    for (extra, route_extra, fragment) in refused {
        let err = match parse(&with(extra, route_extra)) {
            Ok(_) => panic!("accepted: {extra}{route_extra}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(fragment), "{extra}{route_extra}: {err}");
        assert!(err.starts_with("test.yaml:"), "{err}");
    }
}

#[test]
fn mcp_routes() {
    let with = |mcp: &str| {
        BASE.replace(
            "    access: { groups: [agents] }\n",
            &format!("    access: {{ groups: [agents] }}\n    mcp:\n{mcp}"),
        )
    };
    let c = parse(&with(
        "      tools:\n        - { name: search_issues, groups: [agents] }\n        - { name: \"create_*\" }\n      pin_definitions: true\n      server_requests: { sampling: allow, roots: deny }\n",
    ))
    .unwrap();
    let m = c.routes[0].mcp.as_ref().unwrap();
    assert_eq!(m.tools.as_ref().unwrap()[1].pattern, "create_*");
    assert_eq!(m.tools.as_ref().unwrap()[1].groups, None);
    assert!(m.resources.is_none() && m.pin_definitions);
    assert_eq!(
        m.server_requests,
        McpServerRequests {
            sampling: true,
            elicitation: true,
            roots: false
        }
    );
    let c = parse(&with(
        "      oauth: { resource: https://gw.example/mcp, authorization_servers: [https://idp.example] }\n",
    ))
    .unwrap();
    let o = c.routes[0].mcp.as_ref().unwrap().oauth.as_ref().unwrap();
    assert_eq!(o.resource.as_deref(), Some("https://gw.example/mcp"));
    assert_eq!(o.authorization_servers, ["https://idp.example"]);
    // Sampling is denied unless allowed.
    let c = parse(&with("      pin_definitions: false\n")).unwrap();
    assert!(!c.routes[0].mcp.as_ref().unwrap().server_requests.sampling);
    let refused: &[(&str, &str, usize)] = &[
        (
            "      tools:\n        - { name: x, groups: [] }\n",
            "empty `groups` list",
            15,
        ),
        (
            "      tools:\n        - { uri: x }\n",
            "with `name`, not `uri`",
            15,
        ),
        (
            "      resources:\n        - { groups: [a] }\n",
            "needs a non-empty `uri`",
            15,
        ),
        (
            "      server_requests: { sampling: maybe }\n",
            "must be allow or deny",
            15,
        ),
        ("      tool: []\n", "unknown field `tool`", 15),
        (
            "      oauth: { resource: https://gw.example/mcp }\n",
            "name at least one issuer",
            15,
        ),
        (
            "      oauth: { authorization_servers: [http://idp] }\n",
            "must be an https:// issuer URL",
            15,
        ),
        (
            "      oauth: { resource: http://gw/mcp, authorization_servers: [https://idp] }\n",
            "mcp.oauth.resource",
            15,
        ),
    ];
    for (mcp, fragment, line) in refused {
        let err = parse(&with(mcp)).expect_err(mcp);
        let rendered = err.to_string();
        assert!(rendered.contains(fragment), "{mcp}: got `{rendered}`");
        assert_eq!(err.line, Some(*line), "{mcp}: {rendered}");
    }
}

#[test]
fn hosted_mcp_routes() {
    let with = |h: &str| {
        BASE.replace(
            "    access: { groups: [agents] }\n",
            &format!("    access: {{ groups: [agents] }}\n    hosted_mcp:\n{h}"),
        )
    };
    let c = parse(&with(
        "      allow:\n        - https://MCP.example.com./*\n        - \"https://*.tools.example:8443/mcp\"\n      connectors: [connector_googledrive]\n      require_approval: always\n",
    ))
    .unwrap();
    let h = c.routes[0].hosted_mcp.as_ref().unwrap();
    assert_eq!(
        h.allow,
        [
            ServerPattern {
                text: "https://MCP.example.com./*".into(),
                host: "mcp.example.com".into(),
                subdomains: false,
                port: 443,
                path: "/*".into(),
            },
            ServerPattern {
                text: "https://*.tools.example:8443/mcp".into(),
                host: "tools.example".into(),
                subdomains: true,
                port: 8443,
                path: "/mcp".into(),
            },
        ]
    );
    assert_eq!(h.connectors, ["connector_googledrive"]);
    assert!(h.require_approval_always);
    // Empty lists: every hosted MCP tool is refused; approval is the agent's unless forced.
    let c = parse(&with("      allow: []\n")).unwrap();
    let h = c.routes[0].hosted_mcp.as_ref().unwrap();
    assert!(h.allow.is_empty() && h.connectors.is_empty() && !h.require_approval_always);
    assert!(parse(BASE).unwrap().routes[0].hosted_mcp.is_none());
    let refused: &[(&str, &str, usize)] = &[
        (
            "      allow: [http://mcp.example.com/*]\n",
            "must start with https://",
            15,
        ),
        (
            "      allow: [\"https://user@mcp.example.com/*\"]\n",
            "user name or password",
            15,
        ),
        (
            "      allow: [\"https://mcp.example.com/*?x=1\"]\n",
            "has a query",
            15,
        ),
        (
            "      allow: [\"https://*.10.0.0.1/*\"]\n",
            "before an IP address",
            15,
        ),
        (
            "      allow: [\"https://mcp.*.example/*\"]\n",
            "not a plain DNS name",
            15,
        ),
        (
            "      allow: [\"https://mcp.example.com/../*\"]\n",
            "`.` or `..` segments",
            15,
        ),
        ("      connectors: [\"connector_*\"]\n", "no `*`", 15),
        (
            "      allow: []\n      require_approval: never\n",
            "must be `always`",
            16,
        ),
        ("      allowed: []\n", "unknown field `allowed`", 15),
    ];
    for (h, fragment, line) in refused {
        let err = parse(&with(h)).expect_err(h);
        let rendered = err.to_string();
        assert!(rendered.contains(fragment), "{h}: got `{rendered}`");
        assert_eq!(err.line, Some(*line), "{h}: {rendered}");
    }
}

#[test]
fn store_postgres_is_tls_unless_loopback_and_asked() {
    let with = |pg: &str| parse(&format!("{BASE}store:\n  postgres: {pg}\n"));
    let c = with(r#"{ url: "postgres://gw:pw@db.internal:5432/agentgate", ca_file: /ca.pem, pool: 4, replica: gw-0 }"#)
        .unwrap();
    let pg = c.store.postgres.unwrap();
    assert!(pg.tls);
    assert_eq!((pg.pool, pg.replica.as_deref()), (4, Some("gw-0")));
    assert_eq!(pg.lease, Duration::from_secs(15));
    assert!(
        !format!("{pg:?}").contains("pw@"),
        "Debug must not print the URL's password"
    );
    let c =
        with(r#"{ url: "postgres://gw:pw@127.0.0.1:5432/agentgate?sslmode=disable" }"#).unwrap();
    assert!(!c.store.postgres.unwrap().tls);
    assert!(parse(BASE).unwrap().store.postgres.is_none());
    for (pg, fragment) in [
        (
            r#"{ url: "postgres://gw:pw@db.internal/agentgate?sslmode=disable" }"#,
            "plaintext to the database is allowed only on loopback",
        ),
        (r#"{ url: "mysql is not it" }"#, "is not a PostgreSQL URL"),
        (
            r#"{ url: "postgres://db/x", pool: 0 }"#,
            "store.postgres.pool is 0",
        ),
        (
            r#"{ url: "postgres://db/x", replica: "a b" }"#,
            "store.postgres.replica `a b`",
        ),
        (
            r#"{ url: "postgres://db/x", lease: 1s }"#,
            "lease must be at least 2s",
        ),
        (
            r#"{ url: "postgres://db/x", queue: 0 }"#,
            "queue must be greater than 0",
        ),
        (
            r#"{ url: "postgres://db/x", sslrootcert: /x }"#,
            "unknown field `sslrootcert`",
        ),
    ] {
        let e = with(pg).unwrap_err().to_string();
        assert!(e.contains(fragment), "{pg}: {e}");
        assert!(
            !e.contains("pw@"),
            "{pg}: the URL's password in an error: {e}"
        );
        assert!(e.contains("test.yaml:"), "{pg}: no position: {e}");
    }
}

#[test]
fn the_store_section_loads_with_its_own_secret_alone() {
    let dir = std::env::temp_dir().join(format!("agentgate-load-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::env::set_var(
        "AGENTGATE_TEST_DB_URL",
        "postgres://gw:pw@db.internal/agentgate",
    );
    let text = BASE.replace("AGENTGATE_TEST_KEY", "AGENTGATE_TEST_UNSET_PROVIDER_KEY")
        + "store:\n  postgres: { url: \"${env:AGENTGATE_TEST_DB_URL}\", replica: gw-1 }\n";
    std::fs::write(&path, text).unwrap();
    assert!(
        Config::load(&path).is_err(),
        "the whole file needs the provider key"
    );
    let pg = Config::load_store(&path).unwrap().postgres.unwrap();
    assert_eq!(
        (pg.url.expose(), pg.replica.as_deref()),
        ("postgres://gw:pw@db.internal/agentgate", Some("gw-1"))
    );
    std::fs::write(&path, BASE).unwrap();
    assert!(Config::load_store(&path).unwrap().postgres.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `usage:`, `limits:` and `limits_store:`: each case is appended to BASE and must be refused
/// with the fragment, positioned on the line it names (the addition starts on line 17; a name
/// used twice points at `limits:`).
#[test]
fn usage_and_limits_errors_are_positioned() {
    let table: &[(&str, &str, usize)] = &[
        ("usage:\n  time_zone: Mars/Olympus", "not a time zone", 18),
        ("usage:\n  prices: { m: { input: -1, output: 1 } }", "not a price", 18),
        ("usage:\n  currency: usd", "currency code", 18),
        ("limits:\n  - { name: a, per: team, requests: { per: 1m, max: 1 } }", "must be identity, group or route", 18),
        ("limits:\n  - { name: a, per: identity, requests: { per: fortnight, max: 1 } }", "`per: fortnight`", 18),
        ("limits:\n  - { name: a, per: identity, tokens: { per: 500ms, max: 1 } }", "whole seconds from 1s to 24h", 18),
        ("limits:\n  - { name: a, per: identity }", "limits nothing", 18),
        ("limits:\n  - { name: a, per: identity, concurrent: 0 }", "at least 1", 18),
        ("limits:\n  - { name: a, per: identity, match: { routes: [nope] }, concurrent: 1 }", "`nope`, which is not a route", 18),
        ("limits:\n  - { name: a, per: identity, cost: { per: month, max: 5, currency: EUR } }", "cost is in EUR but prices are in USD", 18),
        ("limits:\n  - { name: a, per: identity, concurrent: 1 }\n  - { name: a, per: route, concurrent: 1 }", "defined twice", 17),
        ("limits_store:\n  redis: { url: \"redis://10.0.0.1:6379\" }", "must be rediss://", 18),
        ("limits_store:\n  redis: { url: \"rediss://r:6380\", on_unavailable: maybe }", "must be refuse or allow", 18),
        ("tracing:\n  otlp: { endpoint: \"http://collector:4318\" }", "http:// only to a loopback", 18),
        ("tracing:\n  otlp: { endpoint: \"https://c:4318\", ca_file: /nope.pem }", "does not exist", 18),
        ("tracing:\n  otlp: { endpoint: \"https://c:4317\", protocol: thrift }", "must be http (HTTP/protobuf) or grpc", 18),
        ("limits:\n  - { name: a, per: identity, concurrent: 1, cut_streams: true }", "cut_streams needs tokens or cost", 18),
    ];
    let mut wrong = Vec::new();
    for (add, fragment, line) in table {
        let text = format!("{BASE}{add}\n");
        let err = parse(&text).expect_err(&format!("accepted: {add}"));
        let rendered = err.to_string();
        assert!(rendered.contains(fragment), "{add}: got `{rendered}`");
        if err.line != Some(*line) {
            wrong.push(format!("{add}: want line {line}, got `{rendered}`"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let ok = parse(&format!(
        "{BASE}usage:\n  time_zone: Europe/Paris\n  prices: {{ gpt-4o: {{ input: 1, output: 2 }} }}\nlimits:\n  - {{ name: a, per: group, groups: [agents], cost: {{ per: month, max: 5.5 }}, requests: {{ per: 1m, max: 3 }} }}\nlimits_store:\n  redis: {{ url: \"rediss://r:6380\" }}\n"
    ))
    .expect("valid");
    assert_eq!(ok.limits[0].cost.map(|q| q.max), Some(5_500_000));
    assert_eq!(
        ok.usage.prices.lookup("gpt-4o").map(|(_, p)| p.output),
        Some(2_000_000)
    );
    assert!(!ok.limits_store.expect("redis").fail_open);
}
