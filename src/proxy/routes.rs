//! The route table: from the config to what a route's requests and responses go through
//! (`RouteRuntime`: upstream, credentials, masking, approval rules), the first-match lookup, and
//! the `Active` table a reload swaps. One masking `Engine` for the whole config (built-in +
//! custom detectors + guardrail deny words), and per route the rules of each direction, with
//! its guardrails turned into `block` actions.

use crate::config::{Config, Direction, Guardrail, Route};
use crate::identity::Authenticator;
use crate::mask::injected::SecretSet;
use crate::mask::{Action, CustomDetector, Engine, Rules};
use crate::metrics;
use crate::metrics::RouteMetrics;
use crate::upstream::UpstreamTarget;
use http::header::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;

/// Everything the gateway knows about one route at run time.
pub struct RouteRuntime {
    pub route: Route,
    pub target: UpstreamTarget,
    pub secrets: Option<Arc<SecretSet>>,
    pub metrics: RouteMetrics,
    pub host_header: HeaderValue,
    /// Masking and guardrails, when the route has a policy or guardrails.
    pub masking: Option<Arc<RouteMasking>>,
    /// On a route with credentials and no masking: a policy that masks nothing, under which
    /// streamed answers (SSE, NDJSON) are framed so that the credential scrubber sees each JSON
    /// string across events (a key split over two events' deltas, which SDKs join).
    pub scrub_streams: Option<Arc<RouteMasking>>,
    /// Approval rules, in the route's order.
    pub approvals: Vec<crate::policy::ApprovalRule>,
    /// The configuration's masking engine (records and approval summaries of this route's
    /// requests are masked with it, whether or not the route masks).
    pub engine: Arc<crate::mask::Engine>,
    /// An MCP route's state across requests (metric labels).
    pub mcp: Option<Arc<super::mcp::McpRuntime>>,
    /// The configuration's limits (over the process's ledger) and prices.
    pub limiter: Arc<crate::limits::Limiter>,
    pub prices: Arc<crate::usage::PriceTable>,
    pub currency: String,
}

/// What a configuration reload swaps: the routes (with their upstreams, masking, recording mode)
/// and the identity sources. A request keeps the `Active` it started with until it ends.
pub struct Active {
    pub routes: Vec<Arc<RouteRuntime>>,
    pub auth: Arc<Authenticator>,
    /// The configuration's masking engine (every route's `engine`).
    pub engine: Arc<crate::mask::Engine>,
}

impl Active {
    /// First route in file order whose host (if any) and path prefix match.
    pub fn match_route(&self, host: Option<&str>, path: &str) -> Option<&Arc<RouteRuntime>> {
        self.routes.iter().find(|r| {
            path.starts_with(&r.route.path_prefix)
                && r.route
                    .host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
        })
    }
}

/// The `Active` configuration, swapped atomically by a reload.
pub struct ActiveConfig(std::sync::RwLock<Arc<Active>>);

impl ActiveConfig {
    pub fn new(a: Active) -> Arc<ActiveConfig> {
        Arc::new(ActiveConfig(std::sync::RwLock::new(Arc::new(a))))
    }

    pub fn get(&self) -> Arc<Active> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn swap(&self, a: Active) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(a),
            Err(p) => *p.into_inner() = Arc::new(a),
        }
    }
}

/// The run-time form of every route of `config`, masking with `engine` (built from the same
/// config by `masking::engine`).
pub fn build_routes(
    config: &Config,
    engine: Arc<crate::mask::Engine>,
) -> Result<Vec<Arc<RouteRuntime>>, String> {
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut masking = build_masking(config, engine.clone())?;
    let limiter = Arc::new(crate::limits::Limiter::new(
        config,
        crate::limits::Ledger::current(),
    )?);
    for route in &config.routes {
        let target = UpstreamTarget::new(&route.name, &route.upstream)?;
        let secrets = SecretSet::new(
            route
                .set_headers
                .iter()
                .flat_map(|h| h.secret.sensitive_parts().iter().cloned()),
        )
        .map_err(|e| format!("route `{}`: {e}", route.name))?;
        let host_header = HeaderValue::from_str(&route.upstream.authority()).map_err(|_| {
            format!(
                "route `{}`: upstream host is not a valid Host header",
                route.name
            )
        })?;
        let scrub_streams = secrets
            .as_ref()
            .filter(|_| !masking.contains_key(&route.name))
            .map(|_| scrub_only(engine.clone()));
        metrics::USAGE_UNREPORTED.with_label_values(&[&route.name]);
        routes.push(Arc::new(RouteRuntime {
            metrics: RouteMetrics::new(&route.name),
            route: route.clone(),
            target,
            secrets,
            host_header,
            scrub_streams,
            masking: masking.remove(&route.name),
            engine: engine.clone(),
            mcp: route.mcp.as_ref().map(|_| Arc::default()),
            limiter: limiter.clone(),
            prices: config.usage.prices.clone(),
            currency: config.usage.currency.clone(),
            approvals: route
                .approvals
                .iter()
                .filter_map(|n| config.approvals.iter().find(|a| &a.name == n).cloned())
                .collect(),
        }));
    }
    Ok(routes)
}

pub struct RouteMasking {
    pub engine: Arc<Engine>,
    pub request: Arc<Rules>,
    pub response: Arc<Rules>,
    pub restore: bool,
    pub refuse_invalid_json: bool,
    /// Binary response bodies pass (the policy's `on_binary_response: pass`); else refused.
    pub pass_binary: bool,
    /// detector -> (guardrail, its message) for the detectors a guardrail of this route blocks.
    pub guardrail_of: HashMap<String, (String, Option<String>)>,
}

impl RouteMasking {
    /// The answer for a request a guardrail or `block` action refused: names the rule or the
    /// detector, never the value.
    pub fn block_message(&self, detector: &str) -> (String, Option<String>) {
        match self.guardrail_of.get(detector) {
            Some((rule, msg)) => (
                format!(
                    "blocked by guardrail `{rule}` (detector `{detector}`){}",
                    msg.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                ),
                Some(rule.clone()),
            ),
            None => (
                format!("blocked: the request contains a value of detector `{detector}`, which this route's masking policy blocks"),
                None,
            ),
        }
    }
}

/// The engine for a config: built-in detectors, custom ones and guardrail deny words. `hash`
/// outputs use `masking.hash_key`, else `fallback_key` (the process's own, so that they stay the
/// same across reloads).
pub fn engine(config: &Config, fallback_key: &[u8; 32]) -> Result<Arc<Engine>, String> {
    let mut custom: Vec<CustomDetector> = config.masking.custom_detectors.clone();
    for g in &config.guardrails {
        if !g.deny_words.is_empty() {
            custom.push(CustomDetector {
                name: g.words_detector(),
                regex: None,
                words: g.deny_words.clone(),
            });
        }
    }
    let key = match &config.masking.hash_key {
        Some(s) => boring::sha::sha256(s.expose().as_bytes()),
        None => *fallback_key,
    };
    Ok(Arc::new(Engine::new(&custom, key)?))
}

/// A policy that masks nothing (every detector allowed), for `RouteRuntime::scrub_streams`.
fn scrub_only(engine: Arc<Engine>) -> Arc<RouteMasking> {
    let allow = Arc::new(Rules::all(Action::Allow));
    Arc::new(RouteMasking {
        engine,
        request: allow.clone(),
        response: allow,
        restore: false,
        refuse_invalid_json: false,
        pass_binary: true,
        guardrail_of: HashMap::new(),
    })
}

/// The masking of every route that has a policy or guardrails, by route name.
pub fn build_masking(
    config: &Config,
    engine: Arc<Engine>,
) -> Result<HashMap<String, Arc<RouteMasking>>, String> {
    for d in engine.detectors() {
        for dir in ["request", "response"] {
            for a in ["redact", "hash", "pseudonymize", "block"] {
                metrics::MASKED_VALUES.with_label_values(&[&d.name, dir, a]);
            }
        }
    }
    let by_name: HashMap<&str, &Guardrail> = config
        .guardrails
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();
    let mut out = HashMap::new();
    for route in &config.routes {
        if route.masking.is_none() && route.guardrails.is_empty() {
            continue;
        }
        let policy = route
            .masking
            .as_ref()
            .and_then(|m| config.masking.policies.get(m));
        let (mut request, mut response) = match policy {
            Some(p) => (p.request.clone(), p.response.clone()),
            None => (Rules::all(Action::Allow), Rules::all(Action::Allow)),
        };
        // Deny words of guardrails this route does not use are not masked here.
        for g in &config.guardrails {
            if !g.deny_words.is_empty() {
                request.detectors.insert(g.words_detector(), Action::Allow);
                response.detectors.insert(g.words_detector(), Action::Allow);
            }
        }
        let mut guardrail_of = HashMap::new();
        for name in &route.guardrails {
            let g = by_name[name.as_str()];
            metrics::GUARDRAIL_BLOCKS.with_label_values(&[&g.name]);
            let rules = match g.direction {
                Direction::Request => &mut request,
                Direction::Response => &mut response,
            };
            let mut dets = g.detectors.clone();
            if !g.deny_words.is_empty() {
                dets.push(g.words_detector());
            }
            for d in dets {
                rules.detectors.insert(d.clone(), Action::Block);
                guardrail_of.insert(d, (g.name.clone(), g.message.clone()));
            }
        }
        out.insert(
            route.name.clone(),
            Arc::new(RouteMasking {
                engine: engine.clone(),
                request: Arc::new(request),
                response: Arc::new(response),
                restore: policy.is_none_or(|p| p.restore_pseudonyms),
                refuse_invalid_json: policy.is_some_and(|p| p.refuse_invalid_json),
                pass_binary: policy.is_some_and(|p| p.pass_binary),
                guardrail_of,
            }),
        );
    }
    Ok(out)
}

/// Counts a masking pass in `agentgate_masked_values_total`.
pub fn count(tally: &crate::mask::Tally, direction: &str) {
    for ((detector, action), n) in &tally.counts {
        metrics::MASKED_VALUES
            .with_label_values(&[detector, direction, action])
            .inc_by(*n);
    }
}
