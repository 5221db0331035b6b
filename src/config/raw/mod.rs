//! The file format: what the YAML may say, with defaults. Each `Raw*` converts into its
//! validated model type in `config`; a conversion error becomes a positioned YAML error.
//!
//! One file per section of the document: `server`, `listeners` (and `admin`), `identity`,
//! `routes` (with their upstreams and credentials; `mcp` for MCP routes), `masking` (and
//! `guardrails`), `recording`.
//! `approvals:` rules are the policy engine's own type (`crate::policy::ApprovalRule`). This file
//! holds the document itself, with the checks that span sections (names used twice, references
//! to rules and policies that are not defined), and the TLS version every section writes alike.
//! Every struct refuses unknown keys (`deny_unknown_fields`).

mod identity;
mod limits;
mod listeners;
mod masking;
mod mcp;
mod recording;
mod routes;
mod server;
mod store;

pub use identity::{
    normalize_typ, RawClientCertRule, RawIdentity, RawOidcIssuer, RawServiceAccount, JWS_ALGORITHMS,
};
pub use limits::{RawLimit, RawUsage};
pub use listeners::{RawAdmin, RawListener, RawListenerTls};
pub use masking::{RawGuardrail, RawMaskPolicy, RawMasking};
pub use mcp::{RawHostedMcp, RawMcp};
pub use recording::RawRecording;
pub use routes::{RawRoute, RawUpstream};
pub use server::RawServer;
pub use store::RawStore;

use crate::config::at_field;
use crate::config::{
    Admin, Config, Guardrail, IdentityConfig, Listener, MaskingConfig, RecordingConfig, Route,
    ServerSettings, TlsVersion, UsageConfig,
};
use serde::Deserialize;
use std::collections::HashSet;

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
    #[serde(default)]
    store: crate::config::StoreConfig,
    #[serde(default)]
    usage: Option<UsageConfig>,
    #[serde(default)]
    limits: Vec<crate::config::Limit>,
    #[serde(default)]
    limits_store: Option<limits::RawLimitsStore>,
    #[serde(default)]
    tracing: Option<limits::RawTracing>,
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
        let usage = match raw.usage {
            Some(u) => u,
            None => RawUsage::default().try_into()?,
        };
        let mut limit_names = HashSet::new();
        for l in &raw.limits {
            if !limit_names.insert(l.name.as_str()) {
                return Err(at_field(
                    "limits",
                    format!("limit `{}` is defined twice", l.name),
                ));
            }
            for r in &l.routes {
                if !route_names.contains(r.as_str()) {
                    return Err(at_field(
                        &format!("name={}.routes", l.name),
                        format!(
                            "limit `{}`: match.routes names `{r}`, which is not a route",
                            l.name
                        ),
                    ));
                }
            }
            if let Some(c) = l.cost_currency.as_ref().filter(|c| **c != usage.currency) {
                return Err(at_field(
                    &format!("name={}.currency", l.name),
                    format!(
                        "limit `{}`: cost is in {c} but prices are in {} (usage.currency); the gateway does not convert currencies",
                        l.name, usage.currency
                    ),
                ));
            }
        }
        Ok(Config {
            usage,
            limits: raw.limits,
            tracing: raw.tracing.map(TryInto::try_into).transpose()?,
            limits_store: match raw.limits_store {
                Some(s) => s.redis.map(TryInto::try_into).transpose()?,
                None => None,
            },
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
            store: raw.store,
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
