//! The usage scanner's cost on the response path (`cargo bench --bench usage`): every POST's
//! SSE or JSON answer goes through it, masking route or not. Measured on a 200-chunk Chat
//! Completions stream (one TCP read per event, the usage chunk last), the same stream with the
//! usage chunk removed (`stream_usage`), a Responses stream whose `response.completed` event
//! repeats the whole answer, and a 2 KB JSON answer. Prints ns per response and MB/s.

use agentgate::usage::scan::{Framing, UsageScanner};
use std::hint::black_box;
use std::time::Instant;

fn chat_stream(events: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    out.push(b"data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":900,\"completion_tokens\":200,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n".to_vec());
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn responses_stream(events: usize) -> Vec<Vec<u8>> {
    let text = "lorem ipsum ".repeat(events);
    let mut out: Vec<Vec<u8>> = (0..events)
        .map(|i| format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"w{i} \"}}\n\n").into_bytes())
        .collect();
    out.push(format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"o3\",\"output\":[{{\"type\":\"message\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{text}\"}}]}}],\"usage\":{{\"input_tokens\":9,\"output_tokens\":4}}}}}}\n\n").into_bytes());
    out
}

fn run(name: &str, chunks: &[Vec<u8>], framing: Framing, strip: bool) {
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let iters = 2000;
    let start = Instant::now();
    for _ in 0..iters {
        let mut s = UsageScanner::new(framing, strip);
        let last = chunks.len() - 1;
        for (i, c) in chunks.iter().enumerate() {
            black_box(s.push(c, i == last));
        }
        assert!(s.observed.usage().is_some());
    }
    let per = start.elapsed().as_nanos() as f64 / iters as f64;
    println!(
        "{name:<44} {:>9.0} ns/response {:>8.0} MB/s ({bytes} bytes, {} reads)",
        per,
        bytes as f64 / per * 1e3,
        chunks.len()
    );
}

fn main() {
    let chat = chat_stream(200);
    run("chat stream, usage read", &chat, Framing::Sse, false);
    run(
        "chat stream, usage chunk removed",
        &chat,
        Framing::Sse,
        true,
    );
    run(
        "responses stream (completed repeats text)",
        &responses_stream(200),
        Framing::Sse,
        false,
    );
    let json = format!(
        "{{\"id\":\"x\",\"model\":\"gpt-4o\",\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":5}}}}",
        "lorem ipsum ".repeat(160)
    )
    .into_bytes();
    let halves = vec![json[..1000].to_vec(), json[1000..].to_vec()];
    run("2 KB JSON answer", &halves, Framing::Json, false);
}
