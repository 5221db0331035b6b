//! A record's on-disk shape: one JSON object per exchange, built from these structs (most
//! fields borrowed from the draft, every value already masked by the writer) and written by
//! hand through `json`, so no JSON tree is made per record. The field order and names are what
//! readers (`sessions`, `replay`, `audit verify`, the admin API) parse; the writer's test pins
//! them down.

use super::json::{self, Object};
use crate::identity::Identity;
use std::borrow::Cow;

/// One stored exchange, as written (then sealed with its `hash`). Readers parse it as JSON.
pub(super) struct Record<'a> {
    pub(super) kind: &'static str,
    pub(super) id: &'a str,
    pub(super) ts: &'a str,
    pub(super) conversation: &'a str,
    pub(super) identity: Option<&'a Identity>,
    pub(super) route: Option<&'a str>,
    pub(super) recording: &'static str,
    pub(super) method: &'a str,
    pub(super) path: Cow<'a, str>,
    pub(super) request: Request<'a>,
    pub(super) response: Response<'a>,
    pub(super) decisions: Decisions<'a>,
    /// Written only when the exchange has one (records of other exchanges are unchanged).
    pub(super) usage: Option<&'a serde_json::Value>,
    pub(super) tls: TlsLegs<'a>,
    pub(super) duration_ms: f64,
    pub(super) upstream_ttfb_ms: Option<f64>,
    pub(super) seq: u64,
    pub(super) prev: String,
}

/// A masked body: its text (as a JSON string), or `{"binary_bytes": N}` when it is not text.
pub(super) enum Body<'a> {
    Text(Cow<'a, str>),
    Binary(usize),
}

/// Header fields (masked), one per name.
pub(super) struct HeaderFields<'a>(pub(super) Vec<(&'a str, Cow<'a, str>)>);

pub(super) struct Request<'a> {
    pub(super) headers: HeaderFields<'a>,
    pub(super) body: Option<Body<'a>>,
    pub(super) bytes: u64,
    pub(super) truncated: bool,
}

pub(super) struct Response<'a> {
    pub(super) status: u16,
    pub(super) headers: HeaderFields<'a>,
    pub(super) body: Option<Body<'a>>,
    pub(super) events: Option<Vec<Event<'a>>>,
    pub(super) bytes: u64,
    pub(super) truncated: bool,
}

pub(super) struct Event<'a> {
    pub(super) t_ms: f64,
    pub(super) data: Body<'a>,
}

pub(super) struct Decisions<'a> {
    pub(super) masked: Option<&'a serde_json::Value>,
    pub(super) guardrail: Option<&'a str>,
    pub(super) approval: Option<&'a serde_json::Value>,
    pub(super) error: Option<&'a str>,
}

pub(super) struct TlsLegs<'a> {
    pub(super) downstream: Option<Tls<'a>>,
    pub(super) upstream: Option<Tls<'a>>,
}

pub(super) struct Tls<'a> {
    pub(super) version: &'a str,
    pub(super) cipher: &'a str,
}

impl Record<'_> {
    /// The record as one JSON object (no newline).
    pub(super) fn write_json(&self, o: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut rec = Object::open(o);
        rec.str("kind", self.kind);
        rec.str("id", self.id);
        rec.str("ts", self.ts);
        rec.str("conversation", self.conversation);
        rec.value("identity", &self.identity)?;
        rec.opt_str("route", self.route);
        rec.str("recording", self.recording);
        rec.str("method", self.method);
        rec.str("path", &self.path);

        let q = &self.request;
        let mut req = Object::open(rec.key("request"));
        q.headers.write_json(req.key("headers"));
        write_body(req.key("body"), q.body.as_ref())?;
        req.value("bytes", &q.bytes)?;
        req.value("truncated", &q.truncated)?;
        req.close();

        let r = &self.response;
        let mut resp = Object::open(rec.key("response"));
        resp.value("status", &r.status)?;
        r.headers.write_json(resp.key("headers"));
        write_body(resp.key("body"), r.body.as_ref())?;
        let out = resp.key("events");
        match &r.events {
            None => out.extend_from_slice(b"null"),
            Some(events) => {
                out.push(b'[');
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let mut ev = Object::open(out);
                    ev.value("t_ms", &e.t_ms)?;
                    write_body(ev.key("data"), Some(&e.data))?;
                    ev.close();
                }
                out.push(b']');
            }
        }
        resp.value("bytes", &r.bytes)?;
        resp.value("truncated", &r.truncated)?;
        resp.close();

        let d = &self.decisions;
        let mut dec = Object::open(rec.key("decisions"));
        dec.value("masked", &d.masked)?;
        dec.opt_str("guardrail", d.guardrail);
        dec.value("approval", &d.approval)?;
        dec.opt_str("error", d.error);
        dec.close();
        if let Some(u) = self.usage {
            rec.value("usage", u)?;
        }

        let mut tls = Object::open(rec.key("tls"));
        for (name, leg) in [
            ("downstream", &self.tls.downstream),
            ("upstream", &self.tls.upstream),
        ] {
            let out = tls.key(name);
            match leg {
                None => out.extend_from_slice(b"null"),
                Some(t) => {
                    let mut l = Object::open(out);
                    l.str("version", t.version);
                    l.str("cipher", t.cipher);
                    l.close();
                }
            }
        }
        tls.close();

        rec.value("duration_ms", &self.duration_ms)?;
        rec.value("upstream_ttfb_ms", &self.upstream_ttfb_ms)?;
        rec.value("seq", &self.seq)?;
        rec.str("prev", &self.prev);
        rec.close();
        Ok(())
    }
}

fn write_body(o: &mut Vec<u8>, b: Option<&Body<'_>>) -> serde_json::Result<()> {
    match b {
        None => o.extend_from_slice(b"null"),
        Some(Body::Text(t)) => json::push_str(o, t),
        Some(Body::Binary(n)) => {
            let mut bin = Object::open(o);
            bin.value("binary_bytes", n)?;
            bin.close();
        }
    }
    Ok(())
}

impl HeaderFields<'_> {
    fn write_json(&self, o: &mut Vec<u8>) {
        let mut fields = Object::open(o);
        for (k, v) in &self.0 {
            fields.str(k, v);
        }
        fields.close();
    }
}
