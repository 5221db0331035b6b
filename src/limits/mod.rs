//! Limits and the usage ledger: before a request goes upstream, every quota that applies to it
//! (per identity, group or route: requests, tokens and cost per window, requests in flight) is
//! checked and the request's share reserved; once it ends, the reservation is replaced by what
//! the answer says it used. The same ledger keeps daily usage totals for `agentgate usage` and
//! `GET /v1/usage`.
//!
//! Invariants:
//! - admission is atomic over all the quotas of a request: two requests racing for the last of
//!   a budget cannot both pass (one lock, held for the check and the reservation together);
//! - fail closed on what cannot be known: a request is reserved its prompt's estimate plus its
//!   output cap (`max_tokens`, or `usage.default_max_output_tokens` when it names none), and an
//!   answer that never reports usage is charged that reservation;
//! - state outlives the process: counters and totals are written to `state_dir/usage.json`
//!   (atomically, within a second of a change, and when the gateway drains), and read back at
//!   start-up, so a restart does not reset a monthly budget.
//!
//! `window.rs` is the calendar; the rest is here.

pub mod redis_store;
pub mod report;
pub mod window;

use crate::config::{Config, Limit, LimitSubject};
use crate::usage::request::Asked;
use crate::usage::{Micros, PriceTable, Usage};
use jiff::tz::TimeZone;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    Cost,
    Concurrent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
            Kind::Cost => "cost",
            Kind::Concurrent => "concurrent",
        }
    }
}

/// A counter of one quota in one window, for one subject.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Counter {
    used: u64,
    /// The window's end (Unix ms): the counter is dropped after it.
    until: i64,
}

/// One day's usage of one identity on one route and model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub day: String,
    pub identity: String,
    pub groups: Vec<String>,
    pub route: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    /// Exchanges whose answer reported no usage (charged their reservation, where limited).
    #[serde(default)]
    pub unreported: u64,
    pub cost_micros: u64,
}

impl Totals {
    /// Adds `o`'s counts (requests, tokens, unreported, cost) to these.
    pub fn add_counts(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.unreported += o.unreported;
        self.cost_micros += o.cost_micros;
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    counters: HashMap<String, Counter>,
    /// Day, identity, route, model (joined by U+001F) to that day's totals.
    totals: BTreeMap<String, Totals>,
    #[serde(skip)]
    inflight: HashMap<String, u64>,
}

/// The process's counters and totals (one for its life: reloads keep it).
pub struct Ledger {
    state: Mutex<State>,
    path: Option<PathBuf>,
    dirty: AtomicBool,
}

static LEDGER: OnceLock<Arc<Ledger>> = OnceLock::new();

/// Daily totals older than this are dropped.
const KEEP_DAYS_MS: i64 = 400 * 86_400_000;

impl Ledger {
    /// A ledger kept in memory only (unit tests, `check`).
    pub fn in_memory() -> Arc<Ledger> {
        Arc::new(Ledger {
            state: Mutex::new(State::default()),
            path: None,
            dirty: AtomicBool::new(false),
        })
    }

    /// Reads `path` (or starts empty) and makes it the process's ledger, written back by a
    /// thread within a second of every change.
    pub fn open(path: PathBuf) -> Result<Arc<Ledger>, String> {
        let state = Self::read(&path)?;
        let ledger = Arc::new(Ledger {
            state: Mutex::new(state),
            path: Some(path),
            dirty: AtomicBool::new(false),
        });
        let l = LEDGER.get_or_init(|| ledger).clone();
        let writer = l.clone();
        std::thread::Builder::new()
            .name("agentgate usage ledger".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(250));
                writer.flush();
            })
            .map_err(|e| format!("cannot start the usage ledger's writer: {e}"))?;
        Ok(l)
    }

    /// Reads a ledger file as `agentgate usage` does (no writer).
    pub fn read_file(path: &std::path::Path) -> Result<Arc<Ledger>, String> {
        Ok(Arc::new(Ledger {
            state: Mutex::new(Self::read(path)?),
            path: None,
            dirty: AtomicBool::new(false),
        }))
    }

    fn read(path: &std::path::Path) -> Result<State, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: not a usage ledger ({e}); move it away to start counting afresh",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The process's ledger, or a fresh in-memory one before start-up opened it.
    pub fn current() -> Arc<Ledger> {
        LEDGER.get().cloned().unwrap_or_else(Ledger::in_memory)
    }

    /// The process's ledger written now, if it has one (drain).
    pub fn flush_current() {
        if let Some(l) = LEDGER.get() {
            l.flush();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Writes the file if anything changed since the last write (temporary file, then rename).
    pub fn flush(&self) {
        let Some(path) = &self.path else { return };
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let bytes = {
            let mut s = self.lock();
            let now = now_ms();
            s.counters.retain(|_, c| c.until > now);
            let oldest = window::day(now - KEEP_DAYS_MS, &TimeZone::UTC);
            s.totals.retain(|_, t| t.day >= oldest);
            serde_json::to_vec(&*s)
        };
        let tmp = path.with_extension("json.tmp");
        let r = bytes
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            self.dirty.store(true, Ordering::SeqCst);
            crate::metrics::LEDGER_WRITE_FAILURES.inc();
            log::warn!("cannot write the usage ledger {}: {e}", path.display());
        }
    }

    /// Adds one exchange to its day's totals.
    pub fn record(&self, t: Totals) {
        let key = [&t.day, &t.identity, &t.route, &t.model]
            .map(|s| s.as_str())
            .join("\u{1f}");
        let mut s = self.lock();
        match s.totals.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let e = e.get_mut();
                e.add_counts(&t);
                e.groups = t.groups;
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(t);
            }
        }
        drop(s);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// The daily totals from `since_day` on (`YYYY-MM-DD`, inclusive).
    pub fn totals_since(&self, since_day: &str) -> Vec<Totals> {
        self.lock()
            .totals
            .values()
            .filter(|t| t.day.as_str() >= since_day)
            .cloned()
            .collect()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Who is asking, as limits see it.
pub struct Caller<'a> {
    /// `subject@issuer`.
    pub identity: &'a str,
    pub groups: &'a [String],
    pub route: &'a str,
}

/// The limits of one configuration over the process's ledger.
pub struct Limiter {
    store: Store,
    limits: Vec<Limit>,
    tz: TimeZone,
    prices: Arc<PriceTable>,
    default_output: u64,
    ledger: Arc<Ledger>,
}

/// One quota's share reserved for a request.
#[derive(Debug)]
struct Hold {
    key: String,
    kind: Kind,
    reserved: u64,
}

/// The state of one quota after this request's reservation, for the response headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    kind: Kind,
    max: u64,
    used: u64,
    reset_ms: i64,
}

/// Where a ticket's reservations are kept.
enum Backend {
    Embedded(Arc<Ledger>),
    Redis(Arc<redis_store::RedisStore>),
}

/// An admitted request's reservations, settled when it ends.
pub struct Ticket {
    backend: Backend,
    holds: Vec<Hold>,
    inflight: Vec<String>,
    /// `x-ratelimit-*` headers for the answer.
    pub headers: Vec<(String, String)>,
    /// Where a `cut_streams` limit ends this request's stream.
    pub cut: Option<Cutoff>,
}

/// What a request may use before a `cut_streams` limit ends its stream: the room each such
/// quota had when the request was admitted (its own reservation included), the tightest of each
/// kind, with the limit's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cutoff {
    pub tokens: Option<(u64, String)>,
    pub cost: Option<(Micros, String)>,
}

impl Cutoff {
    /// From the planned counters and what each had used before this request (none: no limit
    /// that applies cuts streams).
    pub(crate) fn of(counters: &[Planned<'_>], used_before: &[u64]) -> Option<Cutoff> {
        let mut c = Cutoff::default();
        for (p, used) in counters.iter().zip(used_before) {
            if !p.cut {
                continue;
            }
            let room = p.max.saturating_sub(*used);
            let slot = match p.kind {
                Kind::Tokens => &mut c.tokens,
                Kind::Cost => &mut c.cost,
                _ => continue,
            };
            if slot.as_ref().is_none_or(|(r, _)| room < *r) {
                *slot = Some((room, p.name.to_string()));
            }
        }
        (c.tokens.is_some() || c.cost.is_some()).then_some(c)
    }
}

/// A request refused by a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub limit: String,
    pub kind: Kind,
    pub retry_after_ms: i64,
    /// Waiting cannot help within a minute (a spent budget, or a request larger than the quota
    /// itself): the SDK is told not to retry.
    pub no_retry: bool,
    pub message: String,
    pub headers: Vec<(String, String)>,
}

/// Where counters live.
enum Store {
    Embedded,
    Redis(Arc<redis_store::RedisStore>),
}

impl Limiter {
    /// The configuration's limits over the process's ledger, or over Redis (`limits_store`).
    pub fn new(config: &Config, ledger: Arc<Ledger>) -> Result<Limiter, String> {
        for l in &config.limits {
            // Every limit's refusals are exported from the first scrape, at 0.
            for kind in [Kind::Requests, Kind::Tokens, Kind::Cost, Kind::Concurrent] {
                crate::metrics::LIMIT_REFUSALS.with_label_values(&[&l.name, kind.as_str()]);
            }
            if l.cut_streams {
                for (kind, on) in [
                    (Kind::Tokens, l.tokens.is_some()),
                    (Kind::Cost, l.cost.is_some()),
                ] {
                    if on {
                        crate::metrics::LIMIT_CUTS.with_label_values(&[&l.name, kind.as_str()]);
                    }
                }
            }
        }
        let store = match &config.limits_store {
            Some(settings) => Store::Redis(Arc::new(redis_store::RedisStore::new(settings)?)),
            None => Store::Embedded,
        };
        Ok(Limiter {
            store,
            limits: config.limits.clone(),
            tz: config.usage.time_zone.clone(),
            prices: config.usage.prices.clone(),
            default_output: config.usage.default_max_output_tokens,
            ledger,
        })
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn applicable<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a Limit> + 'a {
        self.limits
            .iter()
            .filter(move |l| l.routes.is_empty() || l.routes.iter().any(|r| r == route))
    }

    /// Whether any limit applies to `route`.
    pub fn applies(&self, route: &str) -> bool {
        self.applicable(route).next().is_some()
    }

    /// Whether a limit on `route` counts tokens or cost: its requests are read before they go
    /// upstream, for their estimate.
    pub fn needs_estimate(&self, route: &str) -> bool {
        self.applicable(route)
            .any(|l| l.tokens.is_some() || l.cost.is_some())
    }

    /// The subjects `limit` counts this caller under (none: it does not apply to them).
    fn subjects(limit: &Limit, c: &Caller<'_>) -> Vec<String> {
        let member = |g: &String| c.groups.contains(g);
        match limit.per {
            LimitSubject::Group if limit.groups.is_empty() => c.groups.to_vec(),
            LimitSubject::Group => limit.groups.iter().filter(|g| member(g)).cloned().collect(),
            _ if !limit.groups.is_empty() && !limit.groups.iter().any(member) => Vec::new(),
            LimitSubject::Identity => vec![c.identity.to_string()],
            LimitSubject::Route => vec![c.route.to_string()],
        }
    }

    /// The tokens and cost a request is reserved before it is sent.
    pub fn estimate(&self, asked: Option<&Asked>) -> (u64, Micros) {
        let Some(a) = asked else { return (0, 0) };
        let input = a.input_estimate();
        let output = a
            .max_output
            .unwrap_or(self.default_output.saturating_mul(a.choices.max(1)));
        (
            input.saturating_add(output),
            self.prices.ceiling(a.model.as_deref(), input, output),
        )
    }

    /// What `caller` would reserve: each quota's counter key (in its current window) and need,
    /// and the concurrency keys.
    fn plan<'a>(&'a self, caller: &Caller<'_>, asked: Option<&Asked>, now: i64) -> Plan<'a> {
        let (tokens, cost) = self.estimate(asked);
        let mut plan = Plan::default();
        let route = caller.route;
        let limits = self
            .limits
            .iter()
            .filter(|l| l.routes.is_empty() || l.routes.iter().any(|r| r == route));
        for l in limits {
            for subject in Self::subjects(l, caller) {
                let base = format!("{}\u{1f}{}\u{1f}{}", l.name, l.per.as_str(), subject);
                for (kind, q, need) in [
                    (Kind::Requests, l.requests, 1),
                    (Kind::Tokens, l.tokens, tokens),
                    (Kind::Cost, l.cost, cost),
                ] {
                    let Some(q) = q else { continue };
                    let (start, end) = window::bounds(q.window, now, &self.tz);
                    plan.counters.push(Planned {
                        key: format!("{base}\u{1f}{}\u{1f}{start}", kind.as_str()),
                        kind,
                        need,
                        max: q.max,
                        end,
                        name: &l.name,
                        cut: l.cut_streams && kind != Kind::Requests,
                    });
                }
                if let Some(max) = l.concurrent {
                    plan.inflight
                        .push((format!("{base}\u{1f}concurrent"), max, &l.name));
                }
            }
        }
        plan
    }

    /// Checks every quota that applies and reserves this request's share in all of them, or
    /// refuses it (reserving nothing).
    pub async fn admit(
        &self,
        caller: &Caller<'_>,
        asked: Option<&Asked>,
        now: i64,
    ) -> Result<Ticket, Denied> {
        let plan = self.plan(caller, asked, now);
        match &self.store {
            Store::Embedded => self.admit_here(plan, now).map_err(Denied::Limit),
            Store::Redis(r) => r.admit(plan, now).await,
        }
    }

    /// Admission in the process's own ledger (one lock for the check and the reservation).
    fn admit_here(&self, plan: Plan<'_>, now: i64) -> Result<Ticket, Refusal> {
        let mut s = self.ledger.lock();
        let mut standings = Vec::new();
        let mut before = Vec::with_capacity(plan.counters.len());
        for p in &plan.counters {
            let used = s.counters.get(&p.key).map_or(0, |c| c.used);
            if let Some(r) = p.refusal(used, now) {
                return Err(r);
            }
            standings.push(p.standing(used + p.need, now));
            before.push(used);
        }
        let cut = Cutoff::of(&plan.counters, &before);
        for (key, max, name) in &plan.inflight {
            let n = s.inflight.get(key).copied().unwrap_or(0);
            if n >= *max {
                return Err(inflight_refusal(name, *max, n, &standings));
            }
        }
        for (key, _, _) in &plan.inflight {
            *s.inflight.entry(key.clone()).or_insert(0) += 1;
        }
        let holds = plan
            .counters
            .into_iter()
            .map(|p| {
                let c = s.counters.entry(p.key.clone()).or_insert(Counter {
                    used: 0,
                    until: p.end,
                });
                c.used = c.used.saturating_add(p.need);
                Hold {
                    key: p.key,
                    kind: p.kind,
                    reserved: p.need,
                }
            })
            .collect();
        drop(s);
        self.ledger.dirty.store(true, Ordering::SeqCst);
        Ok(Ticket {
            backend: Backend::Embedded(self.ledger.clone()),
            holds,
            inflight: plan.inflight.into_iter().map(|(k, _, _)| k).collect(),
            headers: headers(&standings),
            cut,
        })
    }
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Denied {
    Limit(Refusal),
    /// The shared store did not answer and the configuration fails closed.
    StoreUnavailable(String),
}

/// What one request would reserve.
#[derive(Default)]
pub(crate) struct Plan<'a> {
    pub(crate) counters: Vec<Planned<'a>>,
    /// Concurrency key, its maximum, the limit's name.
    pub(crate) inflight: Vec<(String, u64, &'a str)>,
}

pub(crate) struct Planned<'a> {
    pub(crate) key: String,
    pub(crate) kind: Kind,
    pub(crate) need: u64,
    pub(crate) max: u64,
    /// The window's end (Unix ms).
    pub(crate) end: i64,
    pub(crate) name: &'a str,
    /// The limit cuts streams (`cut_streams`) at this quota.
    pub(crate) cut: bool,
}

impl Planned<'_> {
    fn standing(&self, used: u64, now: i64) -> Standing {
        Standing {
            kind: self.kind,
            max: self.max,
            used,
            reset_ms: self.end - now,
        }
    }

    /// The refusal when `used` leaves no room for this request's need.
    pub(crate) fn refusal(&self, used: u64, now: i64) -> Option<Refusal> {
        if used < self.max && used.saturating_add(self.need) <= self.max {
            return None;
        }
        let (name, need, max, kind) = (self.name, self.need, self.max, self.kind);
        let st = self.standing(used, now);
        let too_large = need > max;
        let what = match kind {
            Kind::Cost => format!(
                "the cost budget of limit `{name}` is {} and {} of it is spent",
                crate::usage::micros_str(max),
                crate::usage::micros_str(used)
            ),
            _ => format!(
                "limit `{name}` allows {max} {} per window and {used} are used",
                kind.as_str()
            ),
        };
        let message = if too_large {
            format!("{what}; this request may use up to {need} on its own (lower max_tokens)")
        } else {
            format!("{what}; it resets in {}", window::reset_str(st.reset_ms))
        };
        Some(Refusal {
            limit: name.to_string(),
            kind,
            retry_after_ms: st.reset_ms,
            no_retry: too_large || st.reset_ms > 60_000,
            message: format!("rate limit reached: {message}"),
            headers: headers(&[st]),
        })
    }
}

pub(crate) fn inflight_refusal(name: &str, max: u64, n: u64, standings: &[Standing]) -> Refusal {
    Refusal {
        limit: name.to_string(),
        kind: Kind::Concurrent,
        retry_after_ms: 1000,
        no_retry: false,
        message: format!(
            "rate limit reached: limit `{name}` allows {max} requests at once and {n} are in flight"
        ),
        headers: headers(standings),
    }
}

/// What a request is finally charged against the quotas it reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The answer reported its usage: tokens and cost replace the reservation.
    Used { tokens: u64, cost: Micros },
    /// Nothing was sent upstream, or the upstream refused it: the tokens and cost reserved are
    /// given back (the request still counts).
    Nothing,
    /// An answer that said nothing of its usage: the reservation stands.
    Reserved,
    /// An answer that said nothing of its usage but whose generated text was counted: the
    /// reservation, or this estimate where it is larger.
    AtLeast { tokens: u64, cost: Micros },
}

impl Ticket {
    /// Whether a quota of tokens or cost holds part of this request (its answer's usage counts).
    pub fn charges_usage(&self) -> bool {
        self.holds
            .iter()
            .any(|h| matches!(h.kind, Kind::Tokens | Kind::Cost))
    }

    /// Replaces the reservations by `charge` and ends the request's place in flight.
    pub fn settle(mut self, charge: Charge) {
        let deltas: Vec<(String, i64)> = std::mem::take(&mut self.holds)
            .into_iter()
            .filter_map(|h| {
                let actual = match (charge, h.kind) {
                    (Charge::Reserved, _) | (_, Kind::Requests | Kind::Concurrent) => return None,
                    (Charge::Nothing, _) => 0,
                    (Charge::Used { tokens, .. }, Kind::Tokens) => tokens,
                    (Charge::Used { cost, .. }, Kind::Cost) => cost,
                    (Charge::AtLeast { tokens, .. }, Kind::Tokens) => tokens.max(h.reserved),
                    (Charge::AtLeast { cost, .. }, Kind::Cost) => cost.max(h.reserved),
                };
                let d = i64::try_from(actual).unwrap_or(i64::MAX)
                    - i64::try_from(h.reserved).unwrap_or(i64::MAX);
                (d != 0).then_some((h.key, d))
            })
            .collect();
        if deltas.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Embedded(ledger) => {
                let mut s = ledger.lock();
                for (key, d) in deltas {
                    if let Some(c) = s.counters.get_mut(&key) {
                        c.used = c.used.saturating_add_signed(d);
                    }
                }
                drop(s);
                ledger.dirty.store(true, Ordering::SeqCst);
            }
            Backend::Redis(r) => r.adjust(deltas),
        }
    }
}

impl Drop for Ticket {
    /// Leaves the requests in flight (settled or not; an unsettled reservation stands).
    fn drop(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Embedded(ledger) => {
                let mut s = ledger.lock();
                for k in &self.inflight {
                    if let Some(n) = s.inflight.get_mut(k) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            s.inflight.remove(k);
                        }
                    }
                }
            }
            Backend::Redis(r) => r.adjust(
                std::mem::take(&mut self.inflight)
                    .into_iter()
                    .map(|k| (k, -1))
                    .collect(),
            ),
        }
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (and `-cost`, in the
/// currency's units), each from the quota of that kind with the least left.
fn headers(standings: &[Standing]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for kind in [Kind::Requests, Kind::Tokens, Kind::Cost] {
        let tightest = standings
            .iter()
            .filter(|s| s.kind == kind)
            .min_by_key(|s| s.max.saturating_sub(s.used));
        let Some(s) = tightest else { continue };
        let n = |v: u64| match kind {
            Kind::Cost => crate::usage::micros_str(v),
            _ => v.to_string(),
        };
        let k = kind.as_str();
        out.push((format!("x-ratelimit-limit-{k}"), n(s.max)));
        out.push((
            format!("x-ratelimit-remaining-{k}"),
            n(s.max.saturating_sub(s.used)),
        ));
        out.push((
            format!("x-ratelimit-reset-{k}"),
            window::reset_str(s.reset_ms),
        ));
    }
    out
}

/// The totals line of one exchange for the ledger.
pub fn day_totals(
    tz: &TimeZone,
    now: i64,
    caller: &Caller<'_>,
    model: &str,
    usage: Option<&Usage>,
    cost: Micros,
) -> Totals {
    let u = usage.cloned().unwrap_or_default();
    Totals {
        day: window::day(now, tz),
        identity: caller.identity.to_string(),
        groups: caller.groups.to_vec(),
        route: caller.route.to_string(),
        model: model.to_string(),
        requests: 1,
        input_tokens: u.input,
        output_tokens: u.output,
        cached_input_tokens: u.cached_input,
        reasoning_tokens: u.reasoning,
        unreported: u64::from(usage.is_none()),
        cost_micros: cost,
    }
}

#[cfg(test)]
mod tests;
