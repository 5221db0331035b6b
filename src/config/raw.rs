//! The file format: what the YAML may say, with defaults. Each `Raw*` converts into its
//! validated model type in `super`; a conversion error becomes a positioned YAML error.

use super::at_field;
use super::secret;
use super::units::{ByteSize, HumanDuration};
use super::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: Option<ServerSettings>,
    listeners: Vec<Listener>,
    #[serde(default)]
    admin: Option<Admin>,
    #[serde(default)]
    identity: IdentityConfig,
    #[serde(default)]
    masking: MaskingConfig,
    #[serde(default)]
    guardrails: Vec<Guardrail>,
    #[serde(default)]
    approvals: Vec<crate::policy::ApprovalRule>,
    #[serde(default)]
    recording: Option<RecordingConfig>,
    routes: Vec<Route>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let server = match raw.server {
            Some(s) => s,
            None => RawServer::default().try_into()?,
        };
        let admin = match raw.admin {
            Some(a) => a,
            None => RawAdmin::default().try_into()?,
        };
        if raw.listeners.is_empty() {
            return Err("`listeners` is empty: add at least one listener for agents".into());
        }
        if raw.routes.is_empty() {
            return Err("`routes` is empty: every request would answer 404; add a route".into());
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for l in &raw.listeners {
            if !names.insert(l.name.as_str()) {
                return Err(at_field(
                    "listeners",
                    format!("listener name `{}` is used twice", l.name),
                ));
            }
            if !addresses.insert(l.address) {
                let msg = format!("address {} is used by two listeners", l.address);
                return Err(at_field("listeners", msg));
            }
            if l.address == admin.address {
                let msg = format!(
                    "admin address {} is also used by listener `{}`",
                    l.address, l.name
                );
                return Err(at_field("admin.address", msg));
            }
        }
        let mut route_names = HashSet::new();
        for r in &raw.routes {
            if !route_names.insert(r.name.as_str()) {
                return Err(at_field(
                    "routes",
                    format!("route name `{}` is used twice", r.name),
                ));
            }
        }
        if raw.identity.is_empty() {
            return Err(at_field("routes", "no identity source is configured, so no request could be let in: \
                add `identity.service_accounts` (see `agentgate token create`), `identity.oidc` or `identity.client_certs`".into()));
        }
        let mtls = raw
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
        if !raw.identity.client_certs.is_empty() && !mtls {
            return Err(at_field("client_certs", "identity.client_certs needs a listener with `tls.client_ca` to verify client certificates".into()));
        }
        if mtls && raw.identity.client_certs.is_empty() {
            return Err(at_field("client_ca", "a listener sets `tls.client_ca` but identity.client_certs maps no certificate to an identity; add a rule or remove client_ca".into()));
        }
        let mut rule_names = HashSet::new();
        for g in &raw.guardrails {
            if !rule_names.insert(g.name.as_str()) {
                return Err(at_field(
                    "guardrails",
                    format!("guardrail `{}` is defined twice", g.name),
                ));
            }
        }
        let known: HashSet<String> = crate::mask::detectors::BUILTINS
            .iter()
            .map(|b| b.name.to_string())
            .chain(raw.masking.custom_detectors.iter().map(|c| c.name.clone()))
            .collect();
        for g in &raw.guardrails {
            for d in &g.detectors {
                if !known.contains(d) {
                    return Err(at_field("guardrails", format!(
                        "guardrail `{}`: unknown detector `{d}`; built-in ones are {}, or define it under masking.custom_detectors",
                        g.name,
                        crate::mask::detectors::BUILTINS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        for (name, p) in &raw.masking.policies {
            for d in p
                .request
                .detectors
                .keys()
                .chain(p.response.detectors.keys())
            {
                if !known.contains(d) {
                    return Err(at_field(
                        "policies",
                        format!("masking policy `{name}`: unknown detector `{d}`"),
                    ));
                }
            }
        }
        let mut approval_names = HashSet::new();
        for a in &raw.approvals {
            if !approval_names.insert(a.name.as_str()) {
                return Err(at_field(
                    "approvals",
                    format!("approval rule `{}` is defined twice", a.name),
                ));
            }
            for r in &a.when.routes {
                if !route_names.contains(r.as_str()) {
                    return Err(at_field(
                        "approvals",
                        format!(
                            "approval rule `{}`: `when.route` names `{r}`, which is not a route",
                            a.name
                        ),
                    ));
                }
            }
        }
        for r in &raw.routes {
            for a in &r.approvals {
                if !approval_names.contains(a.as_str()) {
                    return Err(at_field(
                        &format!("name={}.approvals", r.name),
                        format!(
                            "route `{}`: approval rule `{a}` is not defined under approvals",
                            r.name
                        ),
                    ));
                }
            }
            if let Some(m) = &r.masking {
                if !raw.masking.policies.contains_key(m) {
                    return Err(at_field(&format!("name={}.masking", r.name), format!(
                        "route `{}`: masking policy `{m}` is not defined under masking.policies", r.name
                    )));
                }
            }
            for g in &r.guardrails {
                if !rule_names.contains(g.as_str()) {
                    return Err(at_field(
                        &format!("name={}.guardrails", r.name),
                        format!(
                            "route `{}`: guardrail `{g}` is not defined under guardrails",
                            r.name
                        ),
                    ));
                }
            }
        }
        Ok(Config {
            server,
            listeners: raw.listeners,
            admin,
            identity: raw.identity,
            masking: raw.masking,
            guardrails: raw.guardrails,
            approvals: raw.approvals,
            recording: match raw.recording {
                Some(r) => r,
                None => RawRecording::default().try_into()?,
            },
            routes: raw.routes,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_grace")]
    grace_period: HumanDuration,
    #[serde(default = "default_max_body")]
    max_body: ByteSize,
    #[serde(default = "default_pool")]
    upstream_keepalive_pool: usize,
    #[serde(default = "default_client_timeout")]
    client_timeout: HumanDuration,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./var")
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_body() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_pool() -> usize {
    128
}
fn default_client_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            state_dir: default_state_dir(),
            threads: default_threads(),
            grace_period: default_grace(),
            max_body: default_max_body(),
            upstream_keepalive_pool: default_pool(),
            client_timeout: default_client_timeout(),
        }
    }
}

impl TryFrom<RawServer> for ServerSettings {
    type Error = String;
    fn try_from(r: RawServer) -> Result<Self, String> {
        if r.threads == 0 || r.threads > 1024 {
            return Err(at_field(
                "server.threads",
                format!(
                    "server.threads must be between 1 and 1024, got {}",
                    r.threads
                ),
            ));
        }
        if r.max_body.0 == 0 {
            return Err(at_field(
                "server.max_body",
                "server.max_body must be greater than 0".into(),
            ));
        }
        let client_timeout = r.client_timeout.0;
        if client_timeout < Duration::from_secs(1) || client_timeout > Duration::from_secs(3600) {
            return Err(at_field(
                "server.client_timeout",
                format!(
                    "server.client_timeout must be between 1s and 1h, got {}s",
                    client_timeout.as_secs_f64()
                ),
            ));
        }
        Ok(ServerSettings {
            client_timeout,
            state_dir: r.state_dir,
            threads: r.threads,
            grace_period: r.grace_period.0,
            max_body: r.max_body.0,
            upstream_keepalive_pool: r.upstream_keepalive_pool,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    name: String,
    address: String,
    #[serde(default)]
    tls: Option<ListenerTls>,
}

fn parse_socket_addr(what: &str, field: &str, s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        at_field(
            field,
            format!("{what} `{s}` is not an IP address with a port; write e.g. 127.0.0.1:8443 or [::1]:8443"),
        )
    })
}

fn check_plaintext_listener(
    what: &str,
    field: &str,
    addr: SocketAddr,
    tls: &Option<ListenerTls>,
) -> Result<(), String> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(at_field(field, format!(
            "{what} on {addr} has no `tls`: plaintext is allowed only on loopback addresses \
             (127.0.0.0/8, ::1); add `tls: {{}}` to use a generated certificate, or `tls: {{ cert: FILE, key: FILE }}`"
        )));
    }
    Ok(())
}

impl TryFrom<RawListener> for Listener {
    type Error = String;
    fn try_from(r: RawListener) -> Result<Self, String> {
        if r.name.is_empty() {
            return Err("listener `name` is empty".into());
        }
        let address = parse_socket_addr("listener address", "address", &r.address)?;
        check_plaintext_listener(
            &format!("listener `{}`", r.name),
            "address",
            address,
            &r.tls,
        )?;
        Ok(Listener {
            name: r.name,
            address,
            tls: r.tls,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    min_tls_version: Option<TlsVersion>,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_auth: Option<String>,
}

impl TryFrom<RawListenerTls> for ListenerTls {
    type Error = String;
    fn try_from(r: RawListenerTls) -> Result<Self, String> {
        let cert_key =
            match (r.cert, r.key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(at_field(
                    "tls",
                    "tls needs both `cert` and `key`, or neither (to use a generated certificate)"
                        .into(),
                )),
            };
        if cert_key.is_some() && !r.names.is_empty() {
            return Err(
                "tls `names` only applies to a generated certificate; remove it or remove cert/key"
                    .into(),
            );
        }
        let client_cert_required = match (r.client_auth.as_deref(), &r.client_ca) {
            (None | Some("optional"), _) => false,
            (Some("required"), Some(_)) => true,
            (Some("required"), None) => {
                return Err(at_field("client_auth", "`client_auth: required` needs `client_ca`, the CA that verifies client certificates".into()))
            }
            (Some(other), _) => {
                return Err(at_field("client_auth", format!("unknown client_auth `{other}`; write `optional` (verify a certificate when one is sent) or `required`")))
            }
        };
        if let Some(ca) = &r.client_ca {
            crate::tls::read_pem_certs(ca)
                .map_err(|e| at_field("client_ca", format!("client_ca `{}`: {e}", ca.display())))?;
        }
        Ok(ListenerTls {
            cert_key,
            names: r.names,
            min_version: r.min_tls_version.unwrap_or(TlsVersion::Tls12),
            client_ca: r.client_ca,
            client_cert_required,
        })
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            F(f64),
            S(String),
        }
        let s = match V::deserialize(d)? {
            V::F(f) => format!("{f:.1}"),
            V::S(s) => s,
        };
        match s.trim_start_matches("TLSv").trim_start_matches("TLS") {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            "1.0" | "1" | "1.1" => Err(serde::de::Error::custom(at_field(
                "min_tls_version",
                format!("TLS version {s} is refused: the minimum is 1.2"),
            ))),
            _ => Err(serde::de::Error::custom(at_field(
                "min_tls_version",
                format!("unknown TLS version `{s}`; write \"1.2\" or \"1.3\""),
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin")]
    address: String,
    #[serde(default)]
    tls: Option<ListenerTls>,
    #[serde(default)]
    auditors: Vec<String>,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    console: Option<RawConsole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    issuer: String,
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    redirect_url: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    session_ttl: Option<HumanDuration>,
}

fn default_admin() -> String {
    "127.0.0.1:9090".into()
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin(),
            tls: None,
            auditors: Vec::new(),
            public_url: None,
            console: None,
        }
    }
}

impl TryFrom<RawAdmin> for Admin {
    type Error = String;
    fn try_from(r: RawAdmin) -> Result<Self, String> {
        let address = parse_socket_addr("admin address", "admin.address", &r.address)?;
        check_plaintext_listener("the admin listener", "admin.address", address, &r.tls)?;
        if r.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            return Err(at_field("client_ca", "admin.tls.client_ca is not supported: client certificates identify agents on agent listeners".into()));
        }
        let public_url = match r.public_url {
            Some(u) => {
                if !(u.starts_with("https://") || u.starts_with("http://"))
                    || u.parse::<http::Uri>().is_err()
                {
                    return Err(at_field(
                        "public_url",
                        format!("admin.public_url `{u}` is not an http(s) URL"),
                    ));
                }
                u.trim_end_matches('/').to_string()
            }
            None => format!(
                "{}://{address}",
                if r.tls.is_some() { "https" } else { "http" }
            ),
        };
        let console = match r.console {
            None => None,
            Some(c) => {
                let issuer = c.issuer.trim_end_matches('/').to_string();
                if !issuer.starts_with("https://") {
                    return Err(at_field(
                        "issuer",
                        format!("admin.console.issuer `{issuer}` must be https://"),
                    ));
                }
                let redirect_url = c
                    .redirect_url
                    .unwrap_or_else(|| format!("{public_url}/console/callback"));
                if !redirect_url.ends_with("/console/callback") {
                    return Err(at_field("redirect_url", format!(
                        "admin.console.redirect_url `{redirect_url}` must end with /console/callback (register it with the provider)"
                    )));
                }
                let client_secret = match c.client_secret {
                    Some(t) => {
                        Some(secret::resolve(&t, secret::current_source()).map_err(|e| {
                            at_field("client_secret", format!("admin.console.client_secret: {e}"))
                        })?)
                    }
                    None => None,
                };
                let mut scopes = c.scopes.unwrap_or_else(|| {
                    vec![
                        "openid".into(),
                        "profile".into(),
                        "email".into(),
                        "groups".into(),
                    ]
                });
                if !scopes.iter().any(|s| s == "openid") {
                    scopes.insert(0, "openid".into());
                }
                let session_ttl = c
                    .session_ttl
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(8 * 3600));
                if session_ttl.is_zero() || session_ttl > Duration::from_secs(7 * 24 * 3600) {
                    return Err(at_field(
                        "session_ttl",
                        "admin.console.session_ttl must be between 1s and 7d".into(),
                    ));
                }
                Some(ConsoleConfig {
                    issuer,
                    client_id: c.client_id,
                    client_secret,
                    redirect_url,
                    scopes,
                    groups_claim: c.groups_claim.unwrap_or_else(|| "groups".into()),
                    ca_file: c.ca_file,
                    session_ttl,
                    secure_cookies: r.tls.is_some(),
                })
            }
        };
        Ok(Admin {
            address,
            tls: r.tls,
            auditors: r.auditors,
            public_url,
            console,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    upstream: Upstream,
    #[serde(default)]
    access: Option<RawAccess>,
    #[serde(default)]
    masking: Option<String>,
    #[serde(default)]
    guardrails: Vec<String>,
    #[serde(default)]
    approvals: Vec<String>,
    #[serde(default)]
    recording: Option<String>,
    #[serde(default)]
    credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    any_authenticated: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default = "default_prefix")]
    path_prefix: String,
    #[serde(default)]
    host: Option<String>,
}

fn default_prefix() -> String {
    "/".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
}

/// Headers that hop-by-hop semantics or framing own; a route may not set them.
const UNSETTABLE: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

impl TryFrom<RawRoute> for Route {
    type Error = String;
    fn try_from(r: RawRoute) -> Result<Self, String> {
        // Errors here are positioned at `routes:`; anchor them on this route's name.
        let field = |key: &str| format!("name={}.{key}", r.name);
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(at_field("name", format!(
                "route name `{}` must be non-empty and use only letters, digits, `-` and `_` (it is a metric label)",
                r.name
            )));
        }
        if !r.matcher.path_prefix.starts_with('/') {
            return Err(at_field(
                &field("path_prefix"),
                format!(
                    "route `{}`: match.path_prefix `{}` must start with `/`",
                    r.name, r.matcher.path_prefix
                ),
            ));
        }
        let access = match r.access {
            None => return Err(at_field("name", format!(
                "route `{}` has no `access` rule; add `access: {{ groups: [GROUP, ...] }}` or `access: {{ any_authenticated: true }}`",
                r.name
            ))),
            Some(RawAccess { groups: Some(g), any_authenticated: None | Some(false) }) if !g.is_empty() => Access::Groups(g),
            Some(RawAccess { groups: None, any_authenticated: Some(true) }) => Access::AnyAuthenticated,
            Some(_) => return Err(at_field(&field("access"), format!(
                "route `{}`: access needs exactly one of a non-empty `groups` list or `any_authenticated: true`",
                r.name
            ))),
        };
        let recording = match r.recording.as_deref() {
            None => crate::config::RecordingMode::Full,
            Some(m) => crate::config::RecordingMode::parse(m).ok_or_else(|| {
                at_field(
                    &field("recording"),
                    format!(
                        "route `{}`: recording `{m}` must be full, metadata or off",
                        r.name
                    ),
                )
            })?,
        };
        let mut set_headers = Vec::new();
        for (name, template) in r.credentials.map(|c| c.set_headers).unwrap_or_default() {
            let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                at_field(
                    &field(&name),
                    format!("route `{}`: `{name}` is not a valid header name", r.name),
                )
            })?;
            if UNSETTABLE.contains(&header.as_str()) {
                return Err(at_field(&field(&name), format!(
                    "route `{}`: credentials.set_headers cannot set `{name}`; the gateway manages it",
                    r.name
                )));
            }
            let value = secret::resolve(&template, secret::current_source()).map_err(|e| {
                at_field(
                    &field(&name),
                    format!("route `{}`, header `{name}`: {e}", r.name),
                )
            })?;
            let mut header_value = http::HeaderValue::from_str(value.expose()).map_err(|_| {
                at_field(&field(&name), format!("route `{}`, header `{name}`: the value has characters not allowed in a header", r.name))
            })?;
            header_value.set_sensitive(true);
            set_headers.push(InjectedHeader {
                name: header,
                value: header_value,
                secret: value,
            });
        }
        Ok(Route {
            name: r.name,
            path_prefix: r.matcher.path_prefix,
            host: r.matcher.host.map(|h| h.to_ascii_lowercase()),
            upstream: r.upstream,
            access,
            masking: r.masking,
            guardrails: r.guardrails,
            approvals: r.approvals,
            recording,
            set_headers,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    url: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pins_sha256: Vec<String>,
    #[serde(default)]
    allow_plaintext_loopback: bool,
    /// Present only so that `verify: false` gets a clear refusal instead of "unknown field".
    #[serde(default)]
    verify: Option<bool>,
    #[serde(default = "yes")]
    http2: bool,
    #[serde(default)]
    min_tls_version: Option<TlsVersion>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: HumanDuration,
    #[serde(default = "default_read_timeout")]
    read_timeout: HumanDuration,
    #[serde(default = "default_read_timeout")]
    write_timeout: HumanDuration,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: HumanDuration,
}

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_read_timeout() -> HumanDuration {
    // Model calls can think for minutes before the first byte.
    HumanDuration(Duration::from_secs(600))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn is_loopback_host(host: &str) -> bool {
    host.parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

impl TryFrom<RawUpstream> for Upstream {
    type Error = String;
    fn try_from(r: RawUpstream) -> Result<Self, String> {
        let url = r.url.clone();
        if r.verify == Some(false) {
            return Err(at_field("verify", format!(
                "upstream {url}: certificate verification cannot be disabled; add the upstream's CA with `ca_file` instead"
            )));
        }
        let url_err = |m: String| at_field("url", m);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| url_err(format!("upstream url `{url}` is not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(url_err(format!(
                    "upstream url `{url}` must start with https://"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| url_err(format!("upstream url `{url}` has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !tls {
            if !r.allow_plaintext_loopback {
                return Err(url_err(format!(
                    "upstream url `{url}` is plaintext http://; use https://, or for a loopback upstream set `allow_plaintext_loopback: true`"
                )));
            }
            if !is_loopback_host(&host) {
                return Err(url_err(format!(
                    "upstream url `{url}`: plaintext http:// is allowed only to 127.0.0.0/8 or ::1, not `{host}`"
                )));
            }
            if !r.pins_sha256.is_empty() || r.ca_file.is_some() {
                return Err(url_err(format!(
                    "upstream url `{url}` is plaintext: `pins_sha256` and `ca_file` need https://"
                )));
            }
        }
        if uri.query().is_some() {
            return Err(url_err(format!(
                "upstream url `{url}` must not have a query string"
            )));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        let mut pins = Vec::new();
        for p in &r.pins_sha256 {
            let bytes = boring::base64::decode_block(p.trim()).map_err(|_| {
                at_field(
                    "pins_sha256",
                    format!("pins_sha256 entry `{p}` is not base64"),
                )
            })?;
            let pin: [u8; 32] = bytes.try_into().map_err(|_| {
                at_field(
                    "pins_sha256",
                    format!(
                        "pins_sha256 entry `{p}` is not a SHA-256 (32 bytes, 44 base64 characters)"
                    ),
                )
            })?;
            pins.push(pin);
        }
        if let Some(ca) = &r.ca_file {
            if !ca.is_file() {
                return Err(at_field(
                    "ca_file",
                    format!(
                        "upstream ca_file `{}` does not exist or is not a file",
                        ca.display()
                    ),
                ));
            }
        }
        Ok(Upstream {
            url,
            tls,
            host,
            port,
            base_path,
            ca_file: r.ca_file,
            pins_sha256: pins,
            http2: r.http2,
            min_tls_version: r.min_tls_version.unwrap_or(TlsVersion::Tls12),
            connect_timeout: r.connect_timeout.0,
            read_timeout: r.read_timeout.0,
            write_timeout: r.write_timeout.0,
            idle_timeout: r.idle_timeout.0,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    oidc: Vec<OidcIssuer>,
    #[serde(default)]
    service_accounts: Vec<ServiceAccount>,
    #[serde(default)]
    client_certs: Vec<ClientCertRule>,
}

impl TryFrom<RawIdentity> for IdentityConfig {
    type Error = String;
    fn try_from(r: RawIdentity) -> Result<Self, String> {
        let mut issuers = HashSet::new();
        for i in &r.oidc {
            if !issuers.insert(i.issuer.as_str()) {
                return Err(at_field(
                    "issuer",
                    format!("issuer `{}` is configured twice", i.issuer),
                ));
            }
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for a in &r.service_accounts {
            if !names.insert(a.name.as_str()) {
                return Err(at_field(
                    "service_accounts",
                    format!("service account `{}` is defined twice", a.name),
                ));
            }
            if a.token_sha256 != [0; 32] && !hashes.insert(a.token_sha256) {
                return Err(at_field("service_accounts", format!("service account `{}` has the same token_sha256 as another; create a token per account", a.name)));
            }
        }
        Ok(IdentityConfig {
            oidc: r.oidc,
            service_accounts: r.service_accounts,
            client_certs: r.client_certs,
        })
    }
}

/// Asymmetric JWS algorithms a token may use. HMAC (`HS*`) would let anyone holding the
/// published key forge tokens, and `none` is no signature: both are refused.
pub const JWS_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidcIssuer {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    #[serde(default = "default_leeway")]
    leeway: HumanDuration,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_interval: HumanDuration,
    #[serde(default = "default_jwks_min_refetch")]
    jwks_min_refetch_interval: HumanDuration,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout: HumanDuration,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_jwks_min_refetch() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_fetch_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn https_url(field: &str, what: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| at_field(field, format!("{what} `{url}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(at_field(field, format!(
            "{what} `{url}` must be an https:// URL: keys fetched over plaintext could be replaced in transit"
        )));
    }
    Ok(())
}

impl TryFrom<RawOidcIssuer> for OidcIssuer {
    type Error = String;
    fn try_from(r: RawOidcIssuer) -> Result<Self, String> {
        https_url("issuer", "issuer", &r.issuer)?;
        if let Some(j) = &r.jwks_uri {
            https_url("jwks_uri", "jwks_uri", j)?;
        }
        if r.audiences.is_empty() || r.audiences.iter().any(|a| a.is_empty()) {
            return Err(at_field("audiences", format!(
                "issuer `{}`: `audiences` must list the audience(s) tokens for agentgate carry in `aud`; \
                 without it a token minted for any other application of this IdP would be accepted",
                r.issuer
            )));
        }
        let algorithms = match r.algorithms {
            None => JWS_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
            Some(list) => {
                for a in &list {
                    if !JWS_ALGORITHMS.contains(&a.as_str()) {
                        return Err(at_field(
                            "algorithms",
                            format!(
                            "issuer `{}`: algorithm `{a}` is not accepted; use asymmetric ones: {}",
                            r.issuer,
                            JWS_ALGORITHMS.join(", ")
                        ),
                        ));
                    }
                }
                if list.is_empty() {
                    return Err(at_field("algorithms", "`algorithms` is empty".into()));
                }
                list
            }
        };
        if r.groups_claim.is_empty() || r.subject_claim.is_empty() {
            return Err(at_field(
                "groups_claim",
                "claim names must not be empty".into(),
            ));
        }
        if let Some(ca) = &r.ca_file {
            crate::tls::read_pem_certs(ca).map_err(|e| {
                at_field(
                    "ca_file",
                    format!("issuer `{}`: ca_file `{}`: {e}", r.issuer, ca.display()),
                )
            })?;
        }
        if r.leeway.0 > Duration::from_secs(300) {
            return Err(at_field(
                "leeway",
                "leeway above 5m would accept long-expired tokens".into(),
            ));
        }
        Ok(OidcIssuer {
            issuer: r.issuer,
            audiences: r.audiences,
            groups_claim: r.groups_claim,
            subject_claim: r.subject_claim,
            leeway: r.leeway.0,
            algorithms,
            ca_file: r.ca_file,
            jwks_uri: r.jwks_uri,
            refresh_interval: r.jwks_refresh_interval.0.max(Duration::from_secs(1)),
            min_refetch_interval: r.jwks_min_refetch_interval.0,
            fetch_timeout: r.fetch_timeout.0.max(Duration::from_millis(100)),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceAccount {
    name: String,
    token_sha256: String,
    #[serde(default)]
    groups: Vec<String>,
}

impl TryFrom<RawServiceAccount> for ServiceAccount {
    type Error = String;
    fn try_from(r: RawServiceAccount) -> Result<Self, String> {
        if r.name.is_empty() {
            return Err(at_field("name", "service account `name` is empty".into()));
        }
        let value = secret::resolve(&r.token_sha256, secret::current_source())
            .map_err(|e| at_field("token_sha256", format!("service account `{}`: {e}", r.name)))?;
        let token_sha256 = if secret::placeholders_active() && r.token_sha256.contains("${") {
            [0; 32]
        } else {
            parse_sha256_hex(value.expose().trim()).ok_or_else(|| at_field("token_sha256", format!(
                "service account `{}`: token_sha256 must be 64 hex digits (the SHA-256 that `agentgate token create` prints), not the token itself",
                r.name
            )))?
        };
        Ok(ServiceAccount {
            name: r.name,
            token_sha256,
            groups: r.groups,
        })
    }
}

fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertRule {
    #[serde(default)]
    subject_cn: Option<String>,
    #[serde(default)]
    san_dns: Option<String>,
    #[serde(default)]
    san_uri: Option<String>,
    #[serde(default)]
    san_email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

impl TryFrom<RawClientCertRule> for ClientCertRule {
    type Error = String;
    fn try_from(r: RawClientCertRule) -> Result<Self, String> {
        let mut matchers: Vec<CertMatcher> = [
            r.subject_cn.map(CertMatcher::SubjectCn),
            r.san_dns.map(CertMatcher::SanDns),
            r.san_uri.map(CertMatcher::SanUri),
            r.san_email.map(CertMatcher::SanEmail),
        ]
        .into_iter()
        .flatten()
        .collect();
        if matchers.len() != 1 {
            return Err(at_field("client_certs", "each client_certs rule needs exactly one of subject_cn, san_dns, san_uri, san_email".into()));
        }
        Ok(ClientCertRule {
            matcher: matchers.remove(0),
            groups: r.groups,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMasking {
    #[serde(default)]
    hash_key: Option<String>,
    #[serde(default)]
    policies: BTreeMap<String, MaskPolicy>,
    #[serde(default)]
    custom_detectors: Vec<RawCustomDetector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomDetector {
    name: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    words: Vec<String>,
}

fn detector_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl TryFrom<RawMasking> for MaskingConfig {
    type Error = String;
    fn try_from(r: RawMasking) -> Result<Self, String> {
        let hash_key = match &r.hash_key {
            Some(t) => Some(
                secret::resolve(t, secret::current_source())
                    .map_err(|e| at_field("hash_key", format!("masking.hash_key: {e}")))?,
            ),
            None => None,
        };
        let builtin: HashSet<&str> = crate::mask::detectors::BUILTINS
            .iter()
            .map(|b| b.name)
            .collect();
        let mut names = HashSet::new();
        let mut custom = Vec::new();
        for c in r.custom_detectors {
            if !detector_name_ok(&c.name) {
                return Err(at_field("custom_detectors", format!(
                    "custom detector name `{}` must be lowercase letters, digits and _ (it is a metric label)", c.name
                )));
            }
            if builtin.contains(c.name.as_str()) || !names.insert(c.name.clone()) {
                return Err(at_field(
                    "custom_detectors",
                    format!("detector name `{}` is already used", c.name),
                ));
            }
            if c.regex.is_none() == c.words.is_empty() {
                return Err(at_field(
                    "custom_detectors",
                    format!(
                        "custom detector `{}` needs exactly one of `regex` or `words`",
                        c.name
                    ),
                ));
            }
            custom.push(crate::mask::CustomDetector {
                name: c.name,
                regex: c.regex,
                words: c.words,
            });
        }
        // Compile now so a bad or unbounded regex is a config error with its position.
        crate::mask::Engine::new(&custom, [0; 32]).map_err(|e| at_field("custom_detectors", e))?;
        Ok(MaskingConfig {
            hash_key,
            policies: r.policies,
            custom_detectors: custom,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaskPolicy {
    #[serde(default)]
    request: Option<RawRules>,
    #[serde(default)]
    response: Option<RawRules>,
    #[serde(default)]
    on_invalid_json: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    secrets: Option<String>,
    #[serde(default)]
    pii: Option<String>,
    #[serde(default)]
    custom: Option<String>,
    #[serde(default)]
    detectors: BTreeMap<String, String>,
    #[serde(default)]
    restore_pseudonyms: Option<bool>,
}

fn action(
    field: &str,
    s: &Option<String>,
    default: crate::mask::Action,
) -> Result<crate::mask::Action, String> {
    match s {
        None => Ok(default),
        Some(a) => crate::mask::Action::parse(a).ok_or_else(|| {
            at_field(
                field,
                format!("unknown action `{a}`; write redact, hash, pseudonymize, block or allow"),
            )
        }),
    }
}

impl RawRules {
    fn rules(&self, response: bool) -> Result<crate::mask::Rules, String> {
        use crate::mask::Action::*;
        let mut detectors = BTreeMap::new();
        for (d, a) in &self.detectors {
            let a = action("detectors", &Some(a.clone()), Redact)?;
            if response && a == Pseudonymize {
                return Err(at_field(
                    "detectors",
                    "pseudonymize applies to requests; in responses use redact or hash".into(),
                ));
            }
            detectors.insert(d.clone(), a);
        }
        let rules = crate::mask::Rules {
            secrets: action("secrets", &self.secrets, Redact)?,
            pii: action(
                "pii",
                &self.pii,
                if response { Redact } else { Pseudonymize },
            )?,
            custom: action("custom", &self.custom, Redact)?,
            detectors,
        };
        if response && [rules.secrets, rules.pii, rules.custom].contains(&Pseudonymize) {
            return Err(at_field("response", "pseudonymize applies to requests; in responses use redact or hash (placeholders the request made are restored with restore_pseudonyms)".into()));
        }
        Ok(rules)
    }
}

impl TryFrom<RawMaskPolicy> for MaskPolicy {
    type Error = String;
    fn try_from(r: RawMaskPolicy) -> Result<Self, String> {
        let req = r.request.unwrap_or_default();
        let resp = r.response.unwrap_or_default();
        if req.restore_pseudonyms.is_some() {
            return Err(at_field(
                "restore_pseudonyms",
                "restore_pseudonyms belongs under `response`".into(),
            ));
        }
        let refuse_invalid_json = match r.on_invalid_json.as_deref() {
            None | Some("mask_as_text") => false,
            Some("refuse") => true,
            Some(o) => {
                return Err(at_field(
                    "on_invalid_json",
                    format!("unknown on_invalid_json `{o}`; write mask_as_text or refuse"),
                ))
            }
        };
        Ok(MaskPolicy {
            request: req.rules(false)?,
            response: resp.rules(true)?,
            restore_pseudonyms: resp.restore_pseudonyms.unwrap_or(true),
            refuse_invalid_json,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrail {
    name: String,
    direction: String,
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    deny_words: Vec<String>,
    #[serde(default = "block")]
    action: String,
    #[serde(default)]
    message: Option<String>,
}

fn block() -> String {
    "block".into()
}

impl TryFrom<RawGuardrail> for Guardrail {
    type Error = String;
    fn try_from(r: RawGuardrail) -> Result<Self, String> {
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(at_field(
                "name",
                format!(
                    "guardrail name `{}` must use letters, digits, - and _",
                    r.name
                ),
            ));
        }
        let direction = match r.direction.as_str() {
            "request" => Direction::Request,
            "response" => Direction::Response,
            o => {
                return Err(at_field(
                    "direction",
                    format!(
                        "guardrail `{}`: direction `{o}` must be request or response",
                        r.name
                    ),
                ))
            }
        };
        if r.action != "block" {
            return Err(at_field(
                "action",
                format!("guardrail `{}`: the only action is block", r.name),
            ));
        }
        if r.detectors.is_empty() && r.deny_words.is_empty() {
            return Err(at_field(
                "name",
                format!("guardrail `{}` needs `detectors` or `deny_words`", r.name),
            ));
        }
        if r.deny_words.iter().any(|w| w.trim().is_empty()) {
            return Err(at_field(
                "deny_words",
                format!("guardrail `{}`: empty deny word", r.name),
            ));
        }
        Ok(Guardrail {
            name: r.name,
            direction,
            detectors: r.detectors,
            deny_words: r.deny_words,
            message: r.message,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecording {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default = "default_segment")]
    segment_size: ByteSize,
    #[serde(default = "default_max_age")]
    max_age: HumanDuration,
    #[serde(default = "default_max_size")]
    max_size: ByteSize,
    #[serde(default = "default_queue")]
    queue: usize,
    #[serde(default)]
    on_failure: Option<String>,
    #[serde(default)]
    stdout: bool,
    #[serde(default = "default_record_body")]
    max_body: ByteSize,
}

fn default_segment() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_max_size() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_queue() -> usize {
    10_000
}
fn default_record_body() -> ByteSize {
    ByteSize(1 << 20)
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            dir: None,
            segment_size: default_segment(),
            max_age: default_max_age(),
            max_size: default_max_size(),
            queue: default_queue(),
            on_failure: None,
            stdout: false,
            max_body: default_record_body(),
        }
    }
}

impl TryFrom<RawRecording> for RecordingConfig {
    type Error = String;
    fn try_from(r: RawRecording) -> Result<Self, String> {
        let reject_on_failure = match r.on_failure.as_deref() {
            None | Some("reject") => true,
            Some("continue") => false,
            Some(o) => {
                return Err(at_field(
                    "on_failure",
                    format!("recording.on_failure `{o}` must be reject or continue"),
                ))
            }
        };
        if r.queue == 0 || r.segment_size.0 == 0 {
            return Err(at_field(
                "queue",
                "recording.queue and segment_size must be greater than 0".into(),
            ));
        }
        Ok(RecordingConfig {
            dir: r.dir,
            segment_size: r.segment_size.0,
            max_age: r.max_age.0,
            max_size: r.max_size.0,
            queue: r.queue,
            reject_on_failure,
            stdout: r.stdout,
            max_body: r.max_body.0,
        })
    }
}
