//! Hosted MCP tools in model API requests (`routes[].hosted_mcp`): the glue around
//! `mcp/hosted.rs`. The body that would go upstream (after masking) is read as the upstream will
//! read it — strict UTF-8 JSON, duplicate keys refused — and decided whole; a refusal answers
//! 403 in the API's error shape and sends nothing upstream.
//!
//! Invariant: on a route with `hosted_mcp`, a body the upstream could read as JSON is either
//! decided here or refused (400); only bodies that cannot be JSON (a multipart upload) pass
//! undecided.

use super::error::ApiError;
use super::routes::RouteRuntime;
use crate::mask::json::{validate, JsonError};
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
pub fn decide(
    route: &RouteRuntime,
    content_type: &str,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(policy) = route.route.hosted_mcp.as_ref() else {
        return Ok(None);
    };
    if body.is_empty() || !may_be_json(content_type, body) {
        return Ok(None);
    }
    let name = &route.route.name;
    let invalid = |code: &'static str, why: String| {
        ApiError::new(400, "invalid_request_error", code, format!(
            "route `{name}` checks the hosted MCP tools a request names, and reads its body as strict JSON: {why}"
        ))
    };
    match validate(body) {
        Err(e @ JsonError::TooDeep) => return Err(invalid("json_too_deep", e.to_string())),
        Err(e @ JsonError::DuplicateKey(_)) => {
            return Err(invalid("duplicate_json_key", e.to_string()))
        }
        _ => {}
    }
    let mut doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            "invalid_json",
            format!("{e} (send UTF-8 JSON without a byte-order mark)"),
        )
    })?;
    match crate::mcp::hosted::decide(policy, name, &mut doc) {
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
