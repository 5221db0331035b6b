//! JSON-RPC 2.0 as MCP uses it: a body is one message or a batch (an array); a message is a
//! request (`method` and `id`), a notification (`method`, no `id`) or a response (`result` or
//! `error`, with the request's `id`). What a request acts on is read from its `params`: the tool
//! of `tools/call`, the URI of `resources/read`, the prompt of `prompts/get`.

use serde_json::Value;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
/// Server-defined range (-32000..-32099): the gateway refused the request.
pub const REFUSED: i64 = -32001;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

/// What kind of message `m` is.
pub fn kind(m: &Value) -> Kind {
    let Some(o) = m.as_object() else {
        return Kind::Invalid;
    };
    match (o.get("method"), o.get("id")) {
        (Some(Value::String(_)), Some(id)) if valid_id(id) => Kind::Request,
        (Some(Value::String(_)), None) => Kind::Notification,
        (Some(_), _) => Kind::Invalid,
        (None, Some(id))
            if valid_id(id) && (o.contains_key("result") || o.contains_key("error")) =>
        {
            Kind::Response
        }
        _ => Kind::Invalid,
    }
}

fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
}

/// A body's messages, and whether they came as a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub messages: Vec<Value>,
    pub batch: bool,
}

impl Body {
    /// The body as JSON text again (a batch stays an array).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.batch {
            serde_json::to_vec(&self.messages)
        } else {
            serde_json::to_vec(&self.messages[0])
        }
        .unwrap_or_default()
    }
}

/// Parses a POST body: one message or a non-empty batch of them.
pub fn parse(body: &[u8]) -> Result<Body, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    match v {
        Value::Array(a) if a.is_empty() => Err("an empty batch".into()),
        Value::Array(a) => Ok(Body {
            messages: a,
            batch: true,
        }),
        Value::Object(_) => Ok(Body {
            messages: vec![v],
            batch: false,
        }),
        _ => Err("a JSON-RPC message is an object (or a batch of them)".into()),
    }
}

pub fn method(m: &Value) -> Option<&str> {
    m.get("method").and_then(Value::as_str)
}

pub fn id(m: &Value) -> Option<&Value> {
    m.get("id")
}

/// What a request acts on, for access decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Tool(&'a str),
    Resource(&'a str),
    Prompt(&'a str),
    /// A method that names no tool, resource or prompt (`initialize`, `tools/list`, `ping`...).
    Other,
}

/// The tool, resource or prompt a request names; an error when a method that must name one
/// does not (the gateway cannot tell what would run).
pub fn target(m: &Value) -> Result<Target<'_>, String> {
    let Some(method) = method(m) else {
        return Ok(Target::Other);
    };
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return Ok(Target::Other),
    };
    match m.pointer(&format!("/params/{field}")) {
        Some(Value::String(s)) => Ok(match method {
            "tools/call" => Target::Tool(s),
            "prompts/get" => Target::Prompt(s),
            _ => Target::Resource(s),
        }),
        _ => Err(format!("`{method}` needs a string `params.{field}`")),
    }
}

/// A JSON-RPC error response to the request with `id`.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = serde_json::json!({ "code": code, "message": message });
    if let Some(d) = data {
        e["data"] = d;
    }
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": e })
}
