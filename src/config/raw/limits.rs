//! `usage:` (prices, the time zone of calendar windows, the output estimate of a request that
//! names no cap) and `limits:` (requests, tokens, cost and concurrency per identity, group or
//! route).

use crate::config::at_field;
use crate::config::units::parse_duration;
use crate::config::{Limit, LimitSubject, Quota, UsageConfig, Window};
use crate::usage::{prices::to_micros, Price, PriceTable};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default = "default_tz")]
    time_zone: String,
    #[serde(default = "default_max_output")]
    default_max_output_tokens: u64,
}

fn default_currency() -> String {
    "USD".into()
}
fn default_tz() -> String {
    "UTC".into()
}
fn default_max_output() -> u64 {
    4096
}

impl Default for RawUsage {
    fn default() -> Self {
        RawUsage {
            prices: BTreeMap::new(),
            currency: default_currency(),
            time_zone: default_tz(),
            default_max_output_tokens: default_max_output(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
}

impl TryFrom<RawUsage> for UsageConfig {
    type Error = String;
    fn try_from(r: RawUsage) -> Result<Self, String> {
        let mut prices = Vec::new();
        for (model, p) in r.prices {
            let err = |e: String| at_field("prices", format!("usage.prices `{model}`: {e}"));
            let input = to_micros(p.input).map_err(err)?;
            let price = Price {
                input,
                output: to_micros(p.output).map_err(err)?,
                cached_input: p
                    .cached_input
                    .map(to_micros)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or(input),
                cache_write: p
                    .cache_write
                    .map(to_micros)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or(input),
            };
            prices.push((model, price));
        }
        let time_zone = jiff::tz::TimeZone::get(&r.time_zone).map_err(|e| {
            at_field(
                "time_zone",
                format!(
                    "usage.time_zone `{}` is not a time zone of the system's database (e.g. UTC, Europe/Paris): {e}",
                    r.time_zone
                ),
            )
        })?;
        if r.currency.is_empty() || !r.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(at_field(
                "currency",
                format!(
                    "usage.currency `{}` must be a currency code such as USD",
                    r.currency
                ),
            ));
        }
        Ok(UsageConfig {
            prices: Arc::new(PriceTable::with(prices)),
            currency: r.currency,
            time_zone,
            time_zone_name: r.time_zone,
            default_max_output_tokens: r.default_max_output_tokens,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    name: String,
    per: String,
    #[serde(default, rename = "match")]
    matcher: Option<RawLimitMatch>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    requests: Option<RawQuota>,
    #[serde(default)]
    tokens: Option<RawQuota>,
    #[serde(default)]
    cost: Option<RawCost>,
    #[serde(default)]
    concurrent: Option<u64>,
    #[serde(default)]
    cut_streams: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimitMatch {
    #[serde(default)]
    routes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    per: String,
    max: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCost {
    per: String,
    max: f64,
    #[serde(default)]
    currency: Option<String>,
}

/// `1m`, `30s`, `1h`, `day` or `month`.
fn window(name: &str, s: &str) -> Result<Window, String> {
    match s.trim() {
        "day" | "1d" => Ok(Window::Day),
        "month" => Ok(Window::Month),
        other => {
            let d = parse_duration(other).map_err(|e| {
                at_field(
                    "per",
                    format!("limit `{name}`: `per: {other}`: {e}, or day or month"),
                )
            })?;
            if d.as_millis() < 1000 || d.as_secs() > 86_400 || d.subsec_millis() != 0 {
                return Err(at_field(
                    "per",
                    format!("limit `{name}`: `per: {other}` must be whole seconds from 1s to 24h; use day or month for calendar windows"),
                ));
            }
            Ok(Window::Every(d))
        }
    }
}

impl TryFrom<RawLimit> for Limit {
    type Error = String;
    fn try_from(r: RawLimit) -> Result<Self, String> {
        let name = r.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(at_field(
                "name",
                format!("limit name `{name}` must be non-empty and use only letters, digits, `-` and `_` (it is a metric label)"),
            ));
        }
        let per = match r.per.as_str() {
            "identity" => LimitSubject::Identity,
            "group" => LimitSubject::Group,
            "route" => LimitSubject::Route,
            other => {
                return Err(at_field(
                    "per",
                    format!("limit `{name}`: `per: {other}` must be identity, group or route"),
                ))
            }
        };
        let quota = |q: Option<RawQuota>| -> Result<Option<Quota>, String> {
            q.map(|q| {
                Ok(Quota {
                    window: window(&name, &q.per)?,
                    max: q.max,
                })
            })
            .transpose()
        };
        let requests = quota(r.requests)?;
        let tokens = quota(r.tokens)?;
        let cost = match r.cost {
            Some(c) => Some((
                Quota {
                    window: window(&name, &c.per)?,
                    max: to_micros(c.max)
                        .map_err(|e| at_field("max", format!("limit `{name}`: cost.max: {e}")))?,
                },
                c.currency,
            )),
            None => None,
        };
        if requests.is_none() && tokens.is_none() && cost.is_none() && r.concurrent.is_none() {
            return Err(at_field(
                "name",
                format!(
                    "limit `{name}` limits nothing: give it requests, tokens, cost or concurrent"
                ),
            ));
        }
        if r.cut_streams && tokens.is_none() && cost.is_none() {
            return Err(at_field(
                "cut_streams",
                format!("limit `{name}`: cut_streams needs tokens or cost to cut a stream at"),
            ));
        }
        if r.concurrent == Some(0) {
            return Err(at_field(
                "concurrent",
                format!("limit `{name}`: concurrent must be at least 1"),
            ));
        }
        Ok(Limit {
            name,
            per,
            routes: r.matcher.map(|m| m.routes).unwrap_or_default(),
            groups: r.groups,
            requests,
            tokens,
            cost_currency: cost.as_ref().and_then(|c| c.1.clone()),
            cost: cost.map(|c| c.0),
            concurrent: r.concurrent,
            cut_streams: r.cut_streams,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitsStore {
    #[serde(default)]
    pub redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    url: String,
    #[serde(default)]
    ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_redis_timeout")]
    timeout: crate::config::units::HumanDuration,
    #[serde(default = "default_on_unavailable")]
    on_unavailable: String,
    #[serde(default = "default_prefix")]
    key_prefix: String,
}

fn default_redis_timeout() -> crate::config::units::HumanDuration {
    crate::config::units::HumanDuration(std::time::Duration::from_secs(1))
}
fn default_on_unavailable() -> String {
    "refuse".into()
}
fn default_prefix() -> String {
    "limits".into()
}

impl TryFrom<RawRedis> for crate::config::RedisSettings {
    type Error = String;
    fn try_from(r: RawRedis) -> Result<Self, String> {
        let url = crate::config::secret::resolve(&r.url, crate::config::secret::current_source())
            .map_err(|e| at_field("redis.url", format!("limits_store.redis.url: {e}")))?;
        let text = url.expose();
        // Invariant 1 of DESIGN.md: no plaintext leg, except to loopback.
        let plain_ok = ["redis://127.0.0.1", "redis://localhost", "redis://[::1]"]
            .iter()
            .any(|p| text.starts_with(p));
        if !text.starts_with("rediss://")
            && !plain_ok
            && !text.starts_with("${")
            && !text.is_empty()
        {
            return Err(at_field(
                "redis.url",
                "limits_store.redis.url must be rediss:// (TLS); plaintext redis:// is accepted only to a loopback address".into(),
            ));
        }
        if let Some(ca) = &r.ca_file {
            if !ca.is_file() {
                return Err(at_field(
                    "redis.ca_file",
                    format!(
                        "limits_store.redis.ca_file `{}` does not exist or is not a file",
                        ca.display()
                    ),
                ));
            }
        }
        let fail_open = match r.on_unavailable.as_str() {
            "refuse" => false,
            "allow" => true,
            other => {
                return Err(at_field(
                    "on_unavailable",
                    format!("limits_store.redis.on_unavailable `{other}` must be refuse or allow"),
                ))
            }
        };
        if r.timeout.0.is_zero() {
            return Err(at_field(
                "timeout",
                "limits_store.redis.timeout must be more than 0".into(),
            ));
        }
        Ok(crate::config::RedisSettings {
            url,
            ca_file: r.ca_file,
            timeout: r.timeout.0,
            fail_open,
            key_prefix: r.key_prefix,
        })
    }
}

/// `tracing:` (kept beside usage: the spans carry usage).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    otlp: RawOtlp,
    #[serde(default = "default_service")]
    service_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    #[serde(default)]
    ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_flush")]
    flush_interval: crate::config::units::HumanDuration,
    #[serde(default)]
    protocol: Option<String>,
}

fn default_service() -> String {
    "agentgate".into()
}
fn default_flush() -> crate::config::units::HumanDuration {
    crate::config::units::HumanDuration(std::time::Duration::from_secs(5))
}

impl TryFrom<RawTracing> for crate::config::TracingConfig {
    type Error = String;
    fn try_from(r: RawTracing) -> Result<Self, String> {
        let e = r.otlp.endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = e.parse().map_err(|err| {
            at_field(
                "otlp.endpoint",
                format!("tracing.otlp.endpoint `{e}`: {err}"),
            )
        })?;
        let loopback = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => {
                return Err(at_field(
                    "otlp.endpoint",
                    format!("tracing.otlp.endpoint `{e}` must be https:// (http:// only to a loopback address)"),
                ))
            }
        }
        if let Some(ca) = &r.otlp.ca_file {
            if !ca.is_file() {
                return Err(at_field(
                    "otlp.ca_file",
                    format!(
                        "tracing.otlp.ca_file `{}` does not exist or is not a file",
                        ca.display()
                    ),
                ));
            }
        }
        let grpc = match r.otlp.protocol.as_deref() {
            None | Some("http" | "http/protobuf") => false,
            Some("grpc") => true,
            Some(other) => {
                return Err(at_field(
                    "otlp.protocol",
                    format!("tracing.otlp.protocol `{other}` must be http (HTTP/protobuf) or grpc"),
                ))
            }
        };
        Ok(crate::config::TracingConfig {
            grpc,
            endpoint: e,
            ca_file: r.otlp.ca_file,
            flush_interval: r.otlp.flush_interval.0,
            service_name: r.service_name,
        })
    }
}
