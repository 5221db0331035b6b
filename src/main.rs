use agentgate::cli::{CertCommand, Cli, Command};
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
