//! Masking a stream of JSON documents (SSE events, NDJSON lines) whatever their schema: every
//! string leaf of every document is masked, and a value split across documents is caught.
//!
//! Each string leaf belongs to a channel: the document's kind (SSE `event:` name) and `type`,
//! its top-level `*index` numbers, and the leaf's path, where an array element is named by its
//! own `index` field when it has one (Chat Completions choices and tool calls, Gemini
//! candidates) and by its position otherwise. A channel's successive values are one text
//! (`StreamMasker`): what could still become a value is held back and sent with the channel's
//! next value, so no prefix of a value leaves before the masker has decided.
//!
//! A channel ends, and what it holds is sent masked, when:
//! - a document on its path carries `finish_reason`/`stop_reason` (the text ends there, in it);
//! - a document of the same kind, type and indices no longer has the path (the finish chunk);
//! - a document of another kind or type arrives (`.done`, `content_block_stop`), or one that is
//!   not JSON (`[DONE]`), or the stream ends.
//!
//! In the last three cases the held text goes out in a copy of the channel's last document,
//! just before the one that ended it, with the channel's leaf set to it and every other
//! streamed leaf emptied.
//!
//! A stream whose documents are each a whole message (`whole_documents`: MCP's JSON-RPC
//! messages, one per SSE event) has no channels: every document is masked whole, nothing held.
//!
//! Identifier-like leaves (`id`, `model`, `type`, `role`, `name`, `finish_reason`...) are not
//! text a client joins up: each value is masked whole, nothing held, so they are never cut. Object
//! keys are masked whole too.

use super::stream::StreamMasker;
use super::{Engine, Rules, Tally, Vault};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Leaves masked value by value (never joined across documents, never cut).
const WHOLE: &[&str] = &[
    "id",
    "object",
    "model",
    "system_fingerprint",
    "service_tier",
    "type",
    "role",
    "name",
    "status",
    "finish_reason",
    "stop_reason",
    "finishReason",
    "item_id",
    "call_id",
    "tool_call_id",
    "response_id",
    "event_id",
    "obfuscation",
    "modelVersion",
    "responseId",
];

/// Keys whose non-null value ends the text of the object that holds them.
const FINISH: &[&str] = &["finish_reason", "stop_reason", "finishReason"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    /// An array element by its `index` field (or position).
    Elem(u64),
}

/// The kind, `type` and top-level indices of a document: its channels share them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    ty: Option<String>,
    indices: Vec<(String, u64)>,
}

impl Family {
    fn of(kind: &str, v: &Value) -> Family {
        let ty = v.get("type").and_then(Value::as_str).map(String::from);
        let mut indices = Vec::new();
        if let Some(o) = v.as_object() {
            for (k, x) in o {
                if k.ends_with("index") {
                    if let Some(n) = x.as_u64() {
                        indices.push((k.clone(), n));
                    }
                }
            }
        }
        Family {
            kind: kind.to_string(),
            ty,
            indices,
        }
    }

    /// Another kind or type: the text of this family's channels has ended.
    fn same_kind(&self, other: &Family) -> bool {
        self.kind == other.kind && self.ty == other.ty
    }

    /// Whether documents of this family carry text in pieces: untyped chunks (Chat
    /// Completions, Gemini, Ollama) and typed deltas (`response.output_text.delta`,
    /// `content_block_delta`, `content-delta`). Other typed documents (`response.completed`,
    /// `message_start`) are whole: each string in them is masked as it stands, nothing held.
    fn streams(&self) -> bool {
        let delta = |s: &str| s.to_ascii_lowercase().contains("delta");
        let kind = self.kind.is_empty() || self.kind == "message" || delta(&self.kind);
        kind && self.ty.as_deref().is_none_or(delta)
    }

    /// Keep-alives end nothing.
    fn keep_alive(&self) -> bool {
        self.kind == "ping" || self.ty.as_deref() == Some("ping")
    }
}

struct Channel {
    family: Family,
    path: Vec<Seg>,
    masker: StreamMasker,
    /// The channel's last document (masked), to carry held text when it is flushed.
    template: Value,
}

/// What walking a channel's path finds in a document.
enum Walk {
    Leaf,
    /// An object on the path lacks the next key: the text has ended.
    Missing,
    /// An array on the path lacks the element: this document is about another element.
    OtherElement,
}

fn elem_name(x: &Value, position: usize) -> u64 {
    x.get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

fn walk(v: &Value, path: &[Seg]) -> Walk {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(o)) => match o.get(k) {
                Some(x) => x,
                None => return Walk::Missing,
            },
            (Seg::Elem(n), Value::Array(a)) => {
                match a.iter().enumerate().find(|(i, x)| elem_name(x, *i) == *n) {
                    Some((_, x)) => x,
                    None => return Walk::OtherElement,
                }
            }
            _ => return Walk::Missing,
        };
    }
    if cur.is_string() {
        Walk::Leaf
    } else {
        Walk::Missing
    }
}

fn leaf_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k)?,
            (Seg::Elem(n), Value::Array(a)) => {
                let i = a
                    .iter()
                    .enumerate()
                    .position(|(i, x)| elem_name(x, i) == *n)?;
                &mut a[i]
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether an object on the path to a leaf says its text is finished.
fn finished_on_path(v: &Value, path: &[Seg]) -> bool {
    let mut cur = v;
    let finished = |o: &Map<String, Value>| {
        FINISH
            .iter()
            .any(|k| o.get(*k).is_some_and(|x| !x.is_null()))
    };
    for seg in path {
        if let Value::Object(o) = cur {
            if finished(o) {
                return true;
            }
        }
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(o)) => match o.get(k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Elem(n), Value::Array(a)) => {
                match a.iter().enumerate().find(|(i, x)| elem_name(x, *i) == *n) {
                    Some((_, x)) => x,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    false
}

/// The streamed (not whole-valued) string leaves of `v`, with their paths.
fn stream_leaves(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::String(_) => {
            let whole = matches!(path.last(), Some(Seg::Key(k)) if WHOLE.contains(&k.as_str()));
            if !whole {
                out.push(path.clone());
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Seg::Elem(elem_name(x, i)));
                stream_leaves(x, path, out);
                path.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                path.push(Seg::Key(k.clone()));
                stream_leaves(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A document to send: one that arrived (masked), or a copy carrying held text (its kind, to
/// frame it like the channel's documents).
#[derive(Debug)]
pub enum Out {
    Arrived(Value),
    Flushed(String, Value),
}

/// The masking state of one stream of documents.
pub struct Documents {
    engine: Arc<Engine>,
    rules: Arc<Rules>,
    vault: Option<Arc<Vault>>,
    restore: bool,
    open: Vec<Channel>,
    /// Every document is a whole message: masked whole, never joined to the next.
    whole: bool,
    pub tally: Tally,
}

impl Documents {
    pub fn new(
        engine: Arc<Engine>,
        rules: Arc<Rules>,
        vault: Option<Arc<Vault>>,
        restore: bool,
    ) -> Self {
        Documents {
            engine,
            rules,
            vault,
            restore,
            open: Vec::new(),
            whole: false,
            tally: Tally::default(),
        }
    }

    /// Each document is a whole message (JSON-RPC): masked whole, no channel across documents.
    pub fn whole_documents(mut self) -> Self {
        self.whole = true;
        self
    }

    /// Text held back across all channels.
    pub fn held(&self) -> usize {
        self.open.iter().map(|c| c.masker.held()).sum()
    }

    /// Masks one document of `kind`; returns the documents to send, in order (held text of
    /// channels it ended first, then the document itself).
    pub fn document(&mut self, kind: &str, mut v: Value) -> Vec<Out> {
        let family = Family::of(kind, &v);
        let mut out = Vec::new();
        if self.whole || family.keep_alive() {
            self.mask_whole(&mut v, true);
            out.push(Out::Arrived(v));
            return out;
        }
        // Channels this document ends, flushed before it.
        let mut i = 0;
        while i < self.open.len() {
            let c = &self.open[i];
            let ends = if c.family == family {
                matches!(walk(&v, &c.path), Walk::Missing)
            } else {
                !c.family.same_kind(&family)
            };
            if ends {
                let c = self.open.remove(i);
                self.flush(c, &mut out);
            } else {
                i += 1;
            }
        }
        if !family.streams() {
            self.mask_whole(&mut v, true);
            out.push(Out::Arrived(v));
            return out;
        }
        let mut leaves = Vec::new();
        stream_leaves(&v, &mut Vec::new(), &mut leaves);
        let mut ended = Vec::new();
        for path in &leaves {
            let Some(Value::String(text)) = leaf_mut(&mut v, path).map(|x| x.take()) else {
                continue;
            };
            let finished = finished_on_path(&v, path);
            let idx = match self
                .open
                .iter()
                .position(|c| c.family == family && c.path == *path)
            {
                Some(i) => i,
                None => {
                    self.open.push(Channel {
                        family: family.clone(),
                        path: path.clone(),
                        masker: StreamMasker::new(
                            self.engine.clone(),
                            self.rules.clone(),
                            self.vault.clone(),
                            self.restore,
                        ),
                        template: Value::Null,
                    });
                    self.open.len() - 1
                }
            };
            let c = &mut self.open[idx];
            let mut released = c.masker.push(&text);
            if finished {
                released.push_str(&c.masker.finish());
                ended.push(idx);
            }
            if let Some(slot) = leaf_mut(&mut v, path) {
                *slot = Value::String(released);
            }
        }
        self.mask_whole(&mut v, false);
        // The template of each channel: this document with its streamed leaves emptied.
        let mut template = v.clone();
        for path in &leaves {
            if let Some(slot) = leaf_mut(&mut template, path) {
                *slot = Value::String(String::new());
            }
        }
        for c in self.open.iter_mut() {
            if c.family == family && leaves.contains(&c.path) {
                c.template = template.clone();
            }
        }
        ended.sort_unstable();
        for i in ended.into_iter().rev() {
            let mut c = self.open.remove(i);
            self.tally.merge(std::mem::take(&mut c.masker.tally));
        }
        out.push(Out::Arrived(v));
        out
    }

    /// Ends every channel (a document that is not JSON, or the end of the stream): their held
    /// text, in copies of their last documents.
    pub fn finish(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        for c in std::mem::take(&mut self.open) {
            self.flush(c, &mut out);
        }
        out
    }

    fn flush(&mut self, mut c: Channel, out: &mut Vec<Out>) {
        let rest = c.masker.finish();
        self.tally.merge(std::mem::take(&mut c.masker.tally));
        if rest.is_empty() {
            return;
        }
        let mut doc = c.template;
        if let Some(slot) = leaf_mut(&mut doc, &c.path) {
            *slot = Value::String(rest);
            out.push(Out::Flushed(c.family.kind, doc));
        }
    }

    /// Masks every object key of `v` and its whole-valued string leaves (`all`: every string
    /// leaf), value by value.
    fn mask_whole(&mut self, v: &mut Value, all: bool) {
        match v {
            Value::String(s) if all => {
                let m = self.mask_text(s);
                *s = m;
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.mask_whole(x, all)),
            Value::Object(o) => {
                let mut renamed = Vec::new();
                for (k, x) in o.iter_mut() {
                    match x {
                        Value::String(s) if !all && WHOLE.contains(&k.as_str()) => {
                            let m = self.mask_text(s);
                            *s = m;
                        }
                        _ => self.mask_whole(x, all),
                    }
                    let mk = self.mask_text(k);
                    if mk != *k {
                        renamed.push((k.clone(), mk));
                    }
                }
                for (k, mk) in renamed {
                    if let Some(x) = o.remove(&k) {
                        o.insert(mk, x);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn mask_text(&mut self, s: &str) -> String {
        if s.is_empty() {
            return String::new();
        }
        let (m, t) = self
            .engine
            .mask(s, &self.rules, self.vault.as_deref(), self.restore);
        self.tally.merge(t);
        m
    }
}
