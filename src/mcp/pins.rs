//! Pinned tool definitions (rug-pull protection): the SHA-256 of each tool's name, description
//! and input schema, per route, as first seen (or accepted since). A definition that differs is
//! a change: the tool is hidden and its calls refused until someone accepts it. Pure data: the
//! proxy keeps a `Pins` in its state file and decides with it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The fields of a definition that are pinned.
const FIELDS: [&str; 3] = ["name", "description", "inputSchema"];

/// SHA-256 (hex) of one field's canonical JSON (object keys sorted; absent: `null`).
fn field_sha256(tool: &Value, field: &str) -> String {
    let v = tool.get(field).unwrap_or(&Value::Null);
    // serde_json's maps are sorted (no preserve_order): the text is canonical.
    crate::util::hex::hex(&boring::sha::sha256(v.to_string().as_bytes()))
}

/// The pinned form of a tool definition: one hash over the fields, and one per field (to say
/// what changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub sha256: String,
    pub fields: BTreeMap<String, String>,
}

impl Definition {
    pub fn of(tool: &Value) -> Definition {
        let fields: BTreeMap<String, String> = FIELDS
            .iter()
            .map(|f| (f.to_string(), field_sha256(tool, f)))
            .collect();
        let all: String = fields.values().cloned().collect::<Vec<_>>().join(":");
        Definition {
            sha256: crate::util::hex::hex(&boring::sha::sha256(all.as_bytes())),
            fields,
        }
    }

    /// The fields whose hash differs from `other`'s.
    pub fn changed_fields(&self, other: &Definition) -> Vec<String> {
        FIELDS
            .iter()
            .filter(|f| self.fields.get(**f) != other.fields.get(**f))
            .map(|f| f.to_string())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub accepted: Definition,
    /// A definition the server offers now that differs from the accepted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Definition>,
}

/// What a listed definition is, compared with its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First sight: pinned now.
    Pinned,
    Same,
    /// Differs from the accepted definition; `new` the first time this change is seen; the
    /// fields that differ.
    Changed {
        new: bool,
        fields: Vec<String>,
    },
}

/// Every pin, by route and tool name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub routes: BTreeMap<String, BTreeMap<String, Pin>>,
}

/// Tools pinned per route at most (a server listing more is not pinned past it, and those
/// tools are hidden).
pub const MAX_PER_ROUTE: usize = 1024;

impl Pins {
    /// Compares a listed tool with its pin (pinning it at first sight).
    pub fn observe(&mut self, route: &str, tool: &Value) -> Seen {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Seen::Changed {
                new: false,
                fields: vec!["name".into()],
            };
        };
        let def = Definition::of(tool);
        let pins = self.routes.entry(route.to_string()).or_default();
        let full = pins.len() >= MAX_PER_ROUTE;
        match pins.get_mut(name) {
            None if full => Seen::Changed {
                new: false,
                fields: Vec::new(),
            },
            None => {
                pins.insert(
                    name.to_string(),
                    Pin {
                        accepted: def,
                        changed: None,
                    },
                );
                Seen::Pinned
            }
            Some(p) if p.accepted == def => Seen::Same,
            Some(p) => {
                let fields = def.changed_fields(&p.accepted);
                let new = p.changed.as_ref() != Some(&def);
                p.changed = Some(def);
                Seen::Changed { new, fields }
            }
        }
    }

    /// Whether calls of `tool` on `route` are refused: its definition changed and was not
    /// accepted.
    pub fn refused(&self, route: &str, tool: &str) -> bool {
        self.routes
            .get(route)
            .and_then(|p| p.get(tool))
            .is_some_and(|p| p.changed.is_some())
    }

    /// Accepts the changed definition of `tool` (it becomes the pin).
    pub fn accept(&mut self, route: &str, tool: &str) -> Result<Definition, String> {
        let p = self
            .routes
            .get_mut(route)
            .and_then(|p| p.get_mut(tool))
            .ok_or_else(|| format!("route `{route}` has no pinned tool `{tool}`"))?;
        let d = p
            .changed
            .take()
            .ok_or_else(|| format!("tool `{tool}` of route `{route}` has no change to accept"))?;
        p.accepted = d.clone();
        Ok(d)
    }
}
