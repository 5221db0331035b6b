//! Usage and limits on the data path: what a request asks for (read with its body where a limit
//! counts tokens or cost, or the route adds `stream_options.include_usage`), admission by the
//! limits before anything goes upstream (429 in OpenAI's shape otherwise), the `x-ratelimit-*`
//! headers on the answer, the usage scanner over the answer's body, and the charge, metrics and
//! ledger totals once the exchange ends.
//!
//! Invariant: a request a limit refuses sends nothing upstream; an admitted one is settled
//! exactly once, when its exchange is logged (`Exchange::finish`), by the session that holds it.

use super::error::ApiError;
use super::exchange::Exchange;
use super::headers;
use super::routes::RouteRuntime;
use crate::limits::{self, Caller, Charge, Denied, Refusal, Ticket};
use crate::metrics;
use crate::usage::request::{self, Asked};
use crate::usage::scan::{Framing, UsageScanner};
use crate::usage::Usage;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

/// The usage side of one exchange.
#[derive(Default)]
pub struct Metering {
    /// What the request asked for (`None`: its body was not read).
    pub asked: Option<Asked>,
    /// The gateway added `include_usage`: the usage chunk is removed from the agent's stream.
    pub strip: bool,
    pub scanner: Option<UsageScanner>,
    pub ticket: Option<Ticket>,
    /// The `cut_streams` limit (name, kind) whose room caps this answer's stream.
    pub cut_by: Option<(String, limits::Kind)>,
}

/// Whether the request's body must be read before it goes upstream for usage's sake.
pub fn needs_body(route: &RouteRuntime, req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::POST
        && (route.limiter.needs_estimate(&route.route.name)
            || (route.route.stream_usage && is_chat(req.uri.path())))
}

fn is_chat(path: &str) -> bool {
    path.ends_with("/chat/completions")
}

/// `subject@issuer`: how limits and the ledger name a caller.
pub fn identity_key(who: &crate::identity::Identity) -> String {
    format!("{}@{}", who.subject, who.issuer)
}

/// Checks the route's limits for this request (`body`: the one going upstream, when it was
/// read) and reserves its share; the 429 to answer with otherwise.
pub async fn admit(ctx: &mut Exchange, body: Option<&[u8]>) -> Result<(), ApiError> {
    let asked = body.map(request::read);
    let (Some(route), Some(who)) = (ctx.route.clone(), ctx.identity.clone()) else {
        return Ok(());
    };
    let limited = route.limiter.applies(&route.route.name);
    if asked.is_none() && !limited {
        // Nothing to remember: most requests allocate nothing here.
        return Ok(());
    }
    let m = ctx.metering.get_or_insert_with(Box::default);
    m.asked = asked;
    if !limited {
        return Ok(());
    }
    let id = identity_key(&who);
    let caller = Caller {
        identity: &id,
        groups: &who.groups,
        route: &route.route.name,
    };
    match route
        .limiter
        .admit(&caller, m.asked.as_ref(), limits::now_ms())
        .await
    {
        Ok(t) => {
            m.ticket = Some(t);
            Ok(())
        }
        Err(Denied::StoreUnavailable(why)) => {
            let mut e = ApiError::new(
                503,
                "service_unavailable_error",
                "limits_unavailable",
                format!("the limits of route `{}` are kept in Redis, which did not answer ({why}); the gateway refuses rather than spend unseen (limits_store.redis.on_unavailable: refuse)", route.route.name),
            );
            e.headers.push(("retry-after".into(), "1".into()));
            Err(e)
        }
        Err(Denied::Limit(r)) => {
            metrics::LIMIT_REFUSALS
                .with_label_values(&[&r.limit, r.kind.as_str()])
                .inc();
            Err(refusal(&r))
        }
    }
}

/// The 429 of a refusal, as OpenAI writes it, with the headers the SDKs' retry reads.
fn refusal(r: &Refusal) -> ApiError {
    let code = if r.kind == limits::Kind::Cost {
        "insufficient_quota"
    } else {
        "rate_limit_exceeded"
    };
    let mut e = ApiError::new(429, "rate_limit_error", code, r.message.clone());
    let secs = (r.retry_after_ms.max(0) + 999) / 1000;
    e.headers = r.headers.clone();
    e.headers
        .push(("retry-after".into(), secs.max(1).to_string()));
    e.headers
        .push(("retry-after-ms".into(), r.retry_after_ms.max(0).to_string()));
    if r.no_retry {
        // The OpenAI SDKs do not retry when told so (a spent budget, a request too large).
        e.headers.push(("x-should-retry".into(), "false".into()));
    }
    e
}

/// A streaming Chat Completions body rewritten to ask for usage, where the route says so.
pub fn add_include_usage(
    ctx: &mut Exchange,
    route: &RouteRuntime,
    path: &str,
    body: Vec<u8>,
) -> Vec<u8> {
    if !route.route.stream_usage || !is_chat(path) {
        return body;
    }
    let m = ctx.metering.get_or_insert_with(Box::default);
    let asked = m.asked.get_or_insert_with(|| request::read(&body));
    match request::add_include_usage(&body, asked) {
        Some(b) => {
            m.strip = true;
            b
        }
        None => body,
    }
}

/// At the response header: the limits' headers, and the scanner for a successful answer to a
/// POST (model calls) that is SSE or JSON.
pub fn start_response(
    ctx: &mut Exchange,
    resp: &mut ResponseHeader,
    method: &http::Method,
) -> Result<()> {
    let Some(route) = ctx.route.as_ref() else {
        return Ok(());
    };
    // Every answer of a limited request says where its limits stand.
    for (k, v) in ratelimit_headers(ctx) {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    if route.route.mcp.is_some() || method != http::Method::POST {
        return Ok(());
    }
    let m = ctx.metering.get_or_insert_with(Box::default);
    if !resp.status.is_success() {
        return Ok(());
    }
    let ct = headers::content_type(&resp.headers).to_ascii_lowercase();
    let framing = if ct.starts_with("text/event-stream") {
        Framing::Sse
    } else if ct.contains("json") {
        Framing::Json
    } else {
        return Ok(());
    };
    if m.strip && framing == Framing::Sse {
        // A line may be removed: the length is no longer the upstream's.
        resp.remove_header(&header::CONTENT_LENGTH);
        if resp.version != http::Version::HTTP_2 {
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    let mut scanner = UsageScanner::new(framing, m.strip);
    if m.ticket.as_ref().is_some_and(Ticket::charges_usage) {
        // A stream that reports no usage is charged at least what it was seen to generate.
        scanner = scanner.with_counting();
    }
    if framing == Framing::Sse {
        if let Some((tokens, by)) = stream_cap(m, &route.prices) {
            let event = cut_event(&by.0, by.1, tokens);
            scanner = scanner.with_cap(tokens, event);
            m.cut_by = Some(by);
        }
    }
    m.scanner = Some(scanner);
    Ok(())
}

/// The output tokens this request's stream may generate before a `cut_streams` limit ends it:
/// the room its tightest such quota had at admission, less the prompt's estimate (a cost room
/// converted at the model's output price), and that limit.
fn stream_cap(
    m: &Metering,
    prices: &crate::usage::PriceTable,
) -> Option<(u64, (String, limits::Kind))> {
    let cut = m.ticket.as_ref()?.cut.as_ref()?;
    let asked = m.asked.as_ref();
    let input = asked.map_or(0, |a| a.input_estimate());
    let model = asked.and_then(|a| a.model.as_deref());
    let by_tokens = cut.tokens.as_ref().map(|(room, name)| {
        (
            room.saturating_sub(input),
            (name.clone(), limits::Kind::Tokens),
        )
    });
    let by_cost = cut.cost.as_ref().and_then(|(room, name)| {
        prices
            .output_within(model, input, *room)
            .map(|n| (n, (name.clone(), limits::Kind::Cost)))
    });
    [by_tokens, by_cost]
        .into_iter()
        .flatten()
        .min_by_key(|c| c.0)
}

/// The SSE error event that ends a stream a limit cut: `event: error` with a body both the
/// OpenAI SDKs (`error` object) and Anthropic's (`type: error`) raise on.
fn cut_event(limit: &str, kind: limits::Kind, tokens: u64) -> Vec<u8> {
    let (code, what) = if kind == limits::Kind::Cost {
        ("insufficient_quota", "cost budget")
    } else {
        ("rate_limit_exceeded", "token quota")
    };
    let message = format!(
        "the stream was ended: it would pass the {what} of limit `{limit}` (about {tokens} output tokens were left for it when the request was admitted); limits.cut_streams is set"
    );
    let v = serde_json::json!({
        "type": "error",
        "error": {"message": message, "type": "rate_limit_error", "code": code},
    });
    format!("event: error\ndata: {v}\n\n").into_bytes()
}

/// The `x-ratelimit-*` headers of the request's reservation (none when no limit applies).
pub fn ratelimit_headers(ctx: &Exchange) -> &[(String, String)] {
    ctx.metering
        .as_ref()
        .and_then(|m| m.ticket.as_ref())
        .map_or(&[], |t| &t.headers)
}

/// One chunk of the answer through the scanner (before masking sees it).
pub fn scan(ctx: &mut Exchange, body: &mut Option<Bytes>, end: bool) {
    let Some(s) = ctx.metering.as_mut().and_then(|m| m.scanner.as_mut()) else {
        return;
    };
    let replaced = match body.as_deref() {
        Some(b) => s.push(b, end),
        None if end => s.push(&[], true),
        None => None,
    };
    if let Some(out) = replaced {
        *body = Some(Bytes::from(out));
    }
}

/// What the exchange used, for the session line and the record.
#[derive(serde::Serialize)]
pub struct UsageLine {
    pub model: Option<String>,
    #[serde(flatten)]
    pub tokens: Option<Usage>,
    /// Whether the answer reported its usage.
    pub reported: bool,
    pub cost: f64,
    pub currency: String,
    /// The limit that ended the stream (`cut_streams`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_by: Option<String>,
}

/// Settles the exchange's reservations with what its answer reported, counts its tokens and
/// cost, and adds it to the ledger's totals; what the session line and record say of it.
pub fn finish(ctx: &mut Exchange, status: u16) -> Option<serde_json::Value> {
    let m = ctx.metering.take()?;
    let route = ctx.route.clone()?;
    let prices = &route.prices;
    let observed = m.scanner.as_ref().map(|s| &s.observed);
    let cut = m.scanner.as_ref().is_some_and(|s| s.cut);
    // What the stream was seen to generate (0 unless counted), and the prompt's estimate.
    let generated = m.scanner.as_ref().map_or(0, UsageScanner::generated_tokens);
    let input_estimate = m.asked.as_ref().map_or(0, Asked::input_estimate);
    let mut usage = observed.and_then(|o| o.usage());
    if cut {
        // The usage chunk never came: what was generated up to the cut is charged.
        let mut u = usage.unwrap_or_default();
        if u.input == 0 {
            u.input = input_estimate;
        }
        u.output = u.output.max(generated);
        usage = Some(u);
        if let Some((name, kind)) = &m.cut_by {
            metrics::LIMIT_CUTS
                .with_label_values(&[name, kind.as_str()])
                .inc();
        }
    }
    let model = observed
        .and_then(|o| o.model.clone())
        .or_else(|| m.asked.as_ref().and_then(|a| a.model.clone()));
    let label = prices.label(model.as_deref());
    let cost = usage
        .as_ref()
        .map_or(0, |u| prices.cost(model.as_deref(), u));
    let sent = ctx.sent_upstream_at.is_some();
    let success = (200..300).contains(&status);
    if let Some(u) = &usage {
        let name = route.route.name.as_str();
        for (kind, n) in [
            ("input", u.input),
            ("output", u.output),
            ("cached_input", u.cached_input),
            ("reasoning", u.reasoning),
        ] {
            metrics::TOKENS
                .with_label_values(&[name, label, kind])
                .inc_by(n);
        }
        metrics::COST
            .with_label_values(&[name, label])
            .inc_by(crate::usage::micros_f64(cost));
    } else if sent && success && m.scanner.is_some() {
        metrics::USAGE_UNREPORTED
            .with_label_values(&[&route.route.name])
            .inc();
    }
    let charge = match &usage {
        Some(u) => Charge::Used {
            tokens: u.total(),
            cost,
        },
        // Nothing went upstream, or it refused: nothing was generated.
        None if !sent || !success => Charge::Nothing,
        // Unreported: the reservation, or what the stream was seen to generate if more.
        None if generated == 0 => Charge::Reserved,
        None => Charge::AtLeast {
            tokens: input_estimate.saturating_add(generated),
            cost: prices.ceiling(model.as_deref(), input_estimate, generated),
        },
    };
    if let Some(t) = m.ticket {
        t.settle(charge);
    }
    if !sent || m.scanner.is_none() && m.asked.is_none() {
        return None;
    }
    if let Some(who) = ctx.identity.as_deref() {
        let id = identity_key(who);
        let caller = Caller {
            identity: &id,
            groups: &who.groups,
            route: &route.route.name,
        };
        let ledger = route.limiter.ledger();
        let totals = limits::day_totals(
            route.limiter.time_zone(),
            limits::now_ms(),
            &caller,
            model.as_deref().unwrap_or(""),
            usage.as_ref(),
            cost,
        );
        if success {
            ledger.record(totals);
        }
    }
    serde_json::to_value(UsageLine {
        model,
        reported: usage.is_some() && !cut,
        tokens: usage,
        cost: crate::usage::micros_f64(cost),
        currency: route.currency.clone(),
        cut_by: m.cut_by.filter(|_| cut).map(|b| b.0),
    })
    .ok()
}
