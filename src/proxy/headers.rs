//! Header handling on both legs: what is stripped before a request goes upstream (the agent's
//! credentials, hop-by-hop headers) and what the route sets instead, the request ids on both
//! legs, the route's own keys kept out of response headers, and the headers a record keeps.
//!
//! Invariant: no header that carries the agent's credentials, or that would make the upstream
//! run another method or path than the one decided on, reaches the upstream; none with the
//! agent's credentials reaches a record or a session line; the route's injected credentials never reach the agent in a response header.

use super::routes::RouteRuntime;
use crate::identity::Identity;
use crate::mask::injected::SecretSet;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

/// Client headers that carry credentials: removed before the route's own are set.
/// (Pre-parsed names: a `&str` name is parsed again on every call.)
pub const CLIENT_CREDENTIAL_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Headers some frameworks read to run another method or path than the request line's: the
/// gateway's decisions (routes, access, approval rules) judge the request line, so the upstream
/// must not be told otherwise.
const OVERRIDES: [HeaderName; 6] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// A header value unique to one request (an id), marked never-indexed: HTTP/2's HPACK would
/// otherwise add every new id to the connection's dynamic table, evicting entries that repeat
/// (content-type, server) and comparing against them on every lookup (~1% of CPU on HTTP/2).
pub fn per_request_value(v: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::from_str(v).or_err(InternalError, "a request id as a header value")?;
    h.set_sensitive(true);
    Ok(h)
}

/// The request's host in its canonical form (`crate::canonical::host`).
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let raw = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    Some(crate::canonical::host(raw))
}

/// The declared `Content-Length`, when it is a number.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The request as it goes upstream: the agent's credentials and hop-by-hop headers out, the
/// route's host and credentials in, identity encoding when the response is inspected, the
/// decided body's length (`body_len`), agentgate's request id, the upstream's base path.
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    route: &RouteRuntime,
    body_len: Option<usize>,
    id: &str,
) -> Result<()> {
    let named_by_connection: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in CLIENT_CREDENTIAL_HEADERS
        .iter()
        .chain(HOP_BY_HOP.iter())
        .chain(OVERRIDES.iter())
    {
        req.remove_header(name);
    }
    for name in named_by_connection {
        // Never let `Connection: content-length` strip framing headers.
        if name != "content-length" && name != "transfer-encoding" {
            req.remove_header(&name);
        }
    }
    req.insert_header(header::HOST, route.host_header.clone())?;
    for h in &route.route.set_headers {
        req.insert_header(h.name.clone(), h.value.clone())?;
    }
    // A model call's answer is read for its usage too (a POST, outside MCP routes).
    let metered = req.method == http::Method::POST && route.route.mcp.is_none();
    if route.secrets.is_some() || route.masking.is_some() || metered {
        // The response is scanned (credentials, masking, usage), which compression would hide.
        req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    }
    if let Some(n) = body_len {
        // The decided (masked) body replaces the agent's: its length is the new one. It was
        // read whole before anything went upstream, so nothing waits for a `100 Continue`
        // (the upstream's would reach the agent after its body, as a second response head).
        req.remove_header(&header::TRANSFER_ENCODING);
        req.remove_header(&header::EXPECT);
        req.insert_header(header::CONTENT_LENGTH, n)?;
    }
    req.insert_header(X_REQUEST_ID, per_request_value(id)?)?;
    let base = &route.route.upstream.base_path;
    if !base.is_empty() {
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: http::Uri = format!("{base}{pq}")
            .parse()
            .or_err(InternalError, "joining the upstream base path")?;
        req.set_uri(uri);
    }
    Ok(())
}

/// The upstream's own request id kept as `x-upstream-request-id`, agentgate's as `x-request-id`.
pub fn tag_response(resp: &mut ResponseHeader, id: &str) -> Result<()> {
    if let Some(mut upstream_id) = resp.headers.get(&X_REQUEST_ID).cloned() {
        upstream_id.set_sensitive(true);
        resp.insert_header(X_UPSTREAM_REQUEST_ID, upstream_id)?;
    }
    resp.insert_header(X_REQUEST_ID, per_request_value(id)?)
}

/// Masks the route's own credentials wherever the upstream echoed them in a response header.
pub fn scrub_response_headers(resp: &mut ResponseHeader, set: &SecretSet) -> Result<()> {
    // (Through ResponseHeader's own methods: it keeps the header names' case beside the map.)
    for (name, values) in masked_values(&resp.headers, set) {
        resp.remove_header(&name);
        for v in values {
            resp.append_header(name.clone(), v)?;
        }
    }
    Ok(())
}

/// Response trailers (HTTP/2) as they go to the agent: the route's credentials masked as in
/// headers, and no cookie set through them.
pub fn scrub_trailers(trailers: &mut http::HeaderMap, set: Option<&SecretSet>) {
    trailers.remove(header::SET_COOKIE);
    if let Some(set) = set {
        scrub_header_map(trailers, set);
    }
}

fn scrub_header_map(headers: &mut http::HeaderMap, set: &SecretSet) {
    for (name, values) in masked_values(headers, set) {
        headers.remove(&name);
        for v in values {
            headers.append(name.clone(), v);
        }
    }
}

/// The headers holding one of `set`'s credentials, each with all its values masked.
fn masked_values(
    headers: &http::HeaderMap,
    set: &SecretSet,
) -> Vec<(HeaderName, Vec<HeaderValue>)> {
    headers
        .keys()
        .filter(|k| {
            headers
                .get_all(*k)
                .iter()
                .any(|v| set.contains_secret(v.as_bytes()))
        })
        .map(|name| {
            let values = headers
                .get_all(name)
                .iter()
                .map(|v| {
                    let mut bytes = v.as_bytes().to_vec();
                    set.mask_in_place(&mut bytes);
                    HeaderValue::from_bytes(&bytes)
                        .unwrap_or(HeaderValue::from_static("[redacted]"))
                })
                .collect();
            (name.clone(), values)
        })
        .collect()
}

/// Header names and values for a record, without credentials (values are masked on write).
pub fn recordable_headers(h: &http::HeaderMap) -> crate::record::Headers {
    h.iter()
        .filter(|(k, _)| !CLIENT_CREDENTIAL_HEADERS.contains(k) && *k != header::SET_COOKIE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The conversation whose pseudonyms a request shares: the caller, plus `x-agentgate-session`
/// when the agent names one (a caller never reaches another caller's pseudonyms).
pub fn conversation_key(who: &Identity, req: &RequestHeader) -> String {
    let session = session_header(req).unwrap_or("");
    format!("{}\u{1f}{}\u{1f}{session}", who.issuer, who.subject)
}

/// The readable conversation id a record is filed under: `x-agentgate-session` when the agent
/// sends one, else the caller.
pub fn conversation_id(who: &Identity, req: &RequestHeader) -> String {
    match session_header(req) {
        Some(s) => s.to_string(),
        None => format!("{}@{}", who.subject, who.issuer),
    }
}

/// The agent's `x-agentgate-session`, when it sends a usable one (at most 128 bytes).
fn session_header(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get("x-agentgate-session")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
}

/// A `text/event-stream`, `...json` or other content type, lower-cased ("" when absent).
pub fn content_type(h: &http::HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A `Content-Encoding` other than identity, as text for an error message.
pub fn compressed(h: &http::HeaderMap) -> Option<String> {
    // Every field and every coding of a list: `Content-Encoding: identity` followed by a
    // second `Content-Encoding: gzip` is a gzip body to whoever reads the last one.
    codings_besides(h, header::CONTENT_ENCODING, b"identity")
}

/// A request `Transfer-Encoding` with a coding other than `chunked` (`gzip, chunked`): its
/// body's bytes are not what the gateway would inspect. The codings, when so.
pub fn transfer_coded(h: &http::HeaderMap) -> Option<String> {
    codings_besides(h, header::TRANSFER_ENCODING, b"chunked")
}

/// The codings of every `name` field, joined (`a, b`), when any of them is not `allowed`
/// (ASCII case ignored); nothing is allocated otherwise (these run on every exchange).
fn codings_besides(
    h: &http::HeaderMap,
    name: header::HeaderName,
    allowed: &[u8],
) -> Option<String> {
    let codings = || {
        h.get_all(&name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    codings()
        .any(|c| !c.eq_ignore_ascii_case(allowed))
        .then(|| {
            codings()
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(", ")
        })
}

#[cfg(test)]
mod tests {
    use super::{compressed, transfer_coded};
    use http::{HeaderMap, HeaderValue};

    fn map(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_content_and_transfer_coding_is_read() {
        let ce = |v: &[&'static str]| compressed(&map("content-encoding", v));
        assert_eq!(ce(&[]), None);
        assert_eq!(ce(&["identity"]), None);
        assert_eq!(ce(&["Identity", " identity "]), None);
        assert_eq!(ce(&["gzip"]).as_deref(), Some("gzip"));
        // A second field, or a list, hides nothing (the first field alone said identity).
        assert_eq!(ce(&["identity", "gzip"]).as_deref(), Some("identity, gzip"));
        assert_eq!(ce(&["identity, br"]).as_deref(), Some("identity, br"));
        assert_eq!(ce(&["identity,"]).as_deref(), Some("identity, "));
        let te = |v: &[&'static str]| transfer_coded(&map("transfer-encoding", v));
        assert_eq!(te(&[]), None);
        assert_eq!(te(&["chunked"]), None);
        assert_eq!(te(&["Chunked"]), None);
        assert_eq!(te(&["gzip, chunked"]).as_deref(), Some("gzip, chunked"));
        assert_eq!(te(&["gzip", "chunked"]).as_deref(), Some("gzip, chunked"));
    }
}
