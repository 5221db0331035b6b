//! `listeners:` and `admin:`: addresses, inbound TLS (plaintext only on loopback), client
//! certificates, and the admin listener's console.

use crate::config::at_field;
use crate::config::secret;
use crate::config::units::HumanDuration;
use crate::config::{Admin, ConsoleConfig, Listener, ListenerTls, TlsVersion};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    name: String,
    address: String,
    #[serde(default)]
    tls: Option<ListenerTls>,
}

fn parse_socket_addr(what: &str, field: &str, s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        at_field(
            field,
            format!("{what} `{s}` is not an IP address with a port; write e.g. 127.0.0.1:8443 or [::1]:8443"),
        )
    })?;
    if addr.port() == 0 {
        // Port 0 would bind a port nobody is told about (agents, probes, Services).
        return Err(at_field(
            field,
            format!("{what} `{s}` has port 0; give the port agents connect to"),
        ));
    }
    Ok(addr)
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
