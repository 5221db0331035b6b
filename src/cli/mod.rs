//! The command line: its grammar (clap) here, and one file per subcommand family that does
//! the work. `main` parses, dispatches and turns the outcome into an exit code.

pub mod approvals;
pub mod audit;
pub mod cert;
pub mod mcp;
pub mod run;
pub mod sessions;
pub mod token;
pub mod usage;

use crate::config::Config;
use crate::upstream::client::Fetcher;
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
    /// Service-account tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The tamper-evident record store.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Recorded exchanges: list, show, replay.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Approvals, through the admin API: list, show, approve, deny.
    Approvals {
        #[command(flatten)]
        api: AdminApiArgs,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// MCP tool definitions pinned by routes with `pin_definitions`, through the admin API.
    Mcp {
        #[command(flatten)]
        api: AdminApiArgs,
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Tokens and cost from the usage ledger, summed by identity, group, route or model.
    Usage {
        #[arg(long, short, env = "AGENTGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The ledger file itself (default: `state_dir/usage.json` of --config).
        #[arg(long)]
        file: Option<PathBuf>,
        /// identity, group, route or model.
        #[arg(long, default_value = "identity")]
        by: String,
        /// The last days (30d) or hours (48h), today included.
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long)]
        json: bool,
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

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a random service-account token: prints it once, and the YAML line that lets it
    /// in (only its SHA-256 goes in the config).
    Create {
        /// The account name (the `subject` in logs and records).
        #[arg(long)]
        name: String,
        /// Comma-separated groups, matched by routes' `access.groups`.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Also write the token to FILE (mode 0600) and its SHA-256 to FILE.sha256, instead of
        /// printing the token.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
}

/// Where the record store is: from the config (`recording.dir`, else `state_dir/records`) or
/// given directly.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    #[arg(long, short, env = "AGENTGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The records directory itself.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The records directory: `--dir`, else the one the configuration names.
    pub fn records_dir(&self) -> Result<PathBuf, String> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let Some(path) = &self.config else {
            return Err("give --config FILE (or AGENTGATE_CONFIG) or --dir RECORDS_DIR".into());
        };
        let c = Config::load_without_secrets(path).map_err(|e| e.to_string())?;
        Ok(c.recording.dir_under(&c.server.state_dir))
    }

    /// The shared store every replica records to, when the configuration names one (and no
    /// `--dir` asks for a local directory instead).
    pub fn shared(&self) -> Result<Option<std::sync::Arc<crate::db::Database>>, String> {
        let (None, Some(path)) = (&self.dir, &self.config) else {
            return Ok(None);
        };
        let c = Config::load_without_secrets(path).map_err(|e| e.to_string())?;
        if c.store.postgres.is_none() {
            return Ok(None);
        }
        // The URL's password is a secret: this time resolve it (and only it).
        let store = Config::load_store(path).map_err(|e| e.to_string())?;
        let pg = store.postgres.as_ref().expect("checked above");
        crate::db::Database::open(pg, crate::db::Role::Client).map(Some)
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain of every record, the index against it, and (with --checkpoints)
    /// the store against signed checkpoints kept off this machine: exit 0 when nothing is wrong,
    /// 1 naming what was modified, removed, inserted, reordered, cut from the end or rolled
    /// back, 2 when it could not be checked.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Checkpoint lines exported from the log pipeline (stdout lines with
        /// `"kind":"checkpoint"`, prefixes allowed) or the HTTPS endpoint's copies.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// The public key checkpoints are signed with (`ed25519:BASE64` as `agentgate audit
        /// pubkey` prints it, or a file holding it); repeat for keys rotated out. Default: the
        /// key of --config's `recording.signing_key`.
        #[arg(long, value_name = "KEY")]
        pubkey: Vec<String>,
    },
    /// Print the public key checkpoints are signed with (`recording.signing_key`, else the key
    /// generated into the state directory), for auditors.
    Pubkey {
        #[arg(long, short, env = "AGENTGATE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// Recorded exchanges, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only exchanges of the last DURATION (e.g. 30m, 24h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        route: Option<String>,
        /// The caller's subject.
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        conversation: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One exchange, readable (or the record itself with --json).
    Show {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Re-emit a recorded SSE stream on stdout with its original timing.
    Replay {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Play N times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Instead of replaying, send the recorded (masked) request again to URL (a gateway,
        /// e.g. https://127.0.0.1:8443) and show how the answer differs.
        #[arg(long, value_name = "URL")]
        resend: Option<String>,
        /// The API key to resend with (e.g. a service-account token).
        #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
        token: Option<String>,
        /// A CA to trust for URL besides the system roots (e.g. var/tls/ca.pem).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

/// How to reach the admin API, and as whom.
#[derive(clap::Args, Debug)]
pub struct AdminApiArgs {
    /// The admin listener, e.g. https://agentgate.example:9090 (default: `admin.public_url`
    /// of --config, else http://127.0.0.1:9090).
    #[arg(long, env = "AGENTGATE_ADMIN_URL", global = true)]
    pub admin: Option<String>,
    #[arg(long, short, env = "AGENTGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Your OIDC access token or service-account token.
    #[arg(long, env = "AGENTGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A CA to trust for the admin listener besides the system roots (e.g. var/tls/ca.pem).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Approvals you may see, newest first.
    List {
        /// pending, approved, denied, expired, abandoned, interrupted or all.
        #[arg(long, default_value = "pending")]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// One approval with its masked summary and decisions.
    Show { id: String },
    /// Approve (needs a reason; the requester cannot approve their own request).
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Deny (needs a reason).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum McpCommand {
    /// Every pinned tool definition, and the changed ones waiting to be accepted (JSON).
    Pins,
    /// Accepts the changed definition of a tool: it is shown and callable again.
    Accept { route: String, tool: String },
}

/// Sends one request and waits for the whole answer (a command has no runtime of its own).
fn send(fetcher: &Fetcher, req: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(fetcher.send(req)).map_err(|e| e.to_string())
}
