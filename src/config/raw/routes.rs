//! `routes:`: what a route matches, who may use it, the policies it names, the credentials it
//! injects, and its upstream (https with verification; plaintext only to loopback, when asked).

use crate::config::at_field;
use crate::config::secret;
use crate::config::units::HumanDuration;
use crate::config::{Access, InjectedHeader, Route, TlsVersion, Upstream};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    #[serde(default)]
    mcp: Option<crate::config::McpRoute>,
    #[serde(default)]
    hosted_mcp: Option<crate::config::HostedMcp>,
    #[serde(default)]
    stream_usage: bool,
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
            mcp: r.mcp,
            hosted_mcp: r.hosted_mcp,
            stream_usage: r.stream_usage,
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
