use agentgate::cli::{
    AdminApiArgs, ApprovalsCommand, AuditCommand, CertCommand, Cli, Command, SessionsCommand,
    StoreArgs, TokenCommand,
};
use agentgate::config::Config;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    agentgate::server::alloc::tune();
    let cli = Cli::parse();
    agentgate::session_log::Logger::install();
    match cli.command {
        Command::Check {
            config,
            skip_secrets,
        } => match if skip_secrets {
            Config::load_without_secrets(&config)
        } else {
            Config::load(&config)
        } {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} route(s))",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match agentgate::server::run(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agentgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    groups,
                    write,
                },
        } => match create_token(&name, &groups, write.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agentgate token create: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Audit {
            command: AuditCommand::Verify { store },
        } => match records_dir(&store)
            .and_then(|d| agentgate::record::verify::verify(&d).map(|r| (d, r)))
        {
            Ok((dir, r)) => match r.problem {
                None => {
                    println!(
                        "{}: intact: {} records in {} segment(s)",
                        dir.display(),
                        r.verified,
                        r.segments
                    );
                    ExitCode::SUCCESS
                }
                Some(p) => {
                    println!(
                        "{}: TAMPERED or DAMAGED after {} intact records: {p}",
                        dir.display(),
                        r.verified
                    );
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("agentgate audit verify: {e}");
                ExitCode::from(2)
            }
        },
        Command::Sessions { command } => match sessions(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agentgate sessions: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Approvals { api, command } => match approvals(api, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agentgate approvals: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Cert {
            command: CertCommand::Pin { file },
        } => match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|pem| agentgate::tls::pin_of_pem(&pem))
        {
            Ok(pin) => {
                println!("{pin}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn create_token(
    name: &str,
    groups: &[String],
    write: Option<&std::path::Path>,
) -> Result<(), String> {
    use agentgate::identity::service_account::{generate_token, sha256_hex};
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:/".contains(&b))
    };
    if !ok(name) || groups.iter().any(|g| !ok(g)) {
        return Err(
            "names and groups may use letters, digits and - _ . @ : / (no spaces or quotes)".into(),
        );
    }
    let token = generate_token()?;
    let hash = sha256_hex(&token);
    let line = format!(
        "- {{ name: {name}, token_sha256: {hash}, groups: [{}] }}",
        groups.join(", ")
    );
    match write {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(f, "{token}").map_err(|e| format!("{}: {e}", path.display()))?;
            let hash_path = format!("{}.sha256", path.display());
            std::fs::write(&hash_path, format!("{hash}\n"))
                .map_err(|e| format!("{hash_path}: {e}"))?;
            println!(
                "# token written to {} (mode 0600), its SHA-256 to {hash_path}",
                path.display()
            );
        }
        None => {
            println!("# The token for `{name}`, shown once (agentgate keeps only its SHA-256).");
            println!("# Give it to the agent as its API key, e.g. OPENAI_API_KEY:");
            println!("{token}");
        }
    }
    println!("# Add under identity.service_accounts:");
    println!("{line}");
    Ok(())
}

fn records_dir(store: &StoreArgs) -> Result<std::path::PathBuf, String> {
    if let Some(d) = &store.dir {
        return Ok(d.clone());
    }
    let Some(path) = &store.config else {
        return Err("give --config FILE (or AGENTGATE_CONFIG) or --dir RECORDS_DIR".into());
    };
    let c = Config::load_without_secrets(path).map_err(|e| e.to_string())?;
    Ok(c.recording.dir_under(&c.server.state_dir))
}

fn find(dir: &std::path::Path, id: &str) -> Result<serde_json::Value, String> {
    let entry = agentgate::record::store::read_index(dir)
        .into_iter()
        .rev()
        .find(|e| e.id == id || (id.len() >= 8 && e.id.starts_with(id)))
        .ok_or_else(|| format!("no recorded exchange {id} in {}", dir.display()))?;
    agentgate::record::store::read_record(dir, &entry).map_err(|e| e.to_string())
}

fn sessions(cmd: SessionsCommand) -> Result<(), String> {
    use agentgate::record::{render, store};
    match cmd {
        SessionsCommand::List {
            store: s,
            since,
            route,
            identity,
            conversation,
            limit,
        } => {
            let dir = records_dir(&s)?;
            let after = match since {
                Some(d) => {
                    let d = agentgate::config::units::parse_duration(&d)?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    now.saturating_sub(d).as_millis() as u64
                }
                None => 0,
            };
            println!(
                "{:<32}  {:<24}  {:<12}  {:<20}  {:>6}  REQUEST",
                "ID", "TIME", "ROUTE", "IDENTITY", "STATUS"
            );
            let entries = store::read_index(&dir);
            for e in entries
                .iter()
                .rev()
                .filter(|e| e.ts_ms >= after)
                .filter(|e| route.as_ref().is_none_or(|r| e.route.as_ref() == Some(r)))
                .filter(|e| {
                    identity
                        .as_ref()
                        .is_none_or(|i| e.subject.as_ref() == Some(i))
                })
                .filter(|e| conversation.as_ref().is_none_or(|c| &e.conversation == c))
                .take(limit)
            {
                let ts = agentgate::util::time::rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.ts_ms),
                );
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
        SessionsCommand::Show { id, store: s, json } => {
            let r = find(&records_dir(&s)?, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", render::show(&r));
            }
            Ok(())
        }
        SessionsCommand::Replay {
            id,
            store: s,
            resend: Some(url),
            token,
            ca,
            ..
        } => {
            let r = find(&records_dir(&s)?, &id)?;
            resend(&r, &url, token.as_deref(), ca)
        }
        SessionsCommand::Replay {
            id,
            store: s,
            speed,
            ..
        } => {
            let r = find(&records_dir(&s)?, &id)?;
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

/// Sends a recorded request (its masked body) again and prints the old and new answers.
fn resend(
    r: &serde_json::Value,
    url: &str,
    token: Option<&str>,
    ca: Option<std::path::PathBuf>,
) -> Result<(), String> {
    use agentgate::record::render;
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
    let fetcher =
        agentgate::upstream::client::Fetcher::new(ca, std::time::Duration::from_secs(600));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let resp = rt.block_on(fetcher.send(req)).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut again = serde_json::json!({"response": {"status": status}});
    if sse {
        let events: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim_start()))
                    .collect();
                (!data.is_empty())
                    .then(|| serde_json::json!({"t_ms": 0.0, "data": data.join("\n")}))
            })
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

/// `agentgate approvals ...`: the admin API, as the person whose token is given.
fn approvals(api: AdminApiArgs, cmd: ApprovalsCommand) -> Result<(), String> {
    let base = match (&api.admin, &api.config) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(c)) => {
            agentgate::config::Config::load_without_secrets(c)
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
    let fetcher =
        agentgate::upstream::client::Fetcher::new(api.ca, std::time::Duration::from_secs(30))
            .with_loopback_http();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let resp = rt.block_on(fetcher.send(req)).map_err(|e| e.to_string())?;
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
                    "{}  {:<11} {:<20} {} {} route={} by={} waiting={}s left={}s{}",
                    a["id"].as_str().unwrap_or("?"),
                    a["state"].as_str().unwrap_or("?"),
                    a["rule"].as_str().unwrap_or("?"),
                    a["method"].as_str().unwrap_or("?"),
                    a["path"].as_str().unwrap_or("?"),
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
