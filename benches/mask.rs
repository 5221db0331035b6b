//! Masking engine throughput (`cargo bench --bench mask`):
//! - 1 MiB of realistic chat-completion JSON with no sensitive value,
//! - the same with one sensitive value per KiB (e-mails, cards, keys),
//! - the cost per SSE delta of the streaming masker (a model answer pushed token by token),
//! - what decoding base64 for detection would cost (the masking issue asks it measured): every
//!   run of 20+ base64 characters decoded and, where it decodes to text, searched.
//!
//! Targets from the masking issue: >= 500 MB/s clean, >= 150 MB/s with values, <= 10 us/event.

use agentgate::mask::{corpus, json, stream::StreamMasker, Action, Engine, Rules, Vault};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn rules() -> Rules {
    Rules {
        secrets: Action::Redact,
        pii: Action::Pseudonymize,
        custom: Action::Redact,
        detectors: BTreeMap::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn throughput(name: &str, engine: &Engine, body: &[u8]) {
    let r = rules();
    let runs: Vec<f64> = (0..9)
        .map(|_| {
            let vault = Vault::default();
            let t = Instant::now();
            black_box(json::mask_json(engine, black_box(body), &r, Some(&vault), false).unwrap());
            body.len() as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    println!(
        "{name:<52} {:>8.0} MB/s  ({} bytes)",
        median(runs),
        body.len()
    );
}

fn main() {
    let t = Instant::now();
    let engine = Arc::new(Engine::new(&[], [1; 32]).unwrap());
    let built = t.elapsed();
    println!(
        "masking engine (one core, {} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    // At start-up and on each reload (the anchors' proof explores each detector's DFA).
    println!(
        "{:<52} {:>8.1} ms",
        "building the engine (built-in detectors)",
        built.as_secs_f64() * 1e3
    );

    let clean = corpus::chat_json(1 << 20, 42);
    let (_, t) = json::mask_json(&engine, clean.as_bytes(), &rules(), None, false).unwrap();
    assert!(t.is_empty(), "the clean corpus has findings: {t:?}");
    throughput(
        "1 MiB chat JSON, no sensitive value",
        &engine,
        clean.as_bytes(),
    );

    // The recorder's question for each body: anything to mask at all? Clean bodies of a usual
    // record's sizes (searched in lanes).
    let request = format!(
        r#"{{"model":"mock-model","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "The quick brown fox jumps over the lazy dog. ".repeat(32)
    );
    for small in [request, corpus::chat_json(2048, 7)] {
        assert!(!engine.any_candidate(small.as_bytes()));
        let runs: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..2000 {
                    black_box(engine.any_candidate(black_box(small.as_bytes())));
                }
                (small.len() * 2000) as f64 / t.elapsed().as_secs_f64() / 1e6
            })
            .collect();
        println!(
            "{:<52} {:>8.0} MB/s  ({} bytes)",
            "anything to mask? (a clean body, as the recorder asks)",
            median(runs),
            small.len()
        );
    }

    // One value per KiB, spread over the message contents.
    let mut v: serde_json::Value = serde_json::from_str(&clean).unwrap();
    let values = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "AKIAWD2FRLHBOX3PFQQM",
        "+1 415 555 2671",
        "203.0.113.7",
    ];
    let mut n = 0;
    for m in v["messages"].as_array_mut().unwrap() {
        let text = m["content"].as_str().unwrap().to_string();
        let mut out = String::with_capacity(text.len() + 64);
        for piece in text.as_bytes().chunks(1024) {
            out.push_str(&String::from_utf8_lossy(piece));
            out.push(' ');
            out.push_str(values[n % values.len()]);
            out.push(' ');
            n += 1;
        }
        m["content"] = serde_json::Value::String(out);
    }
    let dirty = v.to_string();
    let (_, t) = json::mask_json(
        &engine,
        dirty.as_bytes(),
        &rules(),
        Some(&Vault::default()),
        false,
    )
    .unwrap();
    let found: u64 = t.counts.values().sum();
    assert!(found as usize >= n, "found {found} of {n}");
    throughput(
        &format!("1 MiB chat JSON, {n} values (~1 per KiB)"),
        &engine,
        dirty.as_bytes(),
    );

    base64_cost(&engine, &clean, &dirty);

    // SSE: an answer of ~4 KiB pushed as model-sized deltas.
    let answer: String = corpus::chat_json(8 << 10, 7);
    let deltas: Vec<&str> = {
        let mut out = Vec::new();
        let mut rest = answer.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(6);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            out.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        out
    };
    let r = Arc::new(rules());
    let per_event: Vec<f64> = (0..9)
        .map(|_| {
            let mut m = StreamMasker::new(
                engine.clone(),
                r.clone(),
                Some(Arc::new(Vault::default())),
                true,
            );
            let t = Instant::now();
            for d in &deltas {
                black_box(m.push(black_box(d)));
            }
            black_box(m.finish());
            t.elapsed().as_nanos() as f64 / deltas.len() as f64
        })
        .collect();
    println!(
        "{:<52} {:>8.2} us/event ({} deltas of ~6 bytes)",
        "SSE delta through the stream masker",
        median(per_event) / 1000.0,
        deltas.len()
    );
}

/// Finds the runs of base64 in `body`, decodes each, and searches the decoded bytes that are text
/// (mostly printable UTF-8); how many runs, decoded texts, and texts with a finding.
fn base64_pass(
    engine: &Engine,
    runs: &regex_automata::meta::Regex,
    body: &[u8],
) -> (usize, usize, usize) {
    let (mut n, mut texts, mut found) = (0, 0, 0);
    for m in runs.find_iter(body) {
        n += 1;
        let run = &body[m.range()];
        // Whole quanta only (a run may end mid-quantum inside other text).
        let whole = &run[..run.len() / 4 * 4];
        let Ok(decoded) = boring::base64::decode_block(std::str::from_utf8(whole).unwrap_or(""))
        else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&decoded) else {
            continue;
        };
        if text
            .chars()
            .filter(|c| c.is_control() && !c.is_whitespace())
            .count()
            * 20
            > text.len()
        {
            continue;
        }
        texts += 1;
        if !engine.scan(text.as_bytes()).is_empty() {
            found += 1;
        }
    }
    (n, texts, found)
}

/// What covering base64 would add to masking: the pass above timed against `mask_json` on the
/// same bodies (clean chat JSON; benign agent traffic, with base64 images and keys; chat JSON
/// with one base64-encoded value per KiB), and how many encoded values it finds.
fn base64_cost(engine: &Engine, clean: &str, dirty: &str) {
    use base64_engine::encode;
    let runs = regex_automata::meta::Regex::new(r"[A-Za-z0-9+/]{20,}={0,2}").unwrap();
    let traffic = corpus::agent_traffic(1 << 20, 42);
    // The values of `dirty`, each replaced by its base64.
    let mut encoded = dirty.to_string();
    for v in [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "AKIAWD2FRLHBOX3PFQQM",
        "+1 415 555 2671",
        "203.0.113.7",
    ] {
        encoded = encoded.replace(&format!(" {v} "), &format!(" {} ", encode(v.as_bytes())));
    }
    for (name, body) in [
        ("clean chat JSON", clean),
        (
            "benign agent traffic (base64 images, keys)",
            traffic.as_str(),
        ),
        (
            "chat JSON, values base64-encoded (~1 per KiB)",
            encoded.as_str(),
        ),
    ] {
        let b = body.as_bytes();
        let r = rules();
        let mask: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                black_box(json::mask_json(engine, black_box(b), &r, None, false).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect();
        let mut counts = (0, 0, 0);
        let extra: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                counts = black_box(base64_pass(engine, &runs, black_box(b)));
                t.elapsed().as_secs_f64()
            })
            .collect();
        let (m, e) = (median(mask), median(extra));
        println!(
            "{:<52} {:>8.0} MB/s  (+{:.0}% on masking's {:.0} MB/s; {} runs, {} decode to text, {} with a finding)",
            format!("base64 pass: {name}"),
            b.len() as f64 / e / 1e6,
            e / m * 100.0,
            b.len() as f64 / m / 1e6,
            counts.0,
            counts.1,
            counts.2
        );
    }
}

/// Standard base64 (for the encoded corpus), through BoringSSL like the rest of the crate.
mod base64_engine {
    pub fn encode(b: &[u8]) -> String {
        boring::base64::encode_block(b)
    }
}
