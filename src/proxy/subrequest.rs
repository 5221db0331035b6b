//! Requests whose body must be decided on before anything goes upstream (masking, guardrails):
//! the body is read whole in `request_filter` (no upstream connection exists yet), decided on,
//! and the decided body is sent through a Pingora subrequest that runs the same `ProxyHttp`
//! phases (DESIGN.md, "Request flow"). Pingora marks subrequests alpha, so everything that
//! touches them is here.

use super::error::ApiError;
use super::exchange::{Exchange, Role};
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a subrequest tells the main session about itself.
#[derive(Default)]
pub struct SubrequestReport {
    /// It answered with a whole error response of its own, so a proxy error reported after
    /// that does not mean the agent's response was cut short.
    answered_error: AtomicBool,
    /// The error it decided on (e.g. a compressed upstream answer refused), so the main session
    /// answers with that, not a generic one, when the subrequest's own answer never left.
    error: Mutex<Option<ApiError>>,
    /// The exchange, handed back when the subrequest ended before any response: the main
    /// session answers the agent and logs it.
    returned: Mutex<Option<Box<Exchange>>>,
}

impl SubrequestReport {
    pub fn answered_with_error(&self) {
        self.answered_error.store(true, Ordering::SeqCst);
    }

    pub fn set_error(&self, e: ApiError) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e);
        }
    }

    /// Hands the exchange back to the main session (the subrequest failed before a response).
    pub fn give_back(&self, exchange: Box<Exchange>) {
        if let Ok(mut slot) = self.returned.lock() {
            *slot = Some(exchange);
        }
    }

    fn take_error(&self) -> Option<ApiError> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }

    fn take_exchange(&self) -> Option<Box<Exchange>> {
        self.returned.lock().ok().and_then(|mut slot| slot.take())
    }
}

pub enum ReadBody {
    Body(Vec<u8>),
    TooLarge,
}

/// Reads the whole request body from the agent, at most `max` bytes.
pub async fn read_body(session: &mut Session, max: u64) -> Result<ReadBody> {
    let mut body = Vec::new();
    while let Some(chunk) = session.downstream_session.read_request_body().await? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Ok(ReadBody::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ReadBody::Body(body))
}

/// The exchange handed to this session, when it is a subrequest. The subrequest's request
/// header is a copy of the agent's as received: its framing becomes the decided body's before
/// the body is read.
pub fn handoff(session: &mut Session) -> Option<Box<Exchange>> {
    let sub = session.subrequest_ctx.as_mut()?;
    let user = sub.user_ctx_mut()?;
    let exchange = user.downcast_mut::<Option<Box<Exchange>>>()?.take()?;
    let len = exchange.forwarded_body_len()?;
    let req = session.req_header_mut();
    req.remove_header(&http::header::TRANSFER_ENCODING);
    if req
        .insert_header(http::header::CONTENT_LENGTH, len)
        .is_err()
    {
        return None;
    }
    Some(exchange)
}

/// How a forwarded request ended, for the main session.
pub enum Forwarded {
    /// The subrequest answered the agent (a response or its own complete error response).
    Answered,
    /// It failed before any response header: the main session must answer with this error
    /// (`api_error` when the subrequest decided on one), and log `exchange` when it came back
    /// (otherwise the subrequest logged it with its own error).
    Failed {
        error: Box<Error>,
        api_error: Option<ApiError>,
        exchange: Option<Box<Exchange>>,
    },
    /// It failed after the response began (the upstream reset mid-stream): the main session
    /// must not end the response cleanly, so the agent sees a broken response, not a short one.
    Broken(Box<Error>),
}

/// Sends `body` upstream through a subrequest of this session, which takes `exchange` over,
/// and pipes its response back.
pub async fn forward(
    session: &mut Session,
    mut exchange: Box<Exchange>,
    body: Vec<u8>,
) -> Result<Forwarded> {
    // Whatever fails before the subrequest exists hands the exchange straight back.
    let not_started = |error: Box<Error>, exchange: Box<Exchange>| {
        Ok(Forwarded::Failed {
            error,
            api_error: None,
            exchange: Some(exchange),
        })
    };
    if let Err(e) = as_http11(session) {
        return not_started(e, exchange);
    }
    if session.subrequest_spawner.is_none() {
        let e = Error::explain(
            InternalError,
            "subrequests are not enabled for this session",
        );
        return not_started(e, exchange);
    }
    let report = Arc::new(SubrequestReport::default());
    exchange.role = Role::Subrequest {
        body_len: body.len(),
        report: report.clone(),
    };
    let ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(Some(exchange)))
        .build();
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(
            InternalError,
            "subrequests are not enabled for this session",
        );
    };
    let (sub, handle) = spawner.create_subrequest(&session.downstream_session, ctx);
    let input = if body.is_empty() {
        InputBody::NoBody
    } else {
        InputBody::Bytes(vec![Bytes::from(body)])
    };
    match pipe_subrequest(
        session,
        sub,
        handle,
        |t| Ok(Some(t)),
        InputBodyType::Preset(input),
    )
    .await
    {
        Ok(mut state) => {
            if let Some(j) = state.join_handle.take() {
                let _ = j.await;
            }
            // A pipe that closed before any header: the subrequest handed the exchange back.
            match report.take_exchange() {
                Some(exchange) => Ok(Forwarded::Failed {
                    error: Error::explain(
                        ConnectionClosed,
                        "the upstream exchange ended before a response",
                    ),
                    api_error: report.take_error(),
                    exchange: Some(exchange),
                }),
                None => Ok(Forwarded::Answered),
            }
        }
        Err(mut e) => {
            if let Some(j) = e.state.join_handle.take() {
                let _ = j.await;
            }
            // The subrequest has ended (joined above): its report is final. Its own error
            // response counts only if it reached the agent (the header went through the pipe).
            if e.state.header_received && report.answered_error.load(Ordering::SeqCst) {
                Ok(Forwarded::Answered)
            } else if e.state.header_received {
                Ok(Forwarded::Broken(e.error))
            } else {
                Ok(Forwarded::Failed {
                    error: e.error,
                    api_error: report.take_error(),
                    exchange: report.take_exchange(),
                })
            }
        }
    }
}

/// The subrequest parses the request as HTTP/1.1 text: an HTTP/2 request gets a Host, an
/// origin-form target and the HTTP/1.1 version (the agent's own connection stays HTTP/2).
fn as_http11(session: &mut Session) -> Result<()> {
    if session.req_header().version != http::Version::HTTP_2 {
        return Ok(());
    }
    let req = session.req_header_mut();
    if req.headers.get(http::header::HOST).is_none() {
        if let Some(a) = req.uri.authority().map(|a| a.to_string()) {
            req.insert_header(http::header::HOST, a)?;
        }
    }
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri: http::Uri = target
        .parse()
        .or_err(InternalError, "the request target for the subrequest")?;
    req.set_uri(uri);
    req.set_version(http::Version::HTTP_11);
    Ok(())
}
