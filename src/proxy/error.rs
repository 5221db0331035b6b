//! Errors the gateway answers itself, in the OpenAI error shape
//! (`{"error":{"message","type","code"}}`) so SDKs surface them cleanly.
//!
//! Invariant: messages name the route, upstream URL and cause, never a credential.

use super::headers::{per_request_value, X_REQUEST_ID};
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `upstream_error`, `internal_error`...
    pub kind: &'static str,
    /// A stable machine-readable code; also the `kind` label of `agentgate_errors_total`.
    pub code: &'static str,
    pub message: String,
    /// `WWW-Authenticate` value of a 401.
    pub challenge: Option<String>,
    /// More detail inside the `error` object (`approval` for approval refusals).
    /// (Boxed: rare, and it would double the size of every `Result` that carries an error.)
    pub detail: Option<Box<(&'static str, serde_json::Value)>>,
    /// More response headers (`Retry-After` and `x-ratelimit-*` of a limit's 429).
    pub headers: Vec<(String, String)>,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            challenge: None,
            detail: None,
            headers: Vec::new(),
        }
    }

    /// The answer to a request that identity checks refused (401, 403 or 503).
    pub fn from_auth(e: &crate::identity::AuthError) -> ApiError {
        let status = e.reason.status();
        let kind = match status {
            401 => "authentication_error",
            403 => "permission_error",
            _ => "service_unavailable_error",
        };
        let mut err = ApiError::new(status, kind, e.reason.as_str(), e.description.clone());
        err.challenge = e.challenge();
        err
    }

    pub fn body(&self) -> Bytes {
        let mut v = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        });
        if let Some((k, d)) = self.detail.as_deref() {
            v["error"][*k] = d.clone();
        }
        Bytes::from(v.to_string())
    }

    /// Classifies an error pingora raised while proxying for `route` to `upstream_url`.
    pub fn from_proxy_error(e: &Error, route: &str, upstream_url: &str) -> ApiError {
        use ErrorType::*;
        // The innermost cause says what went wrong (refused, certificate verify failed...).
        let cause = match &e.cause {
            Some(c) => c.to_string(),
            None => e.etype().as_str().to_string(),
        };
        let up = |status, code, what: &str| {
            ApiError::new(
                status,
                "upstream_error",
                code,
                format!("route `{route}`: {what} upstream {upstream_url}: {cause}"),
            )
        };
        match e.etype() {
            ConnectTimedout => up(504, "upstream_connect_timeout", "timed out connecting to"),
            ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
            | ConnectProxyFailure => up(502, "upstream_connect_failed", "could not connect to"),
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | TLSWantX509Lookup
            | HandshakeError => up(502, "upstream_tls_failed", "TLS handshake failed with"),
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                up(504, "upstream_timeout", "timed out waiting for")
            }
            HTTPStatus(code) => ApiError::new(
                *code,
                if *code >= 500 {
                    "internal_error"
                } else {
                    "invalid_request_error"
                },
                "gateway_error",
                format!("route `{route}`: {cause}"),
            ),
            // Upstream timeouts were matched above; reading the agent's body ourselves (inspected
            // routes) leaves the source unset.
            ReadTimedout => ApiError::new(
                408,
                "invalid_request_error",
                "client_timeout",
                format!("route `{route}`: the agent sent the request too slowly: {cause}"),
            ),
            ReadError | WriteError | ConnectionClosed
                if e.esource() == &ErrorSource::Downstream =>
            {
                ApiError::new(
                    499,
                    "client_error",
                    "client_disconnected",
                    format!("route `{route}`: the agent closed the connection: {cause}"),
                )
            }
            _ => match e.esource() {
                // The cause may quote the upstream's bytes (a malformed head), where an echoed
                // key can hide: only the kind of error is named.
                ErrorSource::Upstream => ApiError::new(
                    502,
                    "upstream_error",
                    "upstream_protocol_error",
                    format!(
                        "route `{route}`: bad response from upstream {upstream_url}: {}",
                        e.etype().as_str()
                    ),
                ),
                ErrorSource::Downstream => ApiError::new(
                    400,
                    "invalid_request_error",
                    "bad_request",
                    format!("the request could not be read: {cause}"),
                ),
                _ => ApiError::new(
                    500,
                    "internal_error",
                    "internal_error",
                    format!("route `{route}`: internal error: {cause}"),
                ),
            },
        }
    }
}

/// Writes `err` to the agent as a whole response (JSON, with the request id and, for a 401,
/// the challenge).
pub async fn write_api_error(session: &mut Session, request_id: &str, err: &ApiError) {
    let body = err.body();
    let Ok(mut resp) = ResponseHeader::build(err.status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if let Ok(v) = per_request_value(request_id) {
        let _ = resp.insert_header(X_REQUEST_ID, v);
    }
    if let Some(c) = &err.challenge {
        let _ = resp.insert_header(header::WWW_AUTHENTICATE, c.as_str());
    }
    for (k, v) in &err.headers {
        let _ = resp.insert_header(k.clone(), v.as_str());
    }
    if let Err(e) = session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
    {
        log::debug!("could not send error response to the agent: {e}");
    }
}

/// The answer of ticket mode: 202 with the approval to wait for, and when to try again.
pub async fn write_ticket(session: &mut Session, request_id: &str, a: &crate::approval::Approval) {
    let retry = (a.expires_ms.saturating_sub(crate::approval::now_ms()) / 1000).clamp(1, 10);
    let body = serde_json::json!({
        "approval": {
            "id": a.id, "state": a.state, "rule": a.rule,
            "approvals": a.decisions.len(), "min_approvals": a.min_approvals,
            "expires_at_ms": a.expires_ms,
        },
        "message": format!(
            "rule `{}` needs an approval; send the same request again with `{}: {}` once it is approved",
            a.rule, crate::proxy::approval_gate::APPROVAL_HEADER, a.id
        ),
    })
    .to_string();
    let Ok(mut resp) = ResponseHeader::build(202, Some(6)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if let Ok(v) = per_request_value(request_id) {
        let _ = resp.insert_header(X_REQUEST_ID, v);
    }
    let _ = resp.insert_header(header::RETRY_AFTER, retry.to_string());
    let _ = resp.insert_header(crate::proxy::approval_gate::APPROVAL_HEADER, a.id.as_str());
    if let Err(e) = session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from(body))
        .await
    {
        log::debug!("could not send the ticket to the agent: {e}");
    }
}

/// 413 for a body over `server.max_body`.
pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        413,
        "invalid_request_error",
        "body_too_large",
        format!("the request body is larger than server.max_body ({max} bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::new(
            404,
            "invalid_request_error",
            "route_not_found",
            "no route for /x",
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "no route for /x");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "route_not_found");
    }

    #[test]
    fn classifies_proxy_errors() {
        let table: &[(ErrorType, ErrorSource, u16, &str)] = &[
            (
                ErrorType::ConnectRefused,
                ErrorSource::Upstream,
                502,
                "upstream_connect_failed",
            ),
            (
                ErrorType::ConnectTimedout,
                ErrorSource::Upstream,
                504,
                "upstream_connect_timeout",
            ),
            (
                ErrorType::InvalidCert,
                ErrorSource::Upstream,
                502,
                "upstream_tls_failed",
            ),
            (
                ErrorType::TLSHandshakeFailure,
                ErrorSource::Upstream,
                502,
                "upstream_tls_failed",
            ),
            (
                ErrorType::ReadTimedout,
                ErrorSource::Upstream,
                504,
                "upstream_timeout",
            ),
            (
                ErrorType::H1Error,
                ErrorSource::Upstream,
                502,
                "upstream_protocol_error",
            ),
            (
                ErrorType::InternalError,
                ErrorSource::Internal,
                500,
                "internal_error",
            ),
        ];
        for (etype, source, status, code) in table {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            let api = ApiError::from_proxy_error(&e, "r", "https://up.example");
            assert_eq!((api.status, api.code), (*status, *code), "{etype:?}");
            assert!(api.message.contains("route `r`"));
        }
    }
}
