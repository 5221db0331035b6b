//! Masking a Server-Sent Events stream event by event. Text deltas of the OpenAI Chat
//! Completions API (`choices[i].delta.content`, tool-call `arguments`), the Responses API
//! (`response.output_text.delta`, `response.function_call_arguments.delta`) and Anthropic's
//! Messages API (`content_block_delta` `text` / `partial_json`) go through one `StreamMasker`
//! per channel, so a value split across events is caught and no prefix of it is sent. Held text
//! is sent, masked, in a copy of the channel's last delta event just before the next event that
//! is not a delta (a finish chunk, `.done`, `content_block_stop`, `[DONE]`) or at the end.
//! Every other JSON event has its string values masked whole. Framing stays valid SSE.

use super::stream::StreamMasker;
use super::{json, Engine, Rules, Tally, Vault};
use crate::util::sse::{event_end, parse as parse_event};
use serde_json::Value;
use std::sync::Arc;

/// An event larger than this is refused (the stream ends with an error event).
pub const MAX_EVENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an SSE event is larger than {MAX_EVENT} bytes")]
    EventTooLarge,
}

/// Where a delta's text lives in its event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Channel {
    /// Chat Completions: choice index, and tool-call index (None for content).
    Chat(u64, Option<u64>),
    /// Responses API: event type family, output index, content index.
    Responses(&'static str, u64, u64),
    /// Anthropic: content block index.
    Anthropic(u64),
}

struct Open {
    channel: Channel,
    masker: StreamMasker,
    /// The last delta event of this channel, to carry held text when flushed.
    template: Value,
}

pub struct SseMasker {
    engine: Arc<Engine>,
    rules: Arc<Rules>,
    vault: Option<Arc<Vault>>,
    restore: bool,
    /// Bytes of an incomplete event.
    pending: Vec<u8>,
    open: Vec<Open>,
    pub tally: Tally,
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The channel and text of a delta event, and a setter for the text.
fn delta_of(v: &Value) -> Option<(Channel, String)> {
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        if choices.len() == 1 {
            let c = &choices[0];
            let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
            let delta = c.get("delta")?;
            let i = num(c, "index");
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                if !finished && delta.get("tool_calls").is_none() {
                    return Some((Channel::Chat(i, None), t.to_string()));
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                if calls.len() == 1 && !finished && delta.get("content").is_none_or(Value::is_null)
                {
                    let call = &calls[0];
                    let args = call.get("function")?.get("arguments")?.as_str()?;
                    return Some((Channel::Chat(i, Some(num(call, "index"))), args.to_string()));
                }
            }
        }
        return None;
    }
    match v.get("type").and_then(Value::as_str)? {
        "response.output_text.delta" => Some((
            Channel::Responses("text", num(v, "output_index"), num(v, "content_index")),
            v.get("delta")?.as_str()?.to_string(),
        )),
        "response.function_call_arguments.delta" => Some((
            Channel::Responses("args", num(v, "output_index"), 0),
            v.get("delta")?.as_str()?.to_string(),
        )),
        "content_block_delta" => {
            let d = v.get("delta")?;
            let t = d.get("text").or_else(|| d.get("partial_json"))?.as_str()?;
            Some((Channel::Anthropic(num(v, "index")), t.to_string()))
        }
        _ => None,
    }
}

fn set_delta(v: &mut Value, channel: &Channel, text: String) {
    let slot = match channel {
        Channel::Chat(_, None) => v.pointer_mut("/choices/0/delta/content"),
        Channel::Chat(_, Some(_)) => {
            v.pointer_mut("/choices/0/delta/tool_calls/0/function/arguments")
        }
        Channel::Responses(..) => v.get_mut("delta"),
        Channel::Anthropic(_) => match v.pointer("/delta/text") {
            Some(_) => v.pointer_mut("/delta/text"),
            None => v.pointer_mut("/delta/partial_json"),
        },
    };
    if let Some(s) = slot {
        *s = Value::String(text);
    }
}

fn render(other: &[&str], data: &str, out: &mut Vec<u8>) {
    for l in other {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    for l in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

impl SseMasker {
    pub fn new(
        engine: Arc<Engine>,
        rules: Arc<Rules>,
        vault: Option<Arc<Vault>>,
        restore: bool,
    ) -> Self {
        SseMasker {
            engine,
            rules,
            vault,
            restore,
            pending: Vec::new(),
            open: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Text held back across all channels.
    pub fn held(&self) -> usize {
        self.open.iter().map(|o| o.masker.held()).sum::<usize>() + self.pending.len()
    }

    /// Adds bytes from the upstream; returns the bytes to send to the client now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SseError> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let raw: Vec<u8> = self.pending.drain(..end).collect();
            self.event(&raw, &mut out);
        }
        if self.pending.len() > MAX_EVENT {
            return Err(SseError::EventTooLarge);
        }
        Ok(out)
    }

    /// The end of the stream: flushes held text and any incomplete last event.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let mut raw = std::mem::take(&mut self.pending);
            raw.extend_from_slice(b"\n\n");
            self.event(&raw, &mut out);
        }
        self.flush_all(&mut out);
        out
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) {
        for mut o in std::mem::take(&mut self.open) {
            let rest = o.masker.finish();
            self.tally.merge(std::mem::take(&mut o.masker.tally));
            if !rest.is_empty() {
                set_delta(&mut o.template, &o.channel, rest);
                render(&[], &o.template.to_string(), out);
            }
        }
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(raw);
        let ev = parse_event(&text);
        if ev.data.is_empty() {
            // A comment or keep-alive: pass it on as it is.
            out.extend_from_slice(raw);
            return;
        }
        let parsed: Option<Value> = serde_json::from_str(&ev.data).ok();
        if let Some(mut v) = parsed {
            if let Some((channel, delta)) = delta_of(&v) {
                let idx = match self.open.iter().position(|o| o.channel == channel) {
                    Some(i) => i,
                    None => {
                        self.open.push(Open {
                            channel: channel.clone(),
                            masker: StreamMasker::new(
                                self.engine.clone(),
                                self.rules.clone(),
                                self.vault.clone(),
                                self.restore,
                            ),
                            template: v.clone(),
                        });
                        self.open.len() - 1
                    }
                };
                let o = &mut self.open[idx];
                let released = o.masker.push(&delta);
                o.template = v.clone();
                set_delta(&mut v, &channel, released);
                render(&ev.other, &v.to_string(), out);
                return;
            }
            // Not a delta: the open channels end here.
            self.flush_all(out);
            match json::mask_json(
                &self.engine,
                ev.data.as_bytes(),
                &self.rules,
                self.vault.as_deref(),
                self.restore,
            ) {
                Ok((masked, t)) => {
                    self.tally.merge(t);
                    render(&ev.other, &String::from_utf8_lossy(&masked), out);
                }
                Err(_) => render(&ev.other, &self.mask_text(&ev.data), out),
            }
            return;
        }
        // `[DONE]` or other text: flush, then mask it as text.
        self.flush_all(out);
        let data = self.mask_text(&ev.data);
        render(&ev.other, &data, out);
    }

    fn mask_text(&mut self, s: &str) -> String {
        let (m, t) = self
            .engine
            .mask(s, &self.rules, self.vault.as_deref(), self.restore);
        self.tally.merge(t);
        m
    }
}
