use agentgate::cli::{
    approvals, audit, cert, mcp, run, sessions, token, usage, AuditCommand, CertCommand, Cli,
    Command, TokenCommand,
};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    agentgate::server::alloc::tune();
    let cli = Cli::parse();
    agentgate::session_log::Logger::install();
    match cli.command {
        Command::Run { config } => exit(run::run(config), None),
        Command::Check {
            config,
            skip_secrets,
        } => exit(run::check(&config, skip_secrets), None),
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    groups,
                    write,
                },
        } => exit(
            token::create(&name, &groups, write.as_deref()),
            Some("agentgate token create"),
        ),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    store,
                    checkpoints,
                    pubkey,
                },
        } => match audit::verify(&store, checkpoints.as_deref(), &pubkey) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("agentgate audit verify: {e}");
                ExitCode::from(2)
            }
        },
        Command::Audit {
            command: AuditCommand::Pubkey { config },
        } => match audit::pubkey(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agentgate audit pubkey: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Usage {
            config,
            file,
            by,
            since,
            json,
        } => exit(
            usage::run(config.as_deref(), file, &by, &since, json),
            Some("agentgate usage"),
        ),
        Command::Sessions { command } => exit(sessions::run(command), Some("agentgate sessions")),
        Command::Approvals { api, command } => {
            exit(approvals::run(api, command), Some("agentgate approvals"))
        }
        Command::Mcp { api, command } => exit(mcp::run(api, command), Some("agentgate mcp")),
        Command::Cert {
            command: CertCommand::Pin { file },
        } => exit(cert::pin(&file), None),
    }
}

/// Success, or the error on stderr (after `command: ` when given) and exit status 1.
fn exit(outcome: Result<(), String>, command: Option<&str>) -> ExitCode {
    match (outcome, command) {
        (Ok(()), _) => ExitCode::SUCCESS,
        (Err(e), Some(command)) => {
            eprintln!("{command}: {e}");
            ExitCode::FAILURE
        }
        (Err(e), None) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
