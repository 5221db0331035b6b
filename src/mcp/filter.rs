//! Messages from the server on their way to the client: list answers (`tools/list`,
//! `resources/list`, `resources/templates/list`, `prompts/list`) keep only what the caller may
//! use, and server-to-client requests the route denies are dropped.

use super::access::{granted, server_request_allowed};
use super::jsonrpc::{self, Kind};
use crate::config::McpRoute;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    ResourceTemplates,
    Prompts,
}

impl ListKind {
    pub fn of(method: &str) -> Option<ListKind> {
        Some(match method {
            "tools/list" => ListKind::Tools,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::ResourceTemplates,
            "prompts/list" => ListKind::Prompts,
            _ => return None,
        })
    }

    /// The result's array and the field of an entry that names it.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools", "name"),
            ListKind::Resources => ("resources", "uri"),
            ListKind::ResourceTemplates => ("resourceTemplates", "uriTemplate"),
            ListKind::Prompts => ("prompts", "name"),
        }
    }
}

/// The list requests of one POST whose answers are filtered, by JSON-RPC id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Awaited {
    lists: Vec<(Value, ListKind)>,
}

impl Awaited {
    /// The list requests among `messages`.
    pub fn of(messages: &[Value]) -> Awaited {
        let lists = messages
            .iter()
            .filter(|m| jsonrpc::kind(m) == Kind::Request)
            .filter_map(|m| {
                let k = ListKind::of(jsonrpc::method(m)?)?;
                Some((jsonrpc::id(m)?.clone(), k))
            })
            .collect();
        Awaited { lists }
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    fn kind_of(&self, id: &Value) -> Option<ListKind> {
        self.lists.iter().find(|(i, _)| i == id).map(|(_, k)| *k)
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Edited in place: serialize it again.
    Changed,
    /// Not delivered: a server request of this method that the route denies.
    Drop(String),
}

/// Filters one message from the server. `tool_ok` decides, beyond the grants, whether a tool
/// definition is shown (definition pinning); it sees every granted tool of a `tools/list`.
pub fn server_message(
    policy: &McpRoute,
    groups: &[String],
    awaited: &Awaited,
    m: &mut Value,
    tool_ok: &mut dyn FnMut(&Value) -> bool,
) -> Verdict {
    match jsonrpc::kind(m) {
        Kind::Request => match jsonrpc::method(m) {
            Some(method) if !server_request_allowed(policy, method) => Verdict::Drop(method.into()),
            _ => Verdict::Keep,
        },
        Kind::Response => {
            let Some(kind) = jsonrpc::id(m).and_then(|id| awaited.kind_of(id)) else {
                return Verdict::Keep;
            };
            let grants = match kind {
                ListKind::Tools => policy.tools.as_deref(),
                ListKind::Resources | ListKind::ResourceTemplates => policy.resources.as_deref(),
                ListKind::Prompts => policy.prompts.as_deref(),
            };
            let (list, key) = kind.fields();
            let Some(entries) = m
                .get_mut("result")
                .and_then(|r| r.get_mut(list))
                .and_then(Value::as_array_mut)
            else {
                return Verdict::Keep;
            };
            let before = entries.len();
            entries.retain(|e| {
                let Some(name) = e.get(key).and_then(Value::as_str) else {
                    // An entry the gateway cannot name is one it cannot allow.
                    return false;
                };
                granted(grants, name, groups) && (kind != ListKind::Tools || tool_ok(e))
            });
            if entries.len() == before {
                Verdict::Keep
            } else {
                Verdict::Changed
            }
        }
        _ => Verdict::Keep,
    }
}
