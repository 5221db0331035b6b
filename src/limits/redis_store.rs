//! Limits shared by several replicas: the counters in Redis (`limits_store.redis`), checked and
//! reserved by one Lua script per request (atomic on the server: replicas racing for the last of
//! a budget cannot both pass), adjusted by another when the request ends. TLS (`rediss://`) with
//! the configured CA; rustls, not a second BoringSSL or an OpenSSL, in the process.
//!
//! When Redis does not answer within `timeout`, the configuration decides: refuse (503, the
//! default: no spend the budgets cannot see) or let the request through uncounted; either is
//! counted in `agentgate_limits_store_errors_total`.
//!
//! Keys share one hash tag (`{agentgate}`), so a cluster keeps a script's keys on one slot. A
//! counter expires a minute after its window ends; a place in flight after `INFLIGHT_TTL_MS`
//! (a replica that died with requests in flight does not hold them forever).

use super::{headers, inflight_refusal, Backend, Cutoff, Denied, Hold, Plan, Ticket};
use crate::config::RedisSettings;
use crate::metrics;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Places in flight are forgotten after this long without a new request of the same key.
const INFLIGHT_TTL_MS: i64 = 15 * 60 * 1000;

/// KEYS: n counters, then the concurrency keys. ARGV[1] = n; then per counter (need, max,
/// ttl_ms), per concurrency key (max, ttl_ms). Returns {0, used after...} when admitted, or
/// {index of the key that refused, its value}.
const ADMIT: &str = r#"
local n = tonumber(ARGV[1])
local m = #KEYS - n
local used = {}
for i = 1, n do
  local u = tonumber(redis.call('GET', KEYS[i]) or '0')
  local need = tonumber(ARGV[3*i - 1])
  local max = tonumber(ARGV[3*i])
  if u >= max or u + need > max then return {i, u} end
  used[i] = u + need
end
for j = 1, m do
  local c = tonumber(redis.call('GET', KEYS[n + j]) or '0')
  if c >= tonumber(ARGV[3*n + 2*j]) then return {n + j, c} end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], ARGV[3*i - 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3*i + 1])
end
for j = 1, m do
  redis.call('INCR', KEYS[n + j])
  redis.call('PEXPIRE', KEYS[n + j], ARGV[3*n + 2*j + 1])
end
table.insert(used, 1, 0)
return used
"#;

/// KEYS: counters; ARGV: the signed change of each. A key that expired meanwhile stays gone,
/// and no counter goes below zero.
const ADJUST: &str = r#"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], ARGV[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0
"#;

/// rustls needs a process-wide crypto provider (Redis and the OTLP exporter use rustls); the
/// first caller installs ring's. (Deprecated for lacking post-quantum key exchange: the other
/// provider, aws-lc-rs, needs cmake and links a second libcrypto beside BoringSSL.)
pub fn install_crypto_provider() {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<redis::aio::ConnectionManager>,
    settings: RedisSettings,
    admit: redis::Script,
    adjust: redis::Script,
}

impl RedisStore {
    pub fn new(settings: &RedisSettings) -> Result<RedisStore, String> {
        install_crypto_provider();
        let url = settings.url.expose();
        let client = match &settings.ca_file {
            Some(ca) => {
                let root = std::fs::read(ca)
                    .map_err(|e| format!("limits_store.redis.ca_file {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
            None => redis::Client::open(url),
        }
        .map_err(|e| format!("limits_store.redis.url: {e}"))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            settings: settings.clone(),
            admit: redis::Script::new(ADMIT),
            adjust: redis::Script::new(ADJUST),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{{agentgate}}:{}:{}", self.settings.key_prefix, k)
    }

    /// The shared connection (made on first use; it reconnects by itself after a failure).
    async fn conn(&self) -> Result<redis::aio::ConnectionManager, String> {
        let t = self.settings.timeout;
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(t)
                    .set_response_timeout(t)
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    t,
                    redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg),
                )
                .await
                .map_err(|_| "timed out connecting".to_string())?
                .map_err(|e| e.to_string())
            })
            .await?;
        Ok(c.clone())
    }

    pub(super) async fn admit(
        self: &Arc<Self>,
        plan: Plan<'_>,
        now: i64,
    ) -> Result<Ticket, Denied> {
        if plan.counters.is_empty() && plan.inflight.is_empty() {
            return Ok(self.ticket(Vec::new(), Vec::new(), Vec::new()));
        }
        let mut inv = self.admit.prepare_invoke();
        inv.arg(plan.counters.len());
        for p in &plan.counters {
            inv.key(self.key(&p.key))
                .arg(p.need)
                .arg(p.max)
                .arg((p.end - now + 60_000).max(1000));
        }
        for (k, max, _) in &plan.inflight {
            inv.key(self.key(k)).arg(*max).arg(INFLIGHT_TTL_MS);
        }
        let reply: Result<Vec<i64>, String> = async {
            let mut c = self.conn().await?;
            tokio::time::timeout(self.settings.timeout, inv.invoke_async(&mut c))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return self.unavailable(e),
        };
        let n = plan.counters.len();
        match reply.first().copied() {
            Some(0) => {
                let standings: Vec<_> = plan
                    .counters
                    .iter()
                    .zip(reply.iter().skip(1))
                    .map(|(p, used)| p.standing(u64::try_from(*used).unwrap_or(0), now))
                    .collect();
                // The script answers what each counter used after this request's reservation.
                let before: Vec<u64> = plan
                    .counters
                    .iter()
                    .zip(reply.iter().skip(1))
                    .map(|(p, used)| u64::try_from(*used).unwrap_or(0).saturating_sub(p.need))
                    .collect();
                let cut = Cutoff::of(&plan.counters, &before);
                let holds = plan
                    .counters
                    .into_iter()
                    .map(|p| Hold {
                        key: self.key(&p.key),
                        kind: p.kind,
                        reserved: p.need,
                    })
                    .collect();
                let inflight = plan.inflight.iter().map(|(k, _, _)| self.key(k)).collect();
                let mut t = self.ticket(holds, inflight, headers(&standings));
                t.cut = cut;
                Ok(t)
            }
            Some(i) if i >= 1 && (i as usize) <= n => {
                let used = u64::try_from(reply.get(1).copied().unwrap_or(0)).unwrap_or(0);
                let p = &plan.counters[i as usize - 1];
                match p.refusal(used, now) {
                    Some(r) => Err(Denied::Limit(r)),
                    None => self.unavailable(format!(
                        "the admission script refused key {i} with room left"
                    )),
                }
            }
            Some(i) if i as usize > n && (i as usize) <= n + plan.inflight.len() => {
                let (_, max, name) = &plan.inflight[i as usize - n - 1];
                let cur = u64::try_from(reply.get(1).copied().unwrap_or(0)).unwrap_or(0);
                Err(Denied::Limit(inflight_refusal(name, *max, cur, &[])))
            }
            _ => self.unavailable(format!(
                "unexpected reply from the admission script: {reply:?}"
            )),
        }
    }

    fn ticket(
        self: &Arc<Self>,
        holds: Vec<Hold>,
        inflight: Vec<String>,
        headers: Vec<(String, String)>,
    ) -> Ticket {
        Ticket {
            backend: Backend::Redis(self.clone()),
            holds,
            inflight,
            headers,
            cut: None,
        }
    }

    /// Redis did not answer: refused (503) or let through uncounted, as configured.
    fn unavailable(self: &Arc<Self>, why: String) -> Result<Ticket, Denied> {
        let outcome = if self.settings.fail_open {
            "allowed"
        } else {
            "refused"
        };
        metrics::LIMITS_STORE_ERRORS
            .with_label_values(&[outcome])
            .inc();
        log::warn!("limits store (Redis) unavailable, request {outcome}: {why}");
        if self.settings.fail_open {
            Ok(self.ticket(Vec::new(), Vec::new(), Vec::new()))
        } else {
            Err(Denied::StoreUnavailable(why))
        }
    }

    /// Applies signed changes (a settled charge, a place in flight given back) off the
    /// request's path.
    pub(super) fn adjust(self: &Arc<Self>, deltas: Vec<(String, i64)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let mut inv = me.adjust.prepare_invoke();
            for (k, d) in &deltas {
                inv.key(k).arg(*d);
            }
            let r: Result<i64, String> = async {
                let mut c = me.conn().await?;
                tokio::time::timeout(me.settings.timeout, inv.invoke_async(&mut c))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = r {
                metrics::LIMITS_STORE_ERRORS
                    .with_label_values(&["settle"])
                    .inc();
                log::warn!("limits store (Redis): a charge could not be settled: {e}");
            }
        });
    }
}
