//! Command-line interface.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "agentgate",
    version,
    about = "A TLS-both-legs Layer-7 gateway for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the gateway.
    Run {
        #[arg(long, short, env = "AGENTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and the secrets it references); exit 0 if valid, 1 if not.
    Check {
        #[arg(long, short, env = "AGENTGATE_CONFIG")]
        config: PathBuf,
        /// Check that `${env:..}`/`${file:..}` references are well formed without reading them
        /// (for CI, where the secrets do not exist).
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Certificate helpers.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Print the `pins_sha256` value (base64 SHA-256 of the public key) of a PEM certificate.
    Pin { file: PathBuf },
}
