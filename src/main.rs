use agentgate::cli::{CertCommand, Cli, Command, TokenCommand};
use agentgate::config::Config;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    agentgate::alloc::tune();
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
            match agentgate::server::run(cfg) {
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
