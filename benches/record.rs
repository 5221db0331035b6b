//! The recorder's cost per exchange (`cargo bench --bench record`): the writer thread masks,
//! renders, hash-chains and appends records shaped like `make bench`'s exchange (a 1.6 KB
//! chat-completion request, a 2 KB JSON answer, the usual headers). Prints the process CPU per
//! record (the writer thread does nearly all of it; the main thread waits) and records/s.
//!
//! The side-by-side throughput cost is `make bench`'s `agentgate-recorded` row; this isolates
//! the writer so a change to it can be measured in seconds.

use agentgate::config::RecordingConfig;
use agentgate::identity::{AuthMethod, Identity};
use agentgate::mask::Engine;
use agentgate::record::{Draft, Headers, Mode, Recorder};
use http::{HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn draft(i: usize) -> Draft {
    let msg = "The quick brown fox jumps over the lazy dog. ".repeat(32);
    let request =
        format!(r#"{{"model":"mock-model","messages":[{{"role":"user","content":"{msg}"}}]}}"#);
    let filler = "lorem ipsum ".repeat(2048 / 12 + 1);
    let response = serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": &filler[..2048 - 260]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    })
    .to_string();
    let h = |v: &[(&'static str, &'static str)]| -> Headers {
        v.iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    };
    // agentgate's request ids: 16 random hex digits, then a counter.
    let id = format!("5f3a9c0e7b1d2a48{i:016x}");
    let mut response_headers = h(&[
        ("content-type", "application/json"),
        ("content-length", "2048"),
        ("date", "Sun, 29 Nov 2026 13:00:00 GMT"),
        ("x-upstream-request-id", "req_7f3a9c0e7b1d2a48c1d2e3f4"),
    ]);
    response_headers.push((
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_str(&id).unwrap(),
    ));
    Draft {
        id,
        ts: "2026-11-29T13:00:00.000Z".into(),
        ts_ms: 1_795_000_000_000 + i as u64,
        conversation: "conv-1".into(),
        identity: Some(Arc::new(Identity {
            subject: "bench-agent".into(),
            issuer: "service-account".into(),
            method: AuthMethod::ServiceAccount,
            groups: vec!["agents".into()],
            person: None,
        })),
        route: Some("openai".into()),
        mode: Mode::Full,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_headers: h(&[
            ("host", "127.0.0.1:8443"),
            ("content-type", "application/json"),
            ("content-length", "1564"),
            ("user-agent", "wrk"),
        ]),
        request_bytes: request.len() as u64,
        request_body: Some(request.into_bytes().into()),
        status: 200,
        response_headers,
        response_bytes: response.len() as u64,
        response_body: Some(response.into_bytes().into()),
        downstream_tls: Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
        upstream_tls: Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
        duration_ms: 0.412,
        ttfb_ms: Some(0.201),
        ..Draft::default()
    }
}

/// One part of the floor: what it is, and one run of it.
type Part<'a> = (&'static str, Box<dyn FnMut() -> usize + 'a>);

fn main() {
    let engine = Arc::new(Engine::new(&[], [1; 32]).unwrap());
    // `AGENTGATE_BENCH_RECORDS` (a multiple of 5,000, or fewer) shortens a run: `bench/record.py
    // --smoke` checks the harness in seconds.
    let n = std::env::var("AGENTGATE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20_000);
    println!(
        "recorder writer ({} build), {n} exchanges of {} + {} body bytes",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        draft(0).request_bytes,
        draft(0).response_bytes
    );
    // The same records with signed checkpoints as configured by default (every 1,000 records:
    // an fsync of segment and index, an Ed25519 signature, an fsync'd line), every 100, and
    // (nearly) none: only the flush that ends each batch of 5,000 writes one.
    let mut dir = std::path::PathBuf::new();
    for (what, every_records) in [
        (
            "masked, rendered, chained, appended (checkpoint/1000)",
            1000u64,
        ),
        ("  the same, a checkpoint every 100 records", 100),
        (
            "  the same, a checkpoint every 5,000 (at each flush)",
            u64::MAX,
        ),
    ] {
        dir = std::env::temp_dir().join(format!(
            "agentgate-bench-record-{}-{every_records}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut settings: RecordingConfig = serde_json::from_str("{}").unwrap();
        settings.checkpoints.every_records = every_records;
        settings.checkpoints.every = Duration::from_secs(3600);
        settings.checkpoints.stdout = false;
        let key = Arc::new(agentgate::util::ed25519::SigningKey::generate().unwrap());
        let rec = Recorder::start(dir.clone(), settings, engine.clone(), key, None).unwrap();
        let (us, rps) = run(&rec, n);
        println!("{what:<56} {us:>8.1} us CPU/record  {rps:>8.0} records/s (median of 5)");
    }
    // The work no writer can skip, each part alone on the same record: hashing the record's
    // bytes for the chain, the "anything to mask?" pass over both bodies, and escaping them
    // into JSON. Their sum is a floor under the line above on this machine.
    let written: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let record_bytes = (written / (5 * n) as u64) as usize;
    let d = draft(0);
    let body = |c: &Option<agentgate::record::Chunks>| c.as_ref().unwrap().contiguous().to_vec();
    let (req, resp) = (body(&d.request_body), body(&d.response_body));
    let record = vec![b'x'; record_bytes];
    let mut out = Vec::with_capacity(2 * (req.len() + resp.len()));
    let parts: Vec<Part> = vec![
        (
            "sha256 of the record",
            Box::new(|| boring::sha::sha256(&record)[0] as usize),
        ),
        (
            "anything to mask? (both bodies)",
            Box::new(|| engine.any_candidate(&req) as usize + engine.any_candidate(&resp) as usize),
        ),
        (
            "JSON escaping (both bodies)",
            Box::new(|| {
                out.clear();
                agentgate::record::json::push_str(&mut out, std::str::from_utf8(&req).unwrap());
                agentgate::record::json::push_str(&mut out, std::str::from_utf8(&resp).unwrap());
                out.len()
            }),
        ),
    ];
    let mut floor = 0.0;
    for (what, mut f) in parts {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let cpu = cpu_seconds();
            let mut sink = 0;
            for _ in 0..20_000 {
                sink += std::hint::black_box(f());
            }
            std::hint::black_box(sink);
            runs.push((cpu_seconds() - cpu) / 20_000.0 * 1e6);
        }
        runs.sort_by(f64::total_cmp);
        floor += runs[2];
        println!("  floor: {what:<44} {:>8.2} us", runs[2]);
    }
    println!(
        "  floor: {:<44} {floor:>8.2} us CPU/record ({record_bytes} bytes a record)",
        "the three together"
    );
    // One checkpoint's own cost, spread over `every_records` records: the signature (CPU) and
    // the three fsyncs (segment, index, checkpoints.jsonl; wall time on this disk).
    let key = agentgate::util::ed25519::SigningKey::generate().unwrap();
    let msg = vec![b'c'; 600];
    let cpu = cpu_seconds();
    for _ in 0..2000 {
        std::hint::black_box(key.sign(&msg).unwrap());
    }
    let sign_us = (cpu_seconds() - cpu) / 2000.0 * 1e6;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let t = Instant::now();
    for _ in 0..300 {
        std::io::Write::write_all(&mut f, &[b'x'; 4096]).unwrap();
        f.sync_data().unwrap();
    }
    let fsync_us = t.elapsed().as_secs_f64() / 300.0 * 1e6;
    println!(
        "  one checkpoint: Ed25519 signature {sign_us:.1} us CPU; 3 fsyncs {:.0} us wall; per record at 1 per 1,000: {:.3} us CPU, {:.2} us wall",
        3.0 * fsync_us,
        sign_us / 1000.0,
        3.0 * fsync_us / 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    for every in ["1000", "100", &u64::MAX.to_string()] {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!(
            "agentgate-bench-record-{}-{every}",
            std::process::id()
        )));
    }
}

/// CPU per record and records/s, the median of 5 rounds of `n` records in batches of 5,000.
fn run(rec: &Recorder, n: usize) -> (f64, f64) {
    let batch = n.min(5_000); // under the queue's 10,000
    let mut results = Vec::new();
    for round in 0..5 {
        let drafts: Vec<Vec<Draft>> = (0..n / batch)
            .map(|b| {
                (0..batch)
                    .map(|i| draft(round * n + b * batch + i))
                    .collect()
            })
            .collect();
        let cpu = cpu_seconds();
        let t = Instant::now();
        for b in drafts {
            for d in b {
                rec.submit(d);
            }
            rec.flush(Duration::from_secs(60));
        }
        let wall = t.elapsed().as_secs_f64();
        let used = cpu_seconds() - cpu;
        results.push((used / n as f64 * 1e6, n as f64 / wall));
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    results[results.len() / 2]
}
