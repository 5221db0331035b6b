//! The YAML configuration: serde structs for the file format (`raw`), converted with
//! `TryFrom` into the validated model the gateway uses. Every check runs during
//! deserialization so serde_yaml reports the file, line and column of the offending value.
//!
//! Invariants enforced here (fail closed, at start-up): no plaintext leg except on loopback,
//! TLS >= 1.2 on both legs, upstream verification cannot be turned off, unknown keys are errors.

mod raw;
pub mod secret;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{normalize_typ, JWS_ALGORITHMS};
pub use secret::Secret;

/// A validated configuration file. Relative paths in it are relative to the working directory.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawConfig")]
pub struct Config {
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub identity: IdentityConfig,
    pub masking: MaskingConfig,
    pub guardrails: Vec<Guardrail>,
    /// `approvals:`: rules that hold requests for a human (routes name the ones they apply).
    pub approvals: Vec<crate::policy::ApprovalRule>,
    pub recording: RecordingConfig,
    pub routes: Vec<Route>,
    /// `store:`: state shared by replicas (PostgreSQL); empty: local files under `state_dir`.
    pub store: StoreConfig,
    /// `usage:`: prices and the time zone of calendar windows.
    pub usage: UsageConfig,
    /// `limits:`, in file order.
    pub limits: Vec<Limit>,
    /// `limits_store.redis`: limits shared through Redis (`None`: counted in this process).
    pub limits_store: Option<RedisSettings>,
    /// `tracing.otlp`: spans exported over OTLP/HTTP (`None`: no tracing).
    pub tracing: Option<TracingConfig>,
}

/// `store:`: where approvals and records live when several replicas act as one gateway.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(try_from = "raw::RawStore")]
pub struct StoreConfig {
    pub postgres: Option<PostgresStore>,
}

/// `store.postgres`: the database every replica shares.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// The connection URL (it holds a password: never printed).
    pub url: Secret,
    /// TLS with certificate and host name verification; `false` only for `sslmode=disable`
    /// to a loopback host.
    pub tls: bool,
    /// Extra CA for the database's certificate (system roots are always trusted).
    pub ca_file: Option<PathBuf>,
    /// Connections kept open at most.
    pub pool: usize,
    /// This replica's name in the database (`None`: the host name).
    pub replica: Option<String>,
    /// A replica that has not renewed its lease for this long is gone: approvals waiting on it
    /// are marked interrupted.
    pub lease: Duration,
    /// Records waiting for the database at most, in memory, before `recording.on_failure`.
    pub queue: usize,
    pub connect_timeout: Duration,
}

/// `tracing:`: where spans go.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector's OTLP base URL (over HTTP, `/v1/traces` is added): https://, or http:// to
    /// loopback.
    pub endpoint: String,
    /// `protocol: http` (HTTP/protobuf, the default) or `grpc`.
    pub grpc: bool,
    pub ca_file: Option<PathBuf>,
    /// How long spans wait in the batch before they are sent.
    pub flush_interval: Duration,
    pub service_name: String,
}

/// `limits_store.redis`: where replicas share their limits' counters.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `rediss://[user:password@]host:port[/db]` (a secret reference may hold it).
    pub url: Secret,
    pub ca_file: Option<PathBuf>,
    /// Each call to Redis, connection included.
    pub timeout: Duration,
    /// When Redis does not answer: let requests through uncounted (`true`) or refuse them.
    pub fail_open: bool,
    /// Namespaces the keys (several gateways' configurations on one Redis).
    pub key_prefix: String,
}

/// `usage:`: what tokens cost and how days and months are counted.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawUsage")]
pub struct UsageConfig {
    /// The shipped prices with the file's entries over them.
    pub prices: std::sync::Arc<crate::usage::PriceTable>,
    /// The currency prices and cost budgets are written in (a label: no conversion).
    pub currency: String,
    /// Where a day and a month of a calendar window begin.
    pub time_zone: jiff::tz::TimeZone,
    pub time_zone_name: String,
    /// The output a request that names no `max_tokens` is assumed to use before its answer
    /// says what it used.
    pub default_max_output_tokens: u64,
}

/// One `limits:` entry: quotas counted apart for each identity, group or route it applies to.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawLimit")]
pub struct Limit {
    pub name: String,
    pub per: LimitSubject,
    /// `match.routes`: the routes it applies to (empty: every route).
    pub routes: Vec<String>,
    /// Only callers in one of these groups (empty: every caller); with `per: group`, the groups
    /// counted (empty: each of the caller's groups).
    pub groups: Vec<String>,
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
    /// In micros of `usage.currency`.
    pub cost: Option<Quota>,
    /// As written (checked against `usage.currency`).
    pub cost_currency: Option<String>,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
    /// `cut_streams: true`: a streamed answer whose generated output would take its tokens or
    /// cost past what was left of this limit when the request was admitted is ended with an
    /// SSE error event (otherwise the answer runs to its end and is charged afterwards).
    pub cut_streams: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSubject {
    Identity,
    Group,
    Route,
}

impl LimitSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSubject::Identity => "identity",
            LimitSubject::Group => "group",
            LimitSubject::Route => "route",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub window: Window,
    pub max: u64,
}

/// A window a quota is counted in: fixed lengths aligned to the Unix epoch (so every replica
/// agrees on them), or calendar days and months in `usage.time_zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Every(Duration),
    Day,
    Month,
}

/// `recording:`: where and how exchange records are kept.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawRecording")]
pub struct RecordingConfig {
    /// Default: `state_dir/records`.
    pub dir: Option<PathBuf>,
    pub segment_size: u64,
    pub max_age: Duration,
    pub max_size: u64,
    pub queue: usize,
    pub reject_on_failure: bool,
    pub stdout: bool,
    pub max_body: u64,
    /// `signing_key`: the key checkpoints are signed with (`None`: one generated into the state
    /// directory at start-up, or `check --skip-secrets`).
    pub signing_key: Option<std::sync::Arc<crate::util::ed25519::SigningKey>>,
    pub checkpoints: CheckpointSettings,
}

/// `recording.checkpoints`: when the writer signs a checkpoint, and where it sends it besides
/// the store's own `checkpoints.jsonl`.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub every_records: u64,
    pub every: Duration,
    /// A JSON line on stdout, for the cluster's log pipeline.
    pub stdout: bool,
    /// POSTed (JSON) to this HTTPS endpoint too.
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl RecordingConfig {
    /// `dir`, or `records` under the state directory.
    pub fn dir_under(&self, state_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("records"))
    }
}

/// Masking policies and custom detectors (`masking:`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(try_from = "raw::RawMasking")]
pub struct MaskingConfig {
    /// Key of the `hash` action (HMAC-SHA256); random per process when not configured.
    pub hash_key: Option<Secret>,
    pub policies: std::collections::BTreeMap<String, MaskPolicy>,
    pub custom_detectors: Vec<crate::mask::CustomDetector>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawMaskPolicy")]
pub struct MaskPolicy {
    pub request: crate::mask::Rules,
    pub response: crate::mask::Rules,
    /// Put pseudonyms back in responses to the same conversation.
    pub restore_pseudonyms: bool,
    /// A request body that should be JSON but is not: masked as text (default) or refused.
    pub refuse_invalid_json: bool,
    /// A response body that cannot be read as text (audio, images, archives): refused (default)
    /// or, when the policy says `on_binary_response: pass`, sent as it is.
    pub pass_binary: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// A rule that refuses a request (or ends a response) when its detectors or words appear.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawGuardrail")]
pub struct Guardrail {
    pub name: String,
    pub direction: Direction,
    pub detectors: Vec<String>,
    pub deny_words: Vec<String>,
    pub message: Option<String>,
}

impl Guardrail {
    /// The detector that carries this rule's deny words.
    pub fn words_detector(&self) -> String {
        format!("guardrail_{}", self.name.replace('-', "_"))
    }
}

/// Who may call: OIDC issuers, service-account tokens and client-certificate mappings.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(try_from = "raw::RawIdentity")]
pub struct IdentityConfig {
    pub oidc: Vec<OidcIssuer>,
    pub service_accounts: Vec<ServiceAccount>,
    pub client_certs: Vec<ClientCertRule>,
}

impl IdentityConfig {
    pub fn is_empty(&self) -> bool {
        self.oidc.is_empty() && self.service_accounts.is_empty() && self.client_certs.is_empty()
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawOidcIssuer")]
pub struct OidcIssuer {
    /// Exactly as the tokens' `iss` claim and the discovery document say it.
    pub issuer: String,
    /// A token must name at least one of these in `aud`.
    pub audiences: Vec<String>,
    /// Claim holding the caller's groups; a literal claim name or a dotted path.
    pub groups_claim: String,
    /// Claim naming the caller (`sub`).
    pub subject_claim: String,
    /// Claims naming the caller when `subject_claim` is absent (e.g. `client_id`, `azp`), in
    /// order; empty (the default): a token without `subject_claim` is refused.
    pub subject_fallback: Vec<String>,
    /// Header `typ` values accepted (normalized: lower case, no `application/`; `none` for no
    /// `typ`). Default `at+jwt` (RFC 9068), which ID tokens never carry.
    pub access_token_typ: Vec<String>,
    pub leeway: Duration,
    /// Accepted JWS algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// Extra CA for the IdP's TLS certificate (system roots are always trusted).
    pub ca_file: Option<PathBuf>,
    /// Skip discovery and fetch keys from this URL.
    pub jwks_uri: Option<String>,
    /// How often keys are fetched again in the background.
    pub refresh_interval: Duration,
    /// A token with an unknown `kid` fetches keys again at most this often.
    pub min_refetch_interval: Duration,
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawServiceAccount")]
pub struct ServiceAccount {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub groups: Vec<String>,
    /// The person (issuer, subject) the account belongs to, who decides approvals through it
    /// (counted once with their console session and their own tokens); `None`: it may not.
    pub person: Option<(String, String)>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawClientCertRule")]
pub struct ClientCertRule {
    pub matcher: CertMatcher,
    pub groups: Vec<String>,
}

/// Which part of a verified client certificate names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatcher {
    SubjectCn(String),
    SanDns(String),
    SanUri(String),
    SanEmail(String),
}

/// Who may use a route. Every route has one; there is no implicit default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    AnyAuthenticated,
    /// The caller needs at least one of these groups.
    Groups(Vec<String>),
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawServer")]
pub struct ServerSettings {
    pub state_dir: PathBuf,
    pub threads: usize,
    pub grace_period: Duration,
    pub max_body: u64,
    /// Idle upstream connections kept per worker thread.
    pub upstream_keepalive_pool: usize,
    /// How long an agent may keep the gateway waiting: each read of a request body or of a
    /// later request's header on a kept-alive connection, and a kept-alive connection's idle
    /// time between requests. (The first request's header is bounded by Pingora at 60 s per read.)
    pub client_timeout: Duration,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawListener")]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `None` means plaintext, which validation allows only on loopback addresses.
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawListenerTls")]
pub struct ListenerTls {
    /// Certificate chain and key files; `None` means generate (and reuse) under `state_dir`.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// Extra DNS names / IPs for a generated certificate (localhost, 127.0.0.1 and ::1 are always in).
    pub names: Vec<String>,
    pub min_version: TlsVersion,
    /// CA bundle that verifies client certificates (mutual TLS); `None` asks for none.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a connection without a client certificate is refused.
    pub client_cert_required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawAdmin")]
pub struct Admin {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    /// Groups that may read recorded sessions and every approval through the admin API.
    pub auditors: Vec<String>,
    /// How people reach the admin listener (links in approval notifications), no trailing `/`.
    pub public_url: String,
    /// The web console's sign-in (OpenID Connect authorization code + PKCE); `None`: no console.
    pub console: Option<ConsoleConfig>,
}

/// `admin.console`: the OpenID provider people sign in to the web console with.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// Registered with the provider; `public_url` + `/console/callback` by default.
    pub redirect_url: String,
    pub scopes: Vec<String>,
    /// Where the ID token carries groups (a claim name or dotted path), as in `identity.oidc`.
    pub groups_claim: String,
    pub ca_file: Option<PathBuf>,
    pub session_ttl: Duration,
    /// Cookies carry `Secure` (the admin listener has TLS).
    pub secure_cookies: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawRoute")]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub host: Option<String>,
    pub upstream: Upstream,
    pub access: Access,
    /// The masking policy (a name under `masking.policies`), if any.
    pub masking: Option<String>,
    /// Guardrails (names under `guardrails`) this route applies.
    pub guardrails: Vec<String>,
    /// Approval rules (names under `approvals`) this route applies, in order.
    pub approvals: Vec<String>,
    /// What is recorded of this route's exchanges.
    pub recording: RecordingMode,
    /// Headers the gateway sets on every upstream request (credentials), in file order.
    pub set_headers: Vec<InjectedHeader>,
    /// `mcp:`: the route is an MCP server (Streamable HTTP or SSE transport) governed per tool.
    pub mcp: Option<McpRoute>,
    /// `hosted_mcp:`: the MCP servers a model API request (`tools: [{type: "mcp"}]`) may name.
    pub hosted_mcp: Option<HostedMcp>,
    /// `stream_usage: true`: streaming Chat Completions requests that do not ask for usage get
    /// `stream_options.include_usage` added, and the extra chunk is removed from their answer.
    pub stream_usage: bool,
}

/// `routes[].mcp`: per-tool, per-resource and per-prompt access, pinning, server requests.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawMcp")]
pub struct McpRoute {
    /// `None`: every tool; `Some`: only those a grant gives the caller (default deny).
    pub tools: Option<Vec<McpGrant>>,
    /// The same for resources, by URI.
    pub resources: Option<Vec<McpGrant>>,
    pub prompts: Option<Vec<McpGrant>>,
    /// A tool whose definition changed since first seen is hidden and refused until accepted.
    pub pin_definitions: bool,
    pub server_requests: McpServerRequests,
    /// The gateway as this route's OAuth resource server (MCP authorization).
    pub oauth: Option<McpOAuth>,
}

/// `routes[].hosted_mcp`: MCP servers the provider calls on the agent's behalf (the Responses
/// API's `tools: [{type: "mcp", server_url, ...}]`): only those allowed here, and with
/// `require_approval: always` each call comes back to the agent for approval first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "raw::RawHostedMcp")]
pub struct HostedMcp {
    /// `server_url` patterns, in file order.
    pub allow: Vec<ServerPattern>,
    /// `connector_id`s allowed (OpenAI's connectors), exact.
    pub connectors: Vec<String>,
    /// Every MCP tool's `require_approval` is set to `always` on its way upstream.
    pub require_approval_always: bool,
}

/// One `hosted_mcp.allow` entry: `https://HOST[:PORT][/PATH]`, where HOST may start with `*.`
/// (any subdomain, not the domain itself) and `*` in PATH matches any run of characters (the
/// query too); a PATH without `*` matches that path exactly, with no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPattern {
    /// As written in the file (for messages).
    pub text: String,
    /// Canonical host (`crate::canonical::https_url`), without the `*.`.
    pub host: String,
    pub subdomains: bool,
    pub port: u16,
    /// Canonical path; may hold `*`.
    pub path: String,
}

/// `mcp.oauth`: the protected-resource metadata of an MCP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpOAuth {
    /// The route's resource URL; when set, tokens must name it in `aud` (RFC 8707).
    pub resource: Option<String>,
    /// Issuers clients get tokens from (of `identity.oidc`).
    pub authorization_servers: Vec<String>,
}

/// One `tools`/`resources`/`prompts` entry: a name (or URI) pattern where `*` matches any run
/// of characters, and who may use what it matches (`None`: everyone the route admits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpGrant {
    pub pattern: String,
    pub groups: Option<Vec<String>>,
}

/// Which requests the MCP server may send to the client (`true`: allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpServerRequests {
    pub sampling: bool,
    pub elicitation: bool,
    pub roots: bool,
}

/// One `credentials.set_headers` entry: the header ready to send, and the secret it came from
/// (whose resolved parts the response scrubber looks for).
#[derive(Debug, Clone)]
pub struct InjectedHeader {
    pub name: http::HeaderName,
    /// Marked sensitive, so `Debug` and HPACK never expose it.
    pub value: http::HeaderValue,
    pub secret: Secret,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "raw::RawUpstream")]
pub struct Upstream {
    /// The URL as written, for messages.
    pub url: String,
    pub tls: bool,
    /// Host name (or IP literal without brackets) used for SNI, certificate checks and `Host`.
    pub host: String,
    pub port: u16,
    /// Path prefix from the URL (`https://h/openai` => `/openai`), empty for `/`.
    pub base_path: String,
    pub ca_file: Option<PathBuf>,
    pub pins_sha256: Vec<[u8; 32]>,
    pub http2: bool,
    pub min_tls_version: TlsVersion,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Upstream {
    /// `host:port` as it goes in the `Host` header (IPv6 literals bracketed, default ports omitted).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A configuration error with its position in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}: {}", self.file.display(), self.message),
            _ => format!("{}: {}", self.file.display(), self.message),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Loads a file resolving secret references to placeholders (validation without the secrets).
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        secret::with_placeholders(|| Self::load(path))
    }

    /// The `store:` section of a file with its secrets (the database URL) resolved, and no other
    /// secret read: what the CLI needs to read the shared store, on a machine that has the
    /// database's password but not the providers' keys. Validate the whole file first
    /// (`load_without_secrets`); this one's errors carry no position.
    pub fn load_store(path: &Path) -> Result<StoreConfig, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read the configuration file: {e}")))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        match doc.get("store") {
            None => Ok(StoreConfig::default()),
            Some(v) => serde_yaml::from_value(v.clone()).map_err(|e| {
                let mut m = e.to_string();
                if let Some((_, rest)) = split_field_marker(&m) {
                    m = rest;
                }
                err(format!("store: {m}"))
            }),
        }
    }

    /// Parses YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        serde_yaml::from_str::<Config>(text).map_err(|e| {
            let loc = e.location();
            let mut message = e.to_string();
            // serde_yaml appends " at line L column C"; we print the position up front instead.
            if let Some(i) = message.rfind(" at line ") {
                message.truncate(i);
            }
            let mut line = loc.as_ref().map(|l| l.line());
            let mut column = loc.as_ref().map(|l| l.column());
            if let Some((field, rest)) = split_field_marker(&message) {
                // serde_yaml positions a conversion error at the enclosing mapping; point at the field.
                if let Some((l, c)) = find_field(text, line.unwrap_or(1), &field) {
                    line = Some(l);
                    column = Some(c);
                }
                message = rest;
            }
            ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                message,
            }
        })
    }
}

/// Marks a validation message with the YAML key it is about, so the position can be refined.
const FIELD_MARK: char = '\u{1}';

pub(crate) fn at_field(field: &str, message: String) -> String {
    format!("{FIELD_MARK}{field}{FIELD_MARK}{message}")
}

/// `"prefix: \u{1}field\u{1}msg"` => `("field", "prefix: msg")`.
fn split_field_marker(message: &str) -> Option<(String, String)> {
    let start = message.find(FIELD_MARK)?;
    let after = &message[start + 1..];
    let end = after.find(FIELD_MARK)?;
    let field = after[..end].to_string();
    Some((field, format!("{}{}", &message[..start], &after[end + 1..])))
}

/// Position (1-based line, column) of `path` at or after line `from`. A path is `.`-separated
/// keys, each searched after the previous; `key=value` matches a key with that scalar value
/// (used to find the mapping of a named route).
fn find_field(text: &str, from: usize, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = (from.saturating_sub(1), 0);
    for component in path.split('.') {
        let (key, value) = match component.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (component, None),
        };
        at = lines.iter().enumerate().skip(at.0).find_map(|(i, l)| {
            l.match_indices(key).find_map(|(col, _)| {
                let (before, after) = (&l[..col], &l[col + key.len()..]);
                let before = before.strip_suffix(['"', '\'']).unwrap_or(before);
                let after = after.strip_prefix(['"', '\'']).unwrap_or(after);
                let boundary = before
                    .chars()
                    .last()
                    .is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-');
                let rest = after
                    .strip_prefix(':')?
                    .trim_start()
                    .trim_start_matches(['"', '\'']);
                let value_ok = value.is_none_or(|v| {
                    rest.starts_with(v)
                        && !rest[v.len()..]
                            .starts_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_')
                });
                (boundary && value_ok).then_some((i, col))
            })
        })?;
    }
    Some((at.0 + 1, at.1 + 1))
}

#[cfg(test)]
mod tests;

/// What a route's exchanges leave in the record store (`recording:` of a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordingMode {
    /// Headers, bodies and SSE events (masked).
    #[default]
    Full,
    /// Everything but bodies and events.
    Metadata,
    Off,
}

impl RecordingMode {
    pub fn parse(s: &str) -> Option<RecordingMode> {
        Some(match s {
            "full" => RecordingMode::Full,
            "metadata" => RecordingMode::Metadata,
            "off" => RecordingMode::Off,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingMode::Full => "full",
            RecordingMode::Metadata => "metadata",
            RecordingMode::Off => "off",
        }
    }
}
