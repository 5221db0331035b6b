//! The masking evaluation (`make eval-masking`; `cargo test --lib mask::eval` runs it small): a
//! labelled corpus generated here, deterministically, scored against the engine as the gateway
//! uses it.
//!
//! Every built-in detector gets values of its own (random, valid: checksums computed, context
//! words where the detector needs them), each placed in every context (JSON value, JSON key,
//! prose, code, logs, tool arguments, tool descriptions, unknown JSON keys), in every encoding
//! (plain, percent, JSON `\u`, HTML entities, `+` form), and run whole (`Engine::mask_body`, the
//! request path) and streamed (`SseMasker`, Chat Completions deltas, cut into 2 and 3 events at
//! every offset, in the content field and in a field no schema names; `LinesMasker`, NDJSON in
//! 2 and 3 lines). A case is caught when no
//! form of the value (plain or any encoding, the JSON inside strings decoded) is in the output;
//! a streamed case emits part of the value early when text released before the event that
//! completes the value already runs into it. Benign traffic (`corpus.rs`) gives each detector's
//! false-positive rate.
//!
//! Nothing here knows what the engine should find: results are counted, and which cells the
//! engine claims to cover (README, "Masking and guardrails") is stated once, in `claimed`; the
//! CI-size test holds those cells to the targets and prints the others as they are.
#![doc(hidden)]

use super::corpus::{self, Rng};
use super::{lines::LinesMasker, sse::SseMasker, Action, Engine, Rules};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Where a value sits in a request or an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    JsonValue,
    JsonKey,
    Prose,
    Code,
    Logs,
    ToolArguments,
    ToolDescription,
    UnknownKey,
}

/// How the value (with its context words) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Encoding {
    Plain,
    /// RFC 3986: every byte but `A-Za-z0-9-._~` as `%XX`.
    Percent,
    /// Every character but letters, digits and space as `\u00XX`.
    JsonEscape,
    /// Every character but letters, digits and space as `&#NN;`.
    Html,
    /// `application/x-www-form-urlencoded`: space as `+`, the rest as `Percent`.
    Form,
}

/// How the text reaches the masker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    /// The whole body at once (`Engine::mask_body`, as requests and records are masked).
    Whole,
    /// An SSE answer in 2 events, cut at every offset, the text in `delta.content` (tool
    /// arguments in `delta.tool_calls[0].function.arguments`).
    Sse2,
    /// The same in 3 events, every pair of cuts in and around the value.
    Sse3,
    /// 2 events, the text in a sibling field no schema names (`delta.note`).
    Sse2Sibling,
    /// 3 events, the same.
    Sse3Sibling,
    /// NDJSON (Ollama-style `{"message":{"content":..}}` lines) in 2 lines, every offset.
    Ndjson2,
    /// The same in 3 lines.
    Ndjson3,
}

pub const CONTEXTS: [Context; 8] = [
    Context::JsonValue,
    Context::JsonKey,
    Context::Prose,
    Context::Code,
    Context::Logs,
    Context::ToolArguments,
    Context::ToolDescription,
    Context::UnknownKey,
];
pub const ENCODINGS: [Encoding; 5] = [
    Encoding::Plain,
    Encoding::Percent,
    Encoding::JsonEscape,
    Encoding::Html,
    Encoding::Form,
];
pub const SPLITS: [Split; 7] = [
    Split::Whole,
    Split::Sse2,
    Split::Sse3,
    Split::Sse2Sibling,
    Split::Sse3Sibling,
    Split::Ndjson2,
    Split::Ndjson3,
];

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::JsonValue => "JSON value",
            Context::JsonKey => "JSON key",
            Context::Prose => "prose",
            Context::Code => "code",
            Context::Logs => "logs",
            Context::ToolArguments => "tool arguments",
            Context::ToolDescription => "tool description",
            Context::UnknownKey => "unknown JSON key",
        }
    }

    /// The value sits inside a JSON string of the body.
    fn json(self) -> bool {
        !matches!(self, Context::Prose | Context::Code | Context::Logs)
    }
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Percent => "percent",
            Encoding::JsonEscape => "JSON \\u",
            Encoding::Html => "HTML entities",
            Encoding::Form => "+ form",
        }
    }

    /// `s` encoded, character by character (so a part of `s` encodes to a part of the result).
    pub fn apply(self, s: &str) -> String {
        let mut out = String::with_capacity(s.len() * 3);
        for c in s.chars() {
            let keep = c.is_ascii_alphanumeric();
            match self {
                Encoding::Plain => out.push(c),
                Encoding::Percent | Encoding::Form => {
                    if keep || "-._~".contains(c) {
                        out.push(c);
                    } else if c == ' ' && self == Encoding::Form {
                        out.push('+');
                    } else {
                        let mut b = [0; 4];
                        for x in c.encode_utf8(&mut b).bytes() {
                            let _ = write!(out, "%{x:02X}");
                        }
                    }
                }
                Encoding::JsonEscape => {
                    if keep || c == ' ' {
                        out.push(c);
                    } else {
                        let mut u = [0; 2];
                        for x in c.encode_utf16(&mut u) {
                            let _ = write!(out, "\\u{x:04x}");
                        }
                    }
                }
                Encoding::Html => {
                    if keep || c == ' ' {
                        out.push(c);
                    } else {
                        let _ = write!(out, "&#{};", c as u32);
                    }
                }
            }
        }
        out
    }
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Whole => "whole",
            Split::Sse2 => "SSE 2 events",
            Split::Sse3 => "SSE 3 events",
            Split::Sse2Sibling => "SSE 2, unknown field",
            Split::Sse3Sibling => "SSE 3, unknown field",
            Split::Ndjson2 => "NDJSON 2 lines",
            Split::Ndjson3 => "NDJSON 3 lines",
        }
    }
}

/// What the engine claims to cover (README, "Masking and guardrails"): every string of a JSON
/// request body after its escapes are decoded, and text bodies, whole; every string of every
/// SSE event and NDJSON line, whatever its schema, split-safe; values written with
/// percent-encoding, JSON `\u` escapes or HTML references. `+` for a space is decoded only in
/// text that is already percent-encoded, and a `+ form` value need hold no escape at all
/// (`4111+1111+1111+1111`): those cells are not claimed, and the table shows them as they are.
pub fn claimed(_ctx: Context, enc: Encoding, _split: Split) -> bool {
    enc != Encoding::Form
}

/// How much of the grid is run.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Values generated per detector.
    pub values: usize,
    /// 2-event cuts: every `stride2`-th offset of the streamed text.
    pub stride2: usize,
    /// 3-event cuts: at most this many pairs of cuts per case, spread evenly.
    pub pairs3: usize,
    /// Benign traffic scanned for false positives, in bytes.
    pub benign: usize,
}

impl Size {
    /// `make eval-masking`.
    pub fn full() -> Size {
        Size {
            values: 3,
            stride2: 1,
            pairs3: 300,
            benign: 2 << 20,
        }
    }

    /// The test every `cargo test` runs (a debug build).
    pub fn ci() -> Size {
        Size {
            values: 1,
            stride2: 9,
            pairs3: 8,
            benign: 1 << 20,
        }
    }
}

/// One labelled value: the text around it that is part of what the detector needs (a context
/// word, `AccountKey=`), and the secret itself.
#[derive(Debug, Clone)]
pub struct Sample {
    pub detector: &'static str,
    pub before: String,
    pub secret: String,
}

/// Cases, values caught, and streamed cases that emitted part of a value early.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    pub cases: u64,
    pub caught: u64,
    pub early: u64,
}

impl Score {
    fn add(&mut self, o: Score) {
        self.cases += o.cases;
        self.caught += o.caught;
        self.early += o.early;
    }

    pub fn recall(&self) -> f64 {
        if self.cases == 0 {
            1.0
        } else {
            self.caught as f64 / self.cases as f64
        }
    }
}

/// False positives of one detector on benign traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Benign {
    /// Texts with at least one finding of the detector.
    pub texts: u64,
    pub findings: u64,
}

/// A cell of the grid: detector, context, encoding, split.
pub type Cell = (String, Context, Encoding, Split);

#[derive(Debug, Default)]
pub struct Report {
    /// (detector, context, encoding, split) -> score; a cell an encoding leaves unchanged
    /// (nothing in the value to encode) is not run.
    pub cells: BTreeMap<Cell, Score>,
    pub benign: BTreeMap<String, Benign>,
    pub benign_texts: u64,
    pub benign_bytes: u64,
    /// Some of the benign findings, for the reader.
    pub benign_examples: Vec<(String, String)>,
}

/// Recall and false-positive targets (issue 23).
pub const MIN_RECALL: f64 = 0.99;
pub const MAX_FPR: f64 = 0.01;

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &str = "0123456789abcdef";

fn luhn_complete(body: &str) -> String {
    // The check digit that makes body + digit pass Luhn.
    for d in 0..10 {
        let s = format!("{body}{d}");
        if super::validate::luhn(&s) {
            return s;
        }
    }
    unreachable!("one of ten digits completes a Luhn sum")
}

fn iban_complete(cc: &str, bban: &str) -> String {
    let moved = format!("{bban}{cc}00");
    let mut rem: u32 = 0;
    for c in moved.chars() {
        let v = c.to_digit(36).unwrap_or(0);
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    format!("{cc}{:02}{bban}", 98 - rem)
}

fn b64url_json(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A value of `detector` (and the context it needs), random but valid.
fn sample(detector: &'static str, r: &mut Rng) -> Sample {
    let plain = |s: String| (String::new(), s);
    let (before, secret) = match detector {
        "private_key" => {
            let lines: Vec<String> = (0..4).map(|_| r.from(B64, 64)).collect();
            plain(format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
                lines.join("\n")
            ))
        }
        "anthropic_key" => plain(format!(
            "sk-ant-api03-{}AA",
            r.from(&format!("{ALNUM}-_"), 93)
        )),
        "openai_key" => plain(format!("sk-proj-{}", r.from(ALNUM, 56))),
        "aws_access_key_id" => plain(format!(
            "AKIA{}",
            r.from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        )),
        "aws_secret_key" => ("aws_secret_access_key = ".into(), r.from(B64, 40)),
        "azure_storage_key" => (
            "AccountName=acme;AccountKey=".into(),
            format!("{}==", r.from(B64, 86)),
        ),
        "azure_client_secret" => plain(format!(
            "{}{}Q~{}",
            r.from(ALNUM, 3),
            r.digits(1),
            r.from(&format!("{ALNUM}_~.-"), 34)
        )),
        "gcp_service_account" => ("\"private_key_id\": \"".into(), r.from(HEX, 40)),
        "github_token" => plain(format!("ghp_{}", r.from(ALNUM, 36))),
        "slack_token" => plain(format!(
            "xoxb-{}-{}-{}",
            r.digits(12),
            r.digits(13),
            r.from(ALNUM, 24)
        )),
        "google_api_key" => plain(format!("AIza{}", r.from(&format!("{ALNUM}-_"), 35))),
        "stripe_key" => plain(format!("sk_live_{}", r.from(ALNUM, 99))),
        "huggingface_token" => plain(format!("hf_{}", r.from(&format!("{UPPER}{LOWER}"), 34))),
        "npm_token" => plain(format!("npm_{}", r.from(ALNUM, 36))),
        "pypi_token" => plain(format!("pypi-AgEIcHlwaS5vcmc{}", r.from(B64URL, 120))),
        "gitlab_token" => plain(format!("glpat-{}", r.from(ALNUM, 20))),
        "twilio_key" => plain(format!("SK{}", r.from(HEX, 32))),
        "sendgrid_key" => plain(format!("SG.{}.{}", r.from(B64URL, 22), r.from(B64URL, 43))),
        "jwt" => {
            let h = b64url_json(&serde_json::json!({"alg": "RS256", "kid": r.from(ALNUM, 8)}));
            let p = b64url_json(
                &serde_json::json!({"sub": r.from(ALNUM, 12), "iat": 1_700_000_000 + r.below(1 << 20)}),
            );
            plain(format!("{h}.{p}.{}", r.from(B64URL, 43)))
        }
        "bearer_token" => ("Authorization: Bearer ".into(), r.from(ALNUM, 32)),
        "generic_secret" => (
            "password=".into(),
            format!("{}{}{}", r.from(ALNUM, 8), r.digits(2), r.from(ALNUM, 6)),
        ),
        "email" => plain(format!(
            "{}.{}{}@{}.{}",
            r.from(LOWER, 5),
            r.from(LOWER, 7),
            r.digits(2),
            r.from(LOWER, 8),
            ["com", "org", "co.uk", "de", "io"][r.below(5) as usize]
        )),
        "credit_card" => {
            let prefix = ["4", "51", "55", "2221"][r.below(4) as usize];
            let n = luhn_complete(&format!("{prefix}{}", r.digits(15 - prefix.len())));
            let grouped: Vec<&str> = (0..4).map(|i| &n[i * 4..i * 4 + 4]).collect();
            plain(grouped.join(if r.below(2) == 0 { " " } else { "-" }))
        }
        "iban" => {
            let (cc, bban) = match r.below(4) {
                0 => ("DE", r.digits(18)),
                1 => ("GB", format!("{}{}", r.from(UPPER, 4), r.digits(14))),
                2 => ("FR", r.digits(23)),
                _ => ("NL", format!("{}{}", r.from(UPPER, 4), r.digits(10))),
            };
            plain(iban_complete(cc, &bban))
        }
        "us_itin" => {
            let groups = [50, 57, 65, 70, 78, 88, 90, 92, 94, 99];
            let g = groups[r.below(groups.len() as u64) as usize];
            plain(format!("9{}-{g}-{}", r.digits(2), r.digits(4)))
        }
        "us_ssn" => {
            if r.below(2) == 0 {
                let area = 1 + r.below(665);
                let group = 1 + r.below(99);
                let serial = 1 + r.below(9999);
                plain(format!("{area:03}-{group:02}-{serial:04}"))
            } else {
                // Any area after a context word (ITIN groups excluded: those are `us_itin`'s).
                let area = r.below(1000);
                let group = 10 + r.below(40);
                (
                    "SSN: ".into(),
                    format!("{area:03} {group:02} {}", r.digits(4)),
                )
            }
        }
        "phone" => plain(match r.below(3) {
            0 => format!("+1 {}{} 555 {}", 2 + r.below(8), r.digits(2), r.digits(4)),
            1 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
            _ => format!(
                "0{} {} {} {} {}",
                1 + r.below(9),
                r.digits(2),
                r.digits(2),
                r.digits(2),
                r.digits(2)
            ),
        }),
        "ipv4" => plain(format!(
            "{}.{}.{}.{}",
            11 + r.below(100),
            r.below(256),
            r.below(256),
            1 + r.below(254)
        )),
        "ipv6" => plain(format!(
            "2001:db8:{:x}:{:x}::{:x}",
            1 + r.below(0xfffe),
            1 + r.below(0xfffe),
            1 + r.below(0xfffe)
        )),
        other => panic!("the eval has no generator for detector `{other}`"),
    };
    Sample {
        detector,
        before,
        secret,
    }
}

/// The body (or text) of a request in `ctx` holding `lit`, a literal the caller already made
/// fit the place (JSON-escaped inside strings); tool arguments hold it twice-escaped.
fn document(ctx: Context, lit: &str) -> String {
    match ctx {
        Context::JsonValue => format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"Please check this: {lit} and reply."}}]}}"#
        ),
        Context::JsonKey => format!(r#"{{"model":"gpt-4o","metadata":{{"{lit}":"value"}}}}"#),
        Context::Prose => {
            format!("Hi team, as discussed the record is {lit} and nothing else changed.")
        }
        Context::Code => {
            format!("```python\nclient = make_client(\n    value=\"{lit}\",\n    retries=3,\n)\n```")
        }
        Context::Logs => format!(
            "2026-11-29T02:18:42.123Z INFO api::handler: accepted payload {lit} status=200 duration_ms=41"
        ),
        Context::ToolArguments => format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"assistant","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"send_message","arguments":"{lit}"}}}}]}}]}}"#
        ),
        Context::ToolDescription => format!(
            r#"{{"model":"gpt-4o","tools":[{{"type":"function","function":{{"name":"lookup","description":"Looks up an account. Example input: {lit}","parameters":{{"type":"object","properties":{{}}}}}}}}]}}"#
        ),
        Context::UnknownKey => {
            format!(r#"{{"model":"gpt-4o","x_vendor":{{"trace":{{"annotation":"{lit}"}}}}}}"#)
        }
    }
}

/// The tool-call arguments (a JSON object as text) holding `lit`.
fn arguments(lit: &str) -> String {
    format!(r#"{{"to":"{lit}","urgent":false}}"#)
}

/// `s` escaped for the inside of a JSON string (character by character).
fn json_escape(s: &str) -> String {
    let q = serde_json::to_string(s).unwrap_or_default();
    q[1..q.len() - 1].to_string()
}

/// `s` (already encoded) as it is written inside a JSON string: `\u` escapes are the JSON's own.
fn json_literal(enc: Encoding, s: &str) -> String {
    if enc == Encoding::JsonEscape {
        s.to_string()
    } else {
        json_escape(s)
    }
}

/// A test case's texts: the body masked whole, the text streamed, the value's span in it.
struct Case {
    body: String,
    streamed: String,
    span: (usize, usize),
}

fn case(ctx: Context, enc: Encoding, s: &Sample) -> Case {
    let before = enc.apply(&s.before);
    let secret = enc.apply(&s.secret);
    let (pre, lit) = if ctx.json() {
        (
            json_literal(enc, &before),
            json_literal(enc, &format!("{before}{secret}")),
        )
    } else {
        (before.clone(), format!("{before}{secret}"))
    };
    let secret_lit = &lit[pre.len()..];
    if ctx == Context::ToolArguments {
        let args = arguments(&lit);
        let body = document(ctx, &json_escape(&args));
        let start = args.find(&lit).unwrap_or(0) + pre.len();
        return Case {
            body,
            span: (start, start + secret_lit.len()),
            streamed: args,
        };
    }
    let body = document(ctx, &lit);
    let start = body.find(&lit).unwrap_or(0) + pre.len();
    Case {
        span: (start, start + secret_lit.len()),
        streamed: body.clone(),
        body,
    }
}

/// The forms in which the value could be read in an output: its longest line (a PEM block is
/// looked for by one line of its body), plain and in every encoding.
fn forms(secret: &str) -> Vec<String> {
    let core = secret
        .split('\n')
        .max_by_key(|l| l.len())
        .unwrap_or(secret)
        .to_string();
    let mut out: Vec<String> = ENCODINGS.iter().map(|e| e.apply(&core)).collect();
    out.push(json_escape(&core));
    out.sort();
    out.dedup();
    out
}

/// Every string in `v`, and in the strings that are JSON themselves (tool arguments).
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => {
            if let Ok(inner @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) =
                serde_json::from_str::<serde_json::Value>(s)
            {
                strings(&inner, out);
            }
            out.push(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out);
        }),
        _ => {}
    }
}

/// Whether any form of the value is in `text` or, when `text` is JSON, in any of its strings.
fn leaks(text: &str, forms: &[String]) -> bool {
    let mut texts = vec![text.to_string()];
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        strings(&v, &mut texts);
    }
    texts
        .iter()
        .any(|t| forms.iter().any(|f| t.contains(f.as_str())))
}

fn sse_event(text: &str, sibling: bool, tool: bool) -> String {
    let delta = match (sibling, tool) {
        (true, _) => serde_json::json!({"role": "assistant", "note": text}),
        (false, true) => {
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
        }
        (false, false) => serde_json::json!({"content": text}),
    };
    let v = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

/// The streamed text read back from SSE output: the field the test wrote to, in order.
fn sse_text(out: &[u8], sibling: bool, tool: bool) -> String {
    let text = String::from_utf8_lossy(out);
    let mut got = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        let path = match (sibling, tool) {
            (true, _) => "/choices/0/delta/note",
            (false, true) => "/choices/0/delta/tool_calls/0/function/arguments",
            (false, false) => "/choices/0/delta/content",
        };
        if let Some(t) = v.pointer(path).and_then(|t| t.as_str()) {
            got.push_str(t);
        }
    }
    got
}

/// One streamed text and what to look for in it.
struct Stream<'a> {
    engine: &'a Arc<Engine>,
    rules: &'a Arc<Rules>,
    text: &'a str,
    /// The value's bytes in `text`.
    span: (usize, usize),
    /// In `delta.note` rather than the field the schema names.
    sibling: bool,
    /// Tool-call arguments rather than content.
    tool: bool,
    /// NDJSON lines rather than SSE events.
    lines: bool,
    forms: &'a [String],
}

/// The stream maskers, one interface.
trait Masker {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, super::sse::SseError>;
    fn finish(&mut self) -> Vec<u8>;
}

impl Masker for SseMasker {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, super::sse::SseError> {
        SseMasker::push(self, chunk)
    }
    fn finish(&mut self) -> Vec<u8> {
        SseMasker::finish(self)
    }
}

impl Masker for LinesMasker {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, super::sse::SseError> {
        LinesMasker::push(self, chunk)
    }
    fn finish(&mut self) -> Vec<u8> {
        LinesMasker::finish(self)
    }
}

impl Stream<'_> {
    /// One piece of the text as the upstream would send it.
    fn write(&self, piece: &str) -> String {
        if self.lines {
            let v = serde_json::json!({"model": "llama3", "message": {"role": "assistant", "content": piece}, "done": false});
            format!("{v}\n")
        } else {
            sse_event(piece, self.sibling, self.tool)
        }
    }

    /// The text read back from the masker's output.
    fn read(&self, out: &[u8]) -> String {
        if !self.lines {
            return sse_text(out, self.sibling, self.tool);
        }
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.pointer("/message/content")?.as_str().map(str::to_string))
            .collect()
    }

    /// `text` cut at `cuts` into events, pushed one event at a time. Caught: no form of the
    /// value in the output; early: what was released before the event that completes the
    /// value reaches into the value.
    fn once(&self, cuts: &[usize]) -> Score {
        let (text, span) = (self.text, self.span);
        let mut m: Box<dyn Masker> = if self.lines {
            Box::new(LinesMasker::new(
                self.engine.clone(),
                self.rules.clone(),
                None,
                false,
                false,
            ))
        } else {
            Box::new(SseMasker::new(
                self.engine.clone(),
                self.rules.clone(),
                None,
                false,
            ))
        };
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(text.len());
        let mut out = Vec::new();
        let mut early = false;
        for w in bounds.windows(2) {
            // Before this event is pushed the value is incomplete if it ends past its start.
            if w[0] < span.1 {
                let released = self.read(&out);
                early |= released.len() > span.0 && text.starts_with(&released);
            }
            let event = self.write(&text[w[0]..w[1]]);
            match m.push(event.as_bytes()) {
                Ok(o) => out.extend_from_slice(&o),
                // Refused (failing closed) is not a leak: nothing more reached the client.
                Err(_) => {
                    return Score {
                        cases: 1,
                        caught: 1,
                        early: early as u64,
                    }
                }
            }
        }
        out.extend_from_slice(&m.finish());
        let got = self.read(&out);
        let leaked = leaks(&got, self.forms) || leaks(&String::from_utf8_lossy(&out), self.forms);
        Score {
            cases: 1,
            caught: !leaked as u64,
            early: early as u64,
        }
    }
}

fn boundaries(text: &str) -> Vec<usize> {
    (1..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

/// Runs the grid for one sample.
fn run_sample(
    engine: &Arc<Engine>,
    rules: &Arc<Rules>,
    s: &Sample,
    size: Size,
    report: &mut Report,
) {
    let forms = forms(&s.secret);
    for ctx in CONTEXTS {
        for enc in ENCODINGS {
            if enc != Encoding::Plain
                && enc.apply(&format!("{}{}", s.before, s.secret))
                    == format!("{}{}", s.before, s.secret)
            {
                continue;
            }
            let c = case(ctx, enc, s);
            let key = |split| (s.detector.to_string(), ctx, enc, split);
            // Whole.
            let whole = match engine.mask_body(c.body.as_bytes(), rules) {
                Some(out) => !leaks(&out, &forms),
                None => true,
            };
            report
                .cells
                .entry(key(Split::Whole))
                .or_default()
                .add(Score {
                    cases: 1,
                    caught: whole as u64,
                    early: 0,
                });
            let tool = ctx == Context::ToolArguments;
            let cuts = boundaries(&c.streamed);
            for (sibling, lines, s2, s3) in [
                (false, false, Split::Sse2, Split::Sse3),
                (true, false, Split::Sse2Sibling, Split::Sse3Sibling),
                (false, true, Split::Ndjson2, Split::Ndjson3),
            ] {
                let stream = Stream {
                    engine,
                    rules,
                    text: &c.streamed,
                    span: c.span,
                    sibling,
                    tool: tool && !lines,
                    lines,
                    forms: &forms,
                };
                let mut two = Score::default();
                for &i in cuts.iter().step_by(size.stride2) {
                    two.add(stream.once(&[i]));
                }
                let near: Vec<usize> = cuts
                    .iter()
                    .copied()
                    .filter(|&i| i + 2 >= c.span.0 && i <= c.span.1 + 2)
                    .collect();
                let pairs: Vec<(usize, usize)> = near
                    .iter()
                    .enumerate()
                    .flat_map(|(a, &i)| near[a + 1..].iter().map(move |&j| (i, j)))
                    .collect();
                let step = pairs.len().div_ceil(size.pairs3.max(1)).max(1);
                let mut three = Score::default();
                for &(i, j) in pairs.iter().step_by(step) {
                    three.add(stream.once(&[i, j]));
                }
                report.cells.entry(key(s2)).or_default().add(two);
                report.cells.entry(key(s3)).or_default().add(three);
            }
        }
    }
}

/// The whole evaluation at `size`.
pub fn run(size: Size) -> Report {
    let engine = Arc::new(Engine::new(&[], [5; 32]).expect("the built-in detectors build"));
    let rules = Arc::new(Rules::all(Action::Redact));
    let mut report = Report::default();
    let mut r = Rng(0x2323_2323_5eed);
    let mut names: Vec<&'static str> = Vec::new();
    for b in super::detectors::BUILTINS {
        if !names.contains(&b.name) {
            names.push(b.name);
        }
    }
    for name in names {
        for _ in 0..size.values {
            let s = sample(name, &mut r);
            run_sample(&engine, &rules, &s, size, &mut report);
        }
    }
    benign(&engine, size, &mut report);
    report
}

/// False positives on benign agent traffic: each message's text scanned.
fn benign(engine: &Engine, size: Size, report: &mut Report) {
    let mut seed = 1;
    while report.benign_bytes < size.benign as u64 {
        let body = corpus::agent_traffic(256 * 1024, seed);
        seed += 1;
        report.benign_bytes += body.len() as u64;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let texts: Vec<&str> = v["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect())
            .unwrap_or_default();
        for t in texts {
            report.benign_texts += 1;
            let mut seen = std::collections::BTreeSet::new();
            for f in engine.scan(t.as_bytes()).iter().filter(|f| f.valid) {
                let Some(d) = engine.detectors().get(f.detector) else {
                    continue;
                };
                let b = report.benign.entry(d.name.clone()).or_default();
                b.findings += 1;
                if seen.insert(d.name.clone()) {
                    b.texts += 1;
                }
                if report.benign_examples.len() < 10 {
                    report
                        .benign_examples
                        .push((d.name.clone(), t[f.start..f.end].to_string()));
                }
            }
        }
    }
}

impl Report {
    /// Scores summed over the cells `keep` accepts, by `by`.
    fn group<K: Ord>(
        &self,
        by: impl Fn(&Cell) -> K,
        keep: impl Fn(&Cell) -> bool,
    ) -> BTreeMap<K, Score> {
        let mut out: BTreeMap<K, Score> = BTreeMap::new();
        for (k, s) in self.cells.iter().filter(|(k, _)| keep(k)) {
            out.entry(by(k)).or_default().add(*s);
        }
        out
    }

    fn is_claimed(k: &Cell) -> bool {
        claimed(k.1, k.2, k.3)
    }

    /// Per detector, over the claimed cells.
    pub fn claimed_by_detector(&self) -> BTreeMap<String, Score> {
        self.group(|k| k.0.clone(), Self::is_claimed)
    }

    pub fn fpr(&self, detector: &str) -> f64 {
        let texts = self.benign.get(detector).map_or(0, |b| b.texts);
        texts as f64 / self.benign_texts.max(1) as f64
    }

    /// What misses the targets in the claimed cells: recall, partial emission, false positives.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (d, s) in self.claimed_by_detector() {
            if s.recall() < MIN_RECALL {
                out.push(format!("{d}: recall {:.4} < {MIN_RECALL}", s.recall()));
            }
            if s.early > 0 {
                out.push(format!(
                    "{d}: {} streamed cases emitted part of the value early",
                    s.early
                ));
            }
            if self.fpr(&d) > MAX_FPR {
                out.push(format!(
                    "{d}: false-positive rate {:.4} > {MAX_FPR}",
                    self.fpr(&d)
                ));
            }
        }
        out
    }

    /// The table, in Markdown.
    pub fn markdown(&self, size: Size) -> String {
        let mut o = String::new();
        let pct = |s: &Score| format!("{:.4}", s.recall());
        let in_claims = self.claimed_by_detector();
        let all = self.group(|k| k.0.clone(), |_| true);
        let total = |m: &BTreeMap<String, Score>| {
            let mut t = Score::default();
            m.values().for_each(|s| t.add(*s));
            t
        };
        let (tc, ta) = (total(&in_claims), total(&all));
        let _ = writeln!(o, "# Masking evaluation\n");
        let _ = writeln!(
            o,
            "Generated by `make eval-masking` (`src/mask/eval.rs`): {} values per detector, every {} offset(s) for 2 events, up to {} pairs of cuts for 3, {} bytes of benign traffic. Targets: recall >= {MIN_RECALL}, false-positive rate <= {MAX_FPR}, no early emission — in the cells the engine claims (README, \"Masking and guardrails\"; `eval::claimed`).\n",
            size.values, size.stride2, size.pairs3, self.benign_bytes
        );
        let _ = writeln!(
            o,
            "**Summary**: claimed cells {} cases, recall {}, early emissions {}; all cells {} cases, recall {}, early emissions {}; benign: {} texts, {} with a finding; targets missed in claimed cells: {}.\n",
            tc.cases,
            pct(&tc),
            tc.early,
            ta.cases,
            pct(&ta),
            ta.early,
            self.benign_texts,
            self.benign.values().map(|b| b.texts).sum::<u64>(),
            self.failures().len()
        );
        let _ = writeln!(o, "## Per detector\n");
        let _ = writeln!(
            o,
            "| detector | recall (claimed) | cases | early | recall (all cells) | cases | early | benign FPR | benign findings |"
        );
        let _ = writeln!(
            o,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for (d, a) in &all {
            let c = in_claims.get(d).copied().unwrap_or_default();
            let b = self.benign.get(d).copied().unwrap_or_default();
            let _ = writeln!(
                o,
                "| {d} | {} | {} | {} | {} | {} | {} | {:.4} | {} |",
                pct(&c),
                c.cases,
                c.early,
                pct(a),
                a.cases,
                a.early,
                self.fpr(d),
                b.findings
            );
        }
        let mut section = |title: &str, rows: Vec<(String, Score, Score)>| {
            let _ = writeln!(o, "\n## {title}\n");
            let _ = writeln!(
                o,
                "| {} | recall (claimed) | cases | early | recall (all) | cases | early |",
                title.trim_start_matches("Per ")
            );
            let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for (name, c, a) in rows {
                let claim = if c.cases == 0 {
                    "not claimed".to_string()
                } else {
                    pct(&c)
                };
                let _ = writeln!(
                    o,
                    "| {name} | {claim} | {} | {} | {} | {} | {} |",
                    c.cases,
                    c.early,
                    pct(&a),
                    a.cases,
                    a.early
                );
            }
        };
        let rows = |by: &dyn Fn(&Cell) -> String, order: Vec<String>| {
            let c = self.group(by, Self::is_claimed);
            let a = self.group(by, |_| true);
            order
                .into_iter()
                .map(|n| {
                    (
                        n.clone(),
                        c.get(&n).copied().unwrap_or_default(),
                        a.get(&n).copied().unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let ctx_rows = rows(
            &|k| k.1.name().to_string(),
            CONTEXTS.iter().map(|c| c.name().to_string()).collect(),
        );
        let enc_rows = rows(
            &|k| k.2.name().to_string(),
            ENCODINGS.iter().map(|c| c.name().to_string()).collect(),
        );
        let split_rows = rows(
            &|k| k.3.name().to_string(),
            SPLITS.iter().map(|c| c.name().to_string()).collect(),
        );
        section("Per context", ctx_rows);
        section("Per encoding", enc_rows);
        section("Per split", split_rows);
        let _ = writeln!(o, "\n## Misses in claimed cells\n");
        let misses: Vec<String> = self
            .cells
            .iter()
            .filter(|(k, s)| Self::is_claimed(k) && (s.caught < s.cases || s.early > 0))
            .map(|(k, s)| {
                format!(
                    "- {} / {} / {} / {}: {} of {} caught, {} early",
                    k.0,
                    k.1.name(),
                    k.2.name(),
                    k.3.name(),
                    s.caught,
                    s.cases,
                    s.early
                )
            })
            .collect();
        if misses.is_empty() {
            let _ = writeln!(o, "None.");
        } else {
            let _ = writeln!(o, "{}", misses.join("\n"));
        }
        let _ = writeln!(
            o,
            "\n## Benign findings (first {})\n",
            self.benign_examples.len()
        );
        if self.benign_examples.is_empty() {
            let _ = writeln!(o, "None.");
        }
        for (d, v) in &self.benign_examples {
            let _ = writeln!(o, "- {d}: `{v}`");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI-size evaluation: every detector has a generator, and the claimed cells meet the
    /// targets (recall, no early emission, false positives on benign traffic).
    #[test]
    fn eval_ci_size_meets_targets() {
        let size = Size::ci();
        let report = run(size);
        let table = report.markdown(size);
        println!("{table}");
        let failures = report.failures();
        assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
        assert!(report.benign_bytes >= 1 << 20);
        let engine = Engine::new(&[], [5; 32]).unwrap();
        for d in engine.detectors() {
            assert!(
                report.cells.keys().any(|k| k.0 == d.name),
                "detector {} is not evaluated",
                d.name
            );
        }
    }

    /// The scoring itself: a value no detector knows is counted as missed and, streamed with
    /// a cut inside it, as emitted early; an e-mail address as caught, never early.
    #[test]
    fn scoring_counts_misses_and_early_emission() {
        let engine = Arc::new(Engine::new(&[], [5; 32]).unwrap());
        let redact = Arc::new(Rules::all(Action::Redact));
        let score = |secret: &str, into: usize| {
            let s = Sample {
                detector: "email",
                before: String::new(),
                secret: secret.into(),
            };
            let forms = forms(&s.secret);
            let c = case(Context::Prose, Encoding::Plain, &s);
            let stream = Stream {
                engine: &engine,
                rules: &redact,
                text: &c.streamed,
                span: c.span,
                sibling: false,
                tool: false,
                lines: false,
                forms: &forms,
            };
            stream.once(&[c.span.0 + into])
        };
        let missed = score("alpha beta gamma delta", 11);
        assert_eq!(
            missed,
            Score {
                cases: 1,
                caught: 0,
                early: 1
            }
        );
        let caught = score("jane.doe@example.com", 4);
        assert_eq!(
            caught,
            Score {
                cases: 1,
                caught: 1,
                early: 0
            }
        );
        let s = Sample {
            detector: "email",
            before: String::new(),
            secret: "jane.doe@example.com".into(),
        };
        // Encodings are character by character; a value's span is found in every context.
        for ctx in CONTEXTS {
            for enc in ENCODINGS {
                let c = case(ctx, enc, &s);
                assert_eq!(
                    &c.streamed[c.span.0..c.span.1],
                    if ctx.json() && enc != Encoding::JsonEscape {
                        json_escape(&enc.apply(&s.secret))
                    } else {
                        enc.apply(&s.secret)
                    },
                    "{ctx:?} {enc:?}"
                );
            }
        }
        assert_eq!(Encoding::Form.apply("a b+c@d"), "a+b%2Bc%40d");
        assert_eq!(Encoding::Html.apply("a@b"), "a&#64;b");
        assert_eq!(Encoding::JsonEscape.apply("a@b"), "a\\u0040b");
    }
}
