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
        Ok(Config {
            server,
            listeners: raw.listeners,
            admin,
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

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            state_dir: default_state_dir(),
            threads: default_threads(),
            grace_period: default_grace(),
            max_body: default_max_body(),
            upstream_keepalive_pool: default_pool(),
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
        Ok(ServerSettings {
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
        Ok(ListenerTls {
            cert_key,
            names: r.names,
            min_version: r.min_tls_version.unwrap_or(TlsVersion::Tls12),
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
}

fn default_admin() -> String {
    "127.0.0.1:9090".into()
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin(),
            tls: None,
        }
    }
}

impl TryFrom<RawAdmin> for Admin {
    type Error = String;
    fn try_from(r: RawAdmin) -> Result<Self, String> {
        let address = parse_socket_addr("admin address", "admin.address", &r.address)?;
        check_plaintext_listener("the admin listener", "admin.address", address, &r.tls)?;
        Ok(Admin {
            address,
            tls: r.tls,
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
    credentials: Option<RawCredentials>,
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
