//! Hosted MCP tools in model API requests (`routes[].hosted_mcp`): the glue around
//! `mcp/hosted.rs`. The body that would go upstream (after masking) is read as the upstream will
//! read it — strict UTF-8 JSON, duplicate keys refused — and decided whole; a refusal answers
//! 403 in the API's error shape and sends nothing upstream.
//!
//! Invariant: on a route with `hosted_mcp`, a body the upstream could read as JSON (or JSON
//! lines) is either decided here or refused (400); a multipart body is split strictly and each
//! part that could be JSON decided the same way, or the body is refused; only bodies and parts
//! that cannot be JSON (an audio file) pass undecided.

use super::error::ApiError;
use super::routes::RouteRuntime;
use crate::mask::json::{validate, JsonError};
use crate::mcp::hosted;
use crate::metrics;

/// Whether the upstream could take `body` for JSON: a JSON content type, or a first byte past
/// whitespace, NULs and byte-order marks (UTF-16/32, a UTF-8 BOM: parsers that detect them
/// exist) that opens a JSON document.
fn may_be_json(content_type: &str, body: &[u8]) -> bool {
    content_type.contains("json")
        || body
            .iter()
            .find(|b| {
                !(b.is_ascii_whitespace() || matches!(b, 0 | 0xef | 0xbb | 0xbf | 0xfe | 0xff))
            })
            .is_some_and(|b| matches!(b, b'{' | b'['))
}

/// The route's decision on the body going upstream: `Ok(None)` to send it as it is,
/// `Ok(Some(body))` to send the rewritten one (approval forced), or the error to answer with.
/// A `multipart/form-data` body is decided part by part (the session of a realtime call, a
/// batch file's JSON lines), read strictly.
pub fn decide(
    route: &RouteRuntime,
    content_type: &str,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(policy) = route.route.hosted_mcp.as_ref() else {
        return Ok(None);
    };
    if body.is_empty() {
        return Ok(None);
    }
    if content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/")
    {
        return decide_multipart(route, policy, content_type, body);
    }
    if !may_be_json(content_type, body) {
        return Ok(None);
    }
    decide_json(route, policy, body)
}

fn invalid(route: &RouteRuntime, code: &'static str, why: String) -> ApiError {
    ApiError::new(400, "invalid_request_error", code, format!(
        "route `{}` checks the hosted MCP tools a request names, and reads its body as strict JSON: {why}",
        route.route.name
    ))
}

/// A multipart body, each part that could be JSON decided as JSON or JSON lines; rewritten
/// parts spliced back in place.
fn decide_multipart(
    route: &RouteRuntime,
    policy: &crate::config::HostedMcp,
    content_type: &str,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let bad = |why: &str| {
        invalid(route, "invalid_multipart", format!(
            "a multipart body is read strictly (one boundary parameter, CRLF line ends, every `--boundary` a delimiter, a close delimiter): {why}"
        ))
    };
    let boundary =
        hosted::multipart_boundary(content_type).ok_or_else(|| bad("no usable boundary"))?;
    let parts =
        hosted::multipart_parts(body, &boundary).ok_or_else(|| bad("its framing is not strict"))?;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for p in parts {
        let content = &body[p.content.clone()];
        let ct = hosted::part_content_type(&body[p.headers.clone()]);
        if content.is_empty() || !may_be_json(&ct, content) {
            continue;
        }
        if let Some(new) = decide_json(route, policy, content)? {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            o.extend_from_slice(&body[copied..p.content.start]);
            o.extend_from_slice(&new);
            copied = p.content.end;
        }
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(&body[copied..]);
        o
    }))
}

/// One JSON document, or JSON lines (a batch file), decided.
fn decide_json(
    route: &RouteRuntime,
    policy: &crate::config::HostedMcp,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    match decide_doc(route, policy, body) {
        Err(e) if e.code == "invalid_json" && is_json_lines(body) => {
            let mut out = Vec::with_capacity(body.len() + 64);
            let mut changed = false;
            for line in body.split_inclusive(|&b| b == b'\n') {
                let text = line.trim_ascii();
                if text.is_empty() {
                    out.extend_from_slice(line);
                    continue;
                }
                match decide_doc(route, policy, text)? {
                    Some(new) => {
                        changed = true;
                        out.extend_from_slice(&new);
                        out.extend_from_slice(&line[line.trim_ascii_end().len()..]);
                    }
                    None => out.extend_from_slice(line),
                }
            }
            Ok(changed.then_some(out))
        }
        other => other,
    }
}

/// Several lines, each (past whitespace) opening a JSON document.
fn is_json_lines(body: &[u8]) -> bool {
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty());
    let first = lines.next();
    let second = lines.next();
    first.is_some()
        && second.is_some()
        && [first, second]
            .into_iter()
            .flatten()
            .chain(lines)
            .all(|l| matches!(l[0], b'{' | b'['))
}

fn decide_doc(
    route: &RouteRuntime,
    policy: &crate::config::HostedMcp,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let name = &route.route.name;
    match validate(body) {
        Err(e @ JsonError::TooDeep) => return Err(invalid(route, "json_too_deep", e.to_string())),
        Err(e @ JsonError::DuplicateKey(_)) => {
            return Err(invalid(route, "duplicate_json_key", e.to_string()))
        }
        _ => {}
    }
    let mut doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            route,
            "invalid_json",
            format!("{e} (send UTF-8 JSON without a byte-order mark)"),
        )
    })?;
    match hosted::decide(policy, name, &mut doc) {
        Ok(false) => Ok(None),
        Ok(true) => {
            metrics::HOSTED_MCP_REQUESTS
                .with_label_values(&[name, "approval_forced"])
                .inc();
            serde_json::to_vec(&doc).map(Some).map_err(|e| {
                ApiError::new(500, "internal_error", "hosted_mcp_rewrite_failed", format!("route `{name}`: the request could not be written again after forcing approval: {e}"))
            })
        }
        Err(r) => {
            log::info!(
                "hosted_mcp: route `{name}` refused a request: {}",
                r.message
            );
            metrics::HOSTED_MCP_REQUESTS
                .with_label_values(&[name, "refused"])
                .inc();
            Err(ApiError::new(403, "permission_error", r.code, r.message))
        }
    }
}
