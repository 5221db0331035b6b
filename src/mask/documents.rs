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
//! - a document of its kind and type carries `finish_reason`/`stop_reason`/`done` on its path
//!   (the text ends there: in that chunk if it has the leaf);
//! - a document of another kind or type says a text ended (`.done`, `content_block_stop`,
//!   `message_stop`, `response.completed`, an error), or one is not JSON (`[DONE]`), or the
//!   stream ends.
//!
//! An empty chunk, a chunk without the path or an unknown event in between ends nothing:
//! clients skip those and go on joining.
//!
//! Unless it ended in its own chunk, the held text goes out in a copy of the channel's last
//! document, just before the one that ended it: its path with the identifiers and index numbers
//! along it (`skeleton`), the leaf set to the held text. Past `MAX_CHANNELS` open channels or
//! `MAX_LEAVES` strings in one document the stream cannot be masked safely: `refused` says why
//! and the caller ends the stream.
//!
//! A stream whose documents are each a whole message (`whole_documents`: MCP's JSON-RPC
//! messages, one per SSE event) has no channels: every document is masked whole, nothing held.
//!
//! Identifier-like leaves (`id`, `model`, `type`, `role`, `name`, `finish_reason`...) are not
//! text a client joins up: each value is masked whole, nothing held, so they are never cut. Object
//! keys are masked whole too.

use super::injected::SecretSet;
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

/// Numbers a copy carrying held text keeps beside the path (which element, which part).
const INDEX: &[&str] = &["index", "output_index", "content_index", "summary_index"];

/// Channels open at once. A document with more streamed leaves than this (a hostile upstream's
/// thousands of strings) has the rest masked value by value, nothing held for them: memory and
/// time stay bounded.
pub const MAX_CHANNELS: usize = 256;

/// A document with more string leaves than this is masked value by value (each leaf's path is
/// looked up in it, which a hostile document could make quadratic).
pub const MAX_LEAVES: usize = 4096;

/// Keys whose non-null value ends the text of the object that holds them.
const FINISH: &[&str] = &["finish_reason", "stop_reason", "finishReason", "done"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    /// An array element by its `index` field.
    Elem(u64),
    /// An array element (without an `index`) by its position.
    Pos(usize),
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
    /// (MCP routes say their JSON-RPC messages are whole: `Documents::whole_documents`; a field
    /// in the document never decides it, an upstream could add one.)
    fn streams(&self) -> bool {
        let delta = |s: &str| s.to_ascii_lowercase().contains("delta");
        let kind = self.kind.is_empty() || self.kind == "message" || delta(&self.kind);
        kind && self.ty.as_deref().is_none_or(delta)
    }

    /// A document of this family says some text has ended (`response.output_text.done`,
    /// `content_block_stop`, `message_stop`, `response.completed`, errors).
    fn ends_texts(&self) -> bool {
        let says = |s: &str| {
            let s = s.to_ascii_lowercase();
            ["done", "stop", "complete", "end", "finish", "error", "fail"]
                .iter()
                .any(|w| s.contains(w))
        };
        says(&self.kind) || self.ty.as_deref().is_some_and(says)
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
    /// Released text that could still be the start of one of the route's own credentials.
    scrub_held: String,
    /// The skeleton of the channel's last document (`skeleton`), to carry held text when it is
    /// flushed.
    template: Value,
}

/// The segment naming element `i` of an array: its `index` field, else its position.
fn seg_of(x: &Value, i: usize) -> Seg {
    match x.get("index").and_then(Value::as_u64) {
        Some(n) => Seg::Elem(n),
        None => Seg::Pos(i),
    }
}

/// The element of `a` that `seg` names, and its position.
fn element(a: &[Value], seg: &Seg) -> Option<usize> {
    match seg {
        Seg::Elem(n) => {
            let named = |x: &Value| x.get("index").and_then(Value::as_u64) == Some(*n);
            // Usually element n is index n.
            match a.get(*n as usize) {
                Some(x) if named(x) => Some(*n as usize),
                _ => a.iter().position(named),
            }
        }
        Seg::Pos(i) => (*i < a.len()).then_some(*i),
        Seg::Key(_) => None,
    }
}

/// The child of `cur` that `seg` names.
fn child<'a>(cur: &'a Value, seg: &Seg) -> Option<&'a Value> {
    match (seg, cur) {
        (Seg::Key(k), Value::Object(o)) => o.get(k),
        (seg, Value::Array(a)) => element(a, seg).map(|i| &a[i]),
        _ => None,
    }
}

/// Whether `v` has a string at `path`.
fn has_leaf(v: &Value, path: &[Seg]) -> bool {
    path.iter().try_fold(v, child).is_some_and(Value::is_string)
}

fn leaf_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k)?,
            (seg, Value::Array(a)) => {
                let i = element(a, seg)?;
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
        FINISH.iter().any(|k| {
            o.get(*k)
                .is_some_and(|x| !x.is_null() && *x != Value::Bool(false))
        })
    };
    for seg in path {
        if let Value::Object(o) = cur {
            if finished(o) {
                return true;
            }
        }
        match child(cur, seg) {
            Some(x) => cur = x,
            None => return false,
        }
    }
    false
}

/// What a copy carrying a channel's held text is made of: the objects and array elements on
/// the path, each with only its identifiers and index numbers, and the leaf emptied. Small
/// whatever the document was (a copy per channel must not multiply a large event).
fn skeleton(v: &Value, path: &[Seg]) -> Value {
    let Some((seg, rest)) = path.split_first() else {
        return Value::String(String::new());
    };
    match (seg, v) {
        (Seg::Key(k), Value::Object(o)) => {
            let mut m = Map::new();
            for key in WHOLE.iter().chain(INDEX) {
                if let Some(x) = o.get(*key) {
                    if x.is_string() || x.is_u64() {
                        m.insert(key.to_string(), x.clone());
                    }
                }
            }
            if let Some(x) = o.get(k) {
                m.insert(k.clone(), skeleton(x, rest));
            }
            Value::Object(m)
        }
        (seg, Value::Array(a)) => match element(a, seg) {
            // Alone here; `merge_at` puts a positional element back at its place.
            Some(i) => Value::Array(vec![skeleton(&a[i], rest)]),
            None => Value::Array(vec![]),
        },
        _ => Value::Null,
    }
}

/// Puts `sk` (a channel's skeleton, arrays holding only the path's element) into `dst` along
/// `path`, merging with what other channels put there: one copy carries the held text of every
/// channel it ends, and a positional element sits at its position after empty ones.
fn merge_at(dst: &mut Value, sk: &Value, path: &[Seg]) {
    let Some((seg, rest)) = path.split_first() else {
        *dst = sk.clone();
        return;
    };
    match (seg, sk) {
        (Seg::Key(k), Value::Object(o)) => {
            if !dst.is_object() {
                *dst = Value::Object(Map::new());
            }
            let Value::Object(d) = dst else { return };
            for (key, x) in o {
                if key != k {
                    d.entry(key.clone()).or_insert_with(|| x.clone());
                }
            }
            if let Some(child) = o.get(k) {
                merge_at(d.entry(k.clone()).or_insert(Value::Null), child, rest);
            }
        }
        (_, Value::Array(a)) => {
            let Some(el) = a.first() else { return };
            if !dst.is_array() {
                *dst = Value::Array(vec![]);
            }
            let Value::Array(d) = dst else { return };
            let slot = match seg {
                Seg::Pos(i) => {
                    while d.len() <= *i {
                        d.push(empty_like(el));
                    }
                    *i
                }
                _ => match element(d, seg) {
                    Some(i) => i,
                    None => {
                        d.push(Value::Null);
                        d.len() - 1
                    }
                },
            };
            merge_at(&mut d[slot], el, rest);
        }
        _ => {}
    }
}

/// An empty value of the same kind (a placeholder element in a copy).
fn empty_like(v: &Value) -> Value {
    match v {
        Value::Object(_) => Value::Object(Map::new()),
        Value::Array(_) => Value::Array(vec![]),
        Value::String(_) => Value::String(String::new()),
        _ => Value::Null,
    }
}

/// The streamed (not whole-valued) string leaves of `v`, with their paths.
fn stream_leaves(
    v: &Value,
    path: &mut Vec<Seg>,
    at: &mut Vec<Seg>,
    out: &mut Vec<(Vec<Seg>, Vec<Seg>)>,
) {
    match v {
        Value::String(_) => {
            let whole = matches!(path.last(), Some(Seg::Key(k)) if WHOLE.contains(&k.as_str()));
            if !whole {
                out.push((path.clone(), at.clone()));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(seg_of(x, i));
                at.push(Seg::Pos(i));
                stream_leaves(x, path, at, out);
                at.pop();
                path.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                path.push(Seg::Key(k.clone()));
                at.push(Seg::Key(k.clone()));
                stream_leaves(x, path, at, out);
                at.pop();
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
    /// The route's injected credentials: starred in every leaf, also across documents.
    secrets: Option<Arc<SecretSet>>,
    open: Vec<Channel>,
    /// Every document is a whole message: masked whole, never joined to the next.
    whole: bool,
    pub tally: Tally,
    /// Why the stream cannot be masked safely (a bound was passed): the caller ends it.
    pub refused: Option<String>,
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
            secrets: None,
            open: Vec::new(),
            whole: false,
            tally: Tally::default(),
            refused: None,
        }
    }

    /// Also stars the route's own credentials in every leaf, split across documents too (the
    /// byte scrubber after masking cannot see a key whose halves JSON framing separates).
    pub fn with_secrets(mut self, secrets: Option<Arc<SecretSet>>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Text released by a channel's masker, through the credential scrubber: whole credentials
    /// starred; a tail that could begin one held until the channel's next text or its end.
    fn scrub(&self, held: &mut String, released: String, end: bool) -> String {
        let Some(set) = &self.secrets else {
            return released;
        };
        let mut buf = std::mem::take(held).into_bytes();
        buf.extend_from_slice(released.as_bytes());
        set.mask_in_place(&mut buf);
        let keep = if end { 0 } else { set.partial_suffix_len(&buf) };
        let mut cut = buf.len() - keep;
        while cut > 0 && cut < buf.len() && (buf[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        let rest = buf.split_off(cut);
        *held = String::from_utf8(rest).unwrap_or_default();
        String::from_utf8(buf).unwrap_or_default()
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
        let mut ending = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            let c = &self.open[i];
            // Clients skip an empty or unknown chunk and go on joining: only a finish on the
            // path, or a document that says a text ended (`.done`, `content_block_stop`), ends
            // one.
            let ends = if c.family.same_kind(&family) {
                // (With the leaf, it ends in this chunk, below.)
                finished_on_path(&v, &c.path) && !has_leaf(&v, &c.path)
            } else {
                family.ends_texts()
            };
            if ends {
                ending.push(self.open.remove(i));
            } else {
                i += 1;
            }
        }
        self.flush(ending, &mut out);
        if !family.streams() {
            self.mask_whole(&mut v, true);
            out.push(Out::Arrived(v));
            return out;
        }
        let mut leaves = Vec::new();
        stream_leaves(&v, &mut Vec::new(), &mut Vec::new(), &mut leaves);
        if leaves.len() > MAX_LEAVES {
            self.refused = Some(format!(
                "a document with more than {MAX_LEAVES} strings cannot be masked as a stream"
            ));
            self.mask_whole(&mut v, true);
            out.push(Out::Arrived(v));
            return out;
        }
        let mut ended = Vec::new();
        let mut touched = Vec::new();
        for (path, at) in &leaves {
            let Some(Value::String(text)) = leaf_mut(&mut v, at).map(|x| x.take()) else {
                continue;
            };
            let finished = finished_on_path(&v, at);
            let idx = match self
                .open
                .iter()
                .position(|c| c.family == family && c.path == *path)
            {
                Some(i) => i,
                None if self.open.len() >= MAX_CHANNELS => {
                    // Fail closed: the stream ends (the caller sends an error in its place).
                    self.refused = Some(format!(
                        "more than {MAX_CHANNELS} texts are open at once; the stream cannot be masked"
                    ));
                    let masked = self.mask_text(&text);
                    if let Some(slot) = leaf_mut(&mut v, at) {
                        *slot = Value::String(masked);
                    }
                    continue;
                }
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
                        scrub_held: String::new(),
                        template: Value::Null,
                    });
                    self.open.len() - 1
                }
            };
            touched.push(idx);
            let c = &mut self.open[idx];
            let mut released = c.masker.push(&text);
            if finished {
                released.push_str(&c.masker.finish());
                ended.push(idx);
            }
            let mut held = std::mem::take(&mut self.open[idx].scrub_held);
            let released = self.scrub(&mut held, released, finished);
            self.open[idx].scrub_held = held;
            if let Some(slot) = leaf_mut(&mut v, at) {
                *slot = Value::String(released);
            }
        }
        self.mask_whole(&mut v, false);
        for idx in touched {
            let c = &mut self.open[idx];
            c.template = skeleton(&v, &c.path);
        }
        ended.sort_unstable();
        ended.dedup();
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
        let all = std::mem::take(&mut self.open);
        self.flush(all, &mut out);
        out
    }

    /// Ends `channels`: what each still holds, masked, in one copy per family (a copy of the
    /// skeletons of their last documents, merged), in the order the families first appear.
    fn flush(&mut self, channels: Vec<Channel>, out: &mut Vec<Out>) {
        let mut copies: Vec<(Family, Value)> = Vec::new();
        for mut c in channels {
            let rest = c.masker.finish();
            let rest = self.scrub(&mut c.scrub_held, rest, true);
            self.tally.merge(std::mem::take(&mut c.masker.tally));
            if rest.is_empty() {
                continue;
            }
            let at = match copies.iter().position(|(f, _)| *f == c.family) {
                Some(i) => i,
                None => {
                    copies.push((c.family.clone(), Value::Null));
                    copies.len() - 1
                }
            };
            let doc = &mut copies[at].1;
            merge_at(doc, &c.template, &c.path);
            if let Some(slot) = leaf_mut(doc, &c.path) {
                *slot = Value::String(rest);
            }
        }
        for (family, doc) in copies {
            out.push(Out::Flushed(family.kind, doc));
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
        self.scrub(&mut String::new(), m, true)
    }
}
