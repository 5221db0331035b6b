//! Prometheus metrics, registered in the default registry that `pingora-prometheus` re-exports.
//! Names and labels are part of the product (README lists them); labels have bounded
//! cardinality: route names come from the config, never from requests.

use pingora_prometheus::prometheus::{
    self, register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounter, IntCounterVec,
};
use std::sync::LazyLock;

/// Latency buckets from 250 µs (gateway overhead) to 10 minutes (slow model calls).
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
];

macro_rules! lazy {
    ($name:ident : $ty:ty = $init:expr) => {
        pub static $name: LazyLock<$ty> = LazyLock::new(|| $init.expect("metric registers once"));
    };
}

lazy!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "agentgate_requests_total",
    "Requests answered, by route and status class (1xx..5xx, or none when no response was sent)",
    &["route", "status_class"]
));
lazy!(REQUEST_DURATION: HistogramVec = register_histogram_vec!(
    "agentgate_request_duration_seconds",
    "Time from the request header to the end of the response",
    &["route"],
    LATENCY_BUCKETS.to_vec()
));
lazy!(UPSTREAM_TTFB: HistogramVec = register_histogram_vec!(
    "agentgate_upstream_ttfb_seconds",
    "Time from sending the request upstream to the upstream's response header",
    &["route"],
    LATENCY_BUCKETS.to_vec()
));
lazy!(REQUEST_BYTES: IntCounterVec = register_int_counter_vec!(
    "agentgate_request_bytes_total",
    "Request body bytes received from agents",
    &["route"]
));
lazy!(RESPONSE_BYTES: IntCounterVec = register_int_counter_vec!(
    "agentgate_response_bytes_total",
    "Response body bytes sent to agents",
    &["route"]
));
lazy!(UPSTREAM_CONNECTIONS: IntCounterVec = register_int_counter_vec!(
    "agentgate_upstream_connections_total",
    "Upstream connections used for a request, by whether a pooled connection was reused",
    &["reused"]
));
lazy!(TLS_HANDSHAKE_FAILURES: IntCounterVec = register_int_counter_vec!(
    "agentgate_tls_handshake_failures_total",
    "TLS handshakes that failed, by leg (downstream: agent side, upstream: API side)",
    &["leg"]
));
lazy!(ERRORS: IntCounterVec = register_int_counter_vec!(
    "agentgate_errors_total",
    "Requests the gateway answered with its own error, by route and kind",
    &["route", "kind"]
));

lazy!(AUTH_FAILURES: IntCounterVec = register_int_counter_vec!(
    "agentgate_auth_failures_total",
    "Requests refused by identity checks, by reason (expired, bad_signature, missing_group...)",
    &["reason"]
));
lazy!(JWKS_REFRESH: IntCounterVec = register_int_counter_vec!(
    "agentgate_jwks_refresh_total",
    "Fetches of an OIDC issuer's signing keys, by issuer and result (ok, error)",
    &["issuer", "result"]
));

lazy!(MASKED_VALUES: IntCounterVec = register_int_counter_vec!(
    "agentgate_masked_values_total",
    "Sensitive values found and acted on, by detector, direction (request, response) and action",
    &["detector", "direction", "action"]
));
lazy!(GUARDRAIL_BLOCKS: IntCounterVec = register_int_counter_vec!(
    "agentgate_guardrail_blocks_total",
    "Requests refused and responses ended by a guardrail, by rule",
    &["rule"]
));
lazy!(MASK_HOLDBACK: prometheus::Histogram = prometheus::register_histogram!(
    "agentgate_mask_holdback_bytes",
    "Bytes of response text held back by the stream masker after each upstream chunk",
    vec![0.0, 8.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0]
));

lazy!(RECORDS_WRITTEN: IntCounter = prometheus::register_int_counter!(
    "agentgate_records_written_total",
    "Exchange records appended to the store"
));
lazy!(RECORD_QUEUE_DEPTH: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_record_queue_depth",
    "Records waiting for the recorder thread"
));
lazy!(RECORD_STORE_BYTES: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_record_store_bytes",
    "Bytes in the record store's segments"
));
lazy!(RECORD_FAILURES: IntCounterVec = register_int_counter_vec!(
    "agentgate_record_failures_total",
    "Records that could not be queued or written, by reason (queue_full, disk_full, io)",
    &["reason"]
));

lazy!(CHECKPOINTS: IntCounterVec = register_int_counter_vec!(
    "agentgate_record_checkpoints_total",
    "Signed checkpoints of the record store written, by sink (store, stdout, https) and result (ok, error)",
    &["sink", "result"]
));

lazy!(CONFIG_RELOADS: IntCounterVec = register_int_counter_vec!(
    "agentgate_config_reloads_total",
    "Configuration reloads (SIGHUP or file change), by result: ok, invalid (the file does not validate), error",
    &["result"]
));

lazy!(REQUESTS_IN_FLIGHT: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_requests_in_flight",
    "Requests being handled now (read at scrape time; one that never finishes shows up here)"
));
lazy!(PSEUDONYM_VAULT_BYTES: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_pseudonym_vault_bytes",
    "Bytes the pseudonym vaults hold (read at scrape time; bounded at 64 MiB, least recently used conversations evicted)"
));
lazy!(APPROVALS_PENDING: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_approvals_pending",
    "Approvals waiting for a decision"
));
lazy!(APPROVAL_DECISIONS: IntCounterVec = register_int_counter_vec!(
    "agentgate_approval_decisions_total",
    "Approvals that left pending, by rule and outcome (approved, denied, expired, abandoned)",
    &["rule", "decision"]
));
lazy!(APPROVAL_WAIT: HistogramVec = register_histogram_vec!(
    "agentgate_approval_wait_seconds",
    "Time from an approval's creation to its outcome",
    &["rule"],
    vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]
));
lazy!(APPROVAL_WEBHOOKS: IntCounterVec = register_int_counter_vec!(
    "agentgate_approval_webhooks_total",
    "Approval notifications, by result (sent, retry, failed)",
    &["result"]
));

lazy!(MCP_CALLS: IntCounterVec = register_int_counter_vec!(
    "agentgate_mcp_calls_total",
    "MCP tools/call requests, by route, tool (the first 256 names a route sees; later ones are `other`) and outcome (allowed, refused, changed_definition, denied, expired, approval_refused)",
    &["route", "tool", "outcome"]
));
lazy!(MCP_DEFINITION_CHANGES: IntCounterVec = register_int_counter_vec!(
    "agentgate_mcp_tool_definition_changes_total",
    "Tool definitions an MCP server changed since they were pinned (hidden until accepted), by route",
    &["route"]
));
lazy!(MCP_SERVER_REQUESTS_DROPPED: IntCounterVec = register_int_counter_vec!(
    "agentgate_mcp_server_requests_dropped_total",
    "Requests from an MCP server to the client that the route denies (sampling, elicitation, roots), by route and method",
    &["route", "method"]
));

lazy!(HOSTED_MCP_REQUESTS: IntCounterVec = register_int_counter_vec!(
    "agentgate_hosted_mcp_requests_total",
    "Model API requests naming hosted MCP tools that the route's hosted_mcp refused or whose approval it forced, by route and outcome",
    &["route", "outcome"]
));

lazy!(TOKENS: IntCounterVec = register_int_counter_vec!(
    "agentgate_tokens_total",
    "Tokens answers reported, by route, model (the price table's name for it, or unpriced) and kind (input, output, cached_input and reasoning; cached_input is part of input, reasoning part of output)",
    &["route", "model", "kind"]
));
lazy!(COST: prometheus::CounterVec = prometheus::register_counter_vec!(
    "agentgate_cost_total",
    "What the reported tokens cost at the configured prices, in usage.currency, by route and model",
    &["route", "model"]
));
lazy!(USAGE_UNREPORTED: IntCounterVec = register_int_counter_vec!(
    "agentgate_usage_unreported_total",
    "Successful model answers that reported no usage (a limit charges them what they reserved), by route",
    &["route"]
));
lazy!(LIMIT_REFUSALS: IntCounterVec = register_int_counter_vec!(
    "agentgate_limit_refusals_total",
    "Requests refused with 429 by a limit, by limit and kind (requests, tokens, cost, concurrent)",
    &["limit", "kind"]
));
lazy!(LIMIT_CUTS: IntCounterVec = register_int_counter_vec!(
    "agentgate_limit_stream_cuts_total",
    "Streamed answers ended mid-way by a cut_streams limit, by limit and kind (tokens, cost)",
    &["limit", "kind"]
));
lazy!(LIMITS_STORE_ERRORS: IntCounterVec = register_int_counter_vec!(
    "agentgate_limits_store_errors_total",
    "Calls to the shared limits store (Redis) that failed, by outcome: refused (fail closed, 503), allowed (fail open, uncounted) or settle (a charge not applied)",
    &["outcome"]
));
lazy!(LEDGER_WRITE_FAILURES: IntCounter = prometheus::register_int_counter!(
    "agentgate_usage_ledger_write_failures_total",
    "Failed writes of the usage ledger (state_dir/usage.json); retried within a second"
));

pub static SESSION_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "agentgate_session_log_dropped_total",
        "Session log lines dropped because stdout could not keep up (8 MiB pending)"
    )
    .expect("metric registers once")
});

/// The label used for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// Per-route counters resolved once, so the hot path does no label lookup.
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
    pub duration: prometheus::Histogram,
    pub ttfb: prometheus::Histogram,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let class = |c: &str| REQUESTS.with_label_values(&[route, c]);
        RouteMetrics {
            by_class: [
                class("none"),
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: REQUEST_DURATION.with_label_values(&[route]),
            ttfb: UPSTREAM_TTFB.with_label_values(&[route]),
            request_bytes: REQUEST_BYTES.with_label_values(&[route]),
            response_bytes: RESPONSE_BYTES.with_label_values(&[route]),
        }
    }

    pub fn count_status(&self, status: u16) {
        let i = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[i].inc();
    }
}

lazy!(STORE_QUERY_DURATION: HistogramVec = register_histogram_vec!(
    "agentgate_store_query_duration_seconds",
    "Time of one operation on the PostgreSQL store (waiting for a pooled connection included), by operation",
    &["op"],
    LATENCY_BUCKETS.to_vec()
));
lazy!(STORE_ERRORS: IntCounterVec = register_int_counter_vec!(
    "agentgate_store_errors_total",
    "Operations on the PostgreSQL store that failed (database unreachable, query refused), by operation",
    &["op"]
));
lazy!(STORE_POOL_CONNECTIONS: prometheus::IntGaugeVec = prometheus::register_int_gauge_vec!(
    "agentgate_store_pool_connections",
    "Connections to the PostgreSQL store, by state (busy, idle) and the pool's maximum (max)",
    &["state"]
));
lazy!(STORE_UP: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_store_up",
    "1 while the last operation on the PostgreSQL store succeeded, else 0"
));
lazy!(STORE_NOTIFY_LAG: prometheus::Histogram = prometheus::register_histogram!(
    "agentgate_store_notify_lag_seconds",
    "Time from a decision committed on any replica to this replica hearing of it (LISTEN/NOTIFY)",
    vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
));
lazy!(STORE_RECORDS: IntCounterVec = register_int_counter_vec!(
    "agentgate_store_records_total",
    "Records sent to the PostgreSQL store, by outcome (inserted, present: already there, identical; conflict: another row holds this replica and sequence; dropped: the queue was full)",
    &["outcome"]
));
lazy!(STORE_RECORD_QUEUE: prometheus::IntGauge = prometheus::register_int_gauge!(
    "agentgate_store_record_queue_depth",
    "Records waiting to be written to the PostgreSQL store"
));

/// Forces registration so `/metrics` lists every family from the first scrape.
pub fn init() {
    for leg in ["downstream", "upstream"] {
        TLS_HANDSHAKE_FAILURES.with_label_values(&[leg]);
    }
    for reused in ["true", "false"] {
        UPSTREAM_CONNECTIONS.with_label_values(&[reused]);
    }
    LazyLock::force(&ERRORS);
    LazyLock::force(&SESSION_LOG_DROPPED);
    LazyLock::force(&REQUESTS_IN_FLIGHT);
    LazyLock::force(&PSEUDONYM_VAULT_BYTES);
    LazyLock::force(&TOKENS);
    LazyLock::force(&COST);
    for outcome in ["refused", "allowed", "settle"] {
        LIMITS_STORE_ERRORS.with_label_values(&[outcome]);
    }
}

pub fn render() -> (Vec<u8>, String) {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = encoder.encode(&prometheus::gather(), &mut buf);
    (buf, encoder.format_type().to_string())
}
