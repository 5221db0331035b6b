use super::request::{add_include_usage, read};
use super::scan::{generated_text, Framing, UsageScanner};
use super::*;

fn u(input: u64, output: u64, cached: u64, reasoning: u64, write: u64) -> Usage {
    Usage {
        input,
        output,
        cached_input: cached,
        reasoning,
        cache_write: write,
    }
}

#[test]
fn every_api_shape_is_read_and_normalized() {
    // (what, documents in order, model, usage)
    type Case<'a> = (&'a str, &'a [&'a str], Option<&'a str>, Option<Usage>);
    let cases: &[Case] = &[
        (
            "chat completion",
            &[
                r#"{"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
            ],
            Some("gpt-4o-2024-08-06"),
            Some(u(12, 7, 4, 2, 0)),
        ),
        (
            "chat stream: usage null on every chunk, then the usage chunk",
            &[
                r#"{"model":"gpt-4o","choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
                r#"{"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            ],
            Some("gpt-4o"),
            Some(u(3, 1, 0, 0, 0)),
        ),
        (
            "responses JSON",
            &[
                r#"{"object":"response","model":"o3","usage":{"input_tokens":100,"output_tokens":50,"input_tokens_details":{"cached_tokens":60},"output_tokens_details":{"reasoning_tokens":30}}}"#,
            ],
            Some("o3"),
            Some(u(100, 50, 60, 30, 0)),
        ),
        (
            "responses stream: created (usage null) then completed",
            &[
                r#"{"type":"response.created","response":{"model":"o3","usage":null}}"#,
                r#"{"type":"response.output_text.delta","delta":"usage"}"#,
                r#"{"type":"response.completed","response":{"model":"o3","usage":{"input_tokens":9,"output_tokens":4}}}"#,
            ],
            Some("o3"),
            Some(u(9, 4, 0, 0, 0)),
        ),
        (
            "anthropic JSON: cache reads and writes are not in input_tokens",
            &[
                r#"{"type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":100,"cache_creation_input_tokens":50}}"#,
            ],
            Some("claude-sonnet-4-5"),
            Some(u(160, 20, 100, 0, 50)),
        ),
        (
            "anthropic stream: message_start then a cumulative message_delta",
            &[
                r#"{"type":"message_start","message":{"model":"claude-haiku-4-5","usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":5}}}"#,
                r#"{"type":"content_block_delta","delta":{"text":"hi"}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ],
            Some("claude-haiku-4-5"),
            Some(u(30, 15, 5, 0, 0)),
        ),
        (
            "no usage anywhere",
            &[r#"{"model":"m","choices":[]}"#, "not json", "[DONE]"],
            Some("m"),
            None,
        ),
        (
            "another API's usage of another shape",
            &[r#"{"usage":"unlimited"}"#, r#"{"usage":[1,2]}"#],
            None,
            None,
        ),
    ];
    for (what, docs, model, want) in cases {
        let mut o = Observed::default();
        for d in *docs {
            o.document(d.as_bytes());
        }
        assert_eq!(o.model.as_deref(), *model, "{what}");
        assert_eq!(o.usage(), *want, "{what}");
    }
}

#[test]
fn prices_match_the_longest_name_at_a_boundary() {
    let t = PriceTable::default();
    let cases = [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano", "gpt-4.1-nano"),
        ("gpt-4.10", UNPRICED_LABEL),
        ("gpt-4", UNPRICED_LABEL),
        ("o3-mini-high", "o3-mini"),
        ("o3", "o3"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
        ("mock-model", UNPRICED_LABEL),
        ("", UNPRICED_LABEL),
    ];
    for (model, label) in cases {
        assert_eq!(t.label(Some(model)), label, "{model}");
    }
    assert_eq!(t.label(None), UNPRICED_LABEL);
}

const UNPRICED_LABEL: &str = prices::UNPRICED;

#[test]
fn cost_prices_each_kind_of_token() {
    let custom = PriceTable::with([(
        "m".to_string(),
        Price {
            input: 2_000_000,      // $2 / M
            output: 10_000_000,    // $10 / M
            cached_input: 500_000, // $0.50 / M
            cache_write: 3_000_000,
        },
    )]);
    let cases = [
        // 1M plain input = $2
        (u(1_000_000, 0, 0, 0, 0), 2_000_000),
        // 1M output = $10
        (u(0, 1_000_000, 0, 0, 0), 10_000_000),
        // half cached
        (u(1_000_000, 0, 500_000, 0, 0), 1_250_000),
        // cache writes priced apart; reasoning is part of output
        (u(1_000_000, 1000, 0, 900, 1_000_000), 3_010_000),
        // one token of input: 2 micros
        (u(1, 0, 0, 0, 0), 2),
        // cached larger than input (a broken upstream): never underflows
        (u(10, 0, 50, 0, 0), 5),
    ];
    for (usage, want) in cases {
        assert_eq!(custom.cost(Some("m-1"), &usage), want, "{usage:?}");
    }
    assert_eq!(custom.cost(Some("unknown"), &u(1000, 1000, 0, 0, 0)), 0);
    assert_eq!(micros_str(1_234_567), "1.234567");
    assert_eq!(micros_str(5), "0.000005");
}

fn sse(docs: &[&str]) -> Vec<u8> {
    docs.iter()
        .map(|d| format!("data: {d}\n\n"))
        .collect::<String>()
        .into_bytes()
}

const CHAT_STREAM: &[&str] = &[
    r#"{"object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"say \"usage\": {}"}}],"usage":null}"#,
    r#"{"object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
    r#"{"object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3}}"#,
    "[DONE]",
];

/// Feeds `body` cut at `cuts` (sorted offsets); what the agent gets and the scanner's usage.
fn scan(body: &[u8], cuts: &[usize], framing: Framing, strip: bool) -> (Vec<u8>, Option<Usage>) {
    let mut s = UsageScanner::new(framing, strip);
    let mut out = Vec::new();
    let mut at = 0;
    let ends: Vec<usize> = cuts.iter().copied().chain([body.len()]).collect();
    for (i, &e) in ends.iter().enumerate() {
        let chunk = &body[at..e];
        let last = i == ends.len() - 1;
        match s.push(chunk, last) {
            Some(b) => out.extend(b),
            None => out.extend_from_slice(chunk),
        }
        at = e;
    }
    (out, s.observed.usage())
}

#[test]
fn a_usage_line_split_at_every_offset_is_read_whole() {
    let body = sse(CHAT_STREAM);
    let want = Some(u(11, 3, 0, 0, 0));
    for cut in 0..=body.len() {
        let (out, got) = scan(&body, &[cut], Framing::Sse, false);
        assert_eq!(out, body, "cut at {cut}");
        assert_eq!(got, want, "cut at {cut}");
    }
    // every byte its own read
    let cuts: Vec<usize> = (1..body.len()).collect();
    assert_eq!(scan(&body, &cuts, Framing::Sse, false).1, want);
}

#[test]
fn the_usage_chunk_the_agent_did_not_ask_for_is_removed_at_every_offset() {
    let body = sse(CHAT_STREAM);
    let without = String::from_utf8(body.clone())
        .unwrap()
        .replace(&format!("data: {}\n", CHAT_STREAM[2]), "")
        .into_bytes();
    assert_ne!(without, body);
    for cut in 0..=body.len() {
        let (out, got) = scan(&body, &[cut], Framing::Sse, true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&without),
            "cut at {cut}"
        );
        assert_eq!(got, Some(u(11, 3, 0, 0, 0)), "cut at {cut}");
    }
    for a in (0..body.len()).step_by(7) {
        for b in (a..body.len()).step_by(13) {
            assert_eq!(
                scan(&body, &[a, b], Framing::Sse, true).0,
                without,
                "{a} {b}"
            );
        }
    }
}

#[test]
fn stripping_keeps_every_other_line_including_a_usage_chunk_with_choices() {
    // A provider that puts usage on a chunk with choices: the chunk is the agent's content.
    let docs = [
        r#"{"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        "[DONE]",
    ];
    let body = sse(&docs);
    let (out, got) = scan(&body, &[], Framing::Sse, true);
    assert_eq!(out, body);
    assert_eq!(got, Some(u(1, 1, 0, 0, 0)));
}

#[test]
fn anthropic_and_responses_streams_with_crlf_and_event_lines() {
    let body = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-1\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\r\n\r\n";
    for cut in 0..=body.len() {
        let (out, got) = scan(body.as_bytes(), &[cut], Framing::Sse, false);
        assert_eq!(out, body.as_bytes());
        assert_eq!(got, Some(u(7, 9, 0, 0, 0)), "cut at {cut}");
    }
    let body = "event: response.completed\ndata:{\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":2,\"output_tokens_details\":{\"reasoning_tokens\":1}}}}";
    // no newline at the very end
    assert_eq!(
        scan(body.as_bytes(), &[10], Framing::Sse, false).1,
        Some(u(3, 2, 0, 1, 0))
    );
}

#[test]
fn a_json_answer_is_read_at_its_end_whatever_its_reads() {
    let body = br#"{"id":"x","model":"gpt-4o-mini","choices":[{"message":{"content":"hello"}}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
    for cut in 0..=body.len() {
        let (out, got) = scan(body, &[cut], Framing::Json, true);
        assert_eq!(out, body.to_vec());
        assert_eq!(got, Some(u(5, 6, 0, 0, 0)), "cut at {cut}");
    }
}

#[test]
fn a_line_too_long_to_read_passes_and_reports_nothing() {
    let big = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":1}},\"pad\":\"{}\"}}\n\n",
        "a".repeat(scan::MAX_DOCUMENT + 10)
    );
    let cuts = [100, scan::MAX_DOCUMENT / 2, scan::MAX_DOCUMENT + 5];
    for strip in [false, true] {
        let (out, got) = scan(big.as_bytes(), &cuts, Framing::Sse, strip);
        assert_eq!(out.len(), big.len(), "strip {strip}");
        assert!(out == big.as_bytes());
        assert_eq!(got, None);
    }
}

#[test]
fn requests_say_what_they_may_use() {
    // (body, model, max output, stream, include_usage)
    type Case<'a> = (&'a str, Option<&'a str>, Option<u64>, bool, bool);
    let cases: &[Case] = &[
        (
            r#"{"model":"gpt-4o","messages":[],"max_tokens":100}"#,
            Some("gpt-4o"),
            Some(100),
            false,
            false,
        ),
        (
            r#"{"model":"o3","max_completion_tokens":5,"max_tokens":100}"#,
            Some("o3"),
            Some(5),
            false,
            false,
        ),
        (
            r#"{"model":"gpt-5","input":"x","max_output_tokens":7,"stream":true}"#,
            Some("gpt-5"),
            Some(7),
            true,
            false,
        ),
        (
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            None,
            None,
            true,
            true,
        ),
        (
            r#"{"model":7,"max_tokens":"lots","stream":"yes"}"#,
            None,
            None,
            false,
            false,
        ),
        ("not json", None, None, false, false),
        ("[1,2]", None, None, false, false),
    ];
    for (body, model, max, stream, include) in cases {
        let a = read(body.as_bytes());
        assert_eq!(a.model.as_deref(), *model, "{body}");
        assert_eq!(a.max_output, *max, "{body}");
        assert_eq!((a.stream, a.include_usage), (*stream, *include), "{body}");
        assert_eq!(a.bytes, body.len() as u64);
    }
    assert_eq!(read(&[b'x'; 401]).input_estimate(), 101);
    // n choices may each use the cap.
    let a = read(br#"{"model":"m","n":8,"max_tokens":100}"#);
    assert_eq!((a.max_output, a.choices), (Some(800), 8));
    assert_eq!(
        read(br#"{"n":100000,"max_tokens":10}"#).max_output,
        Some(1280)
    );
    assert_eq!(read(br#"{"n":0,"max_tokens":10}"#).max_output, Some(10));
    assert_eq!(read(br#"{"n":3}"#).choices, 3);
}

#[test]
fn include_usage_is_added_only_where_missing() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            r#"{"model":"m","stream":true,"messages":[]}"#,
            Some(
                r#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#,
            ),
        ),
        (
            r#"  {"stream":true}"#,
            Some(r#"  {"stream_options":{"include_usage":true},"stream":true}"#),
        ),
        (
            r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
            Some(r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#),
        ),
        (
            r#"{"stream":true,"stream_options":null}"#,
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
        ),
        (
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            None,
        ),
        (r#"{"stream":false}"#, None),
        (r#"{"messages":[]}"#, None),
        (r#"{"stream":true,"stream_options":"bad"}"#, None),
    ];
    for (body, want) in cases {
        let got = add_include_usage(body.as_bytes(), &read(body.as_bytes()));
        let got_v = got
            .as_ref()
            .map(|b| serde_json::from_slice::<serde_json::Value>(b).expect("still JSON"));
        let want_v = want.map(|w| serde_json::from_str::<serde_json::Value>(w).unwrap());
        assert_eq!(got_v, want_v, "{body}");
        if let (Some(g), Some(w)) = (&got, want) {
            if !body.contains("stream_options") {
                assert_eq!(String::from_utf8_lossy(g), *w, "byte for byte: {body}");
            }
        }
    }
}

#[test]
fn a_stream_without_usage_still_names_its_model() {
    let body = sse(&[
        r#"{"object":"chat.completion.chunk","model":"gpt-4o","choices":[{"delta":{"content":"x"}}]}"#,
        "[DONE]",
    ]);
    let mut s = UsageScanner::new(Framing::Sse, false);
    assert_eq!(s.push(&body, true), None);
    assert_eq!(s.observed.model.as_deref(), Some("gpt-4o"));
    assert_eq!(s.observed.usage(), None);
}

#[test]
fn only_a_usage_key_that_opens_an_object_is_parsed() {
    for (data, want) in [
        (r#"{"usage":null}"#, false),
        (r#"{"usage" : {"prompt_tokens":1}}"#, true),
        (r#"{"x":"\"usage\": {","usage":null}"#, false), // escaped: not a key
        (r#"{"content":"usage"}"#, false),
        (
            r#"{"usage":null,"response":{"usage":{"input_tokens":1}}}"#,
            true,
        ),
        (r#"{"usage""#, false),
    ] {
        assert_eq!(
            super::scan::has_usage_object(data.as_bytes()),
            want,
            "{data}"
        );
    }
}

/// Feeds `body` cut at `cuts` through a scanner capped at `cap` tokens; what the agent gets.
fn scan_capped(body: &[u8], cuts: &[usize], cap: u64) -> (Vec<u8>, bool, u64) {
    let mut s = UsageScanner::new(Framing::Sse, false)
        .with_cap(cap, b"event: error\ndata: {}\n\n".to_vec());
    let mut out = Vec::new();
    let mut at = 0;
    let ends: Vec<usize> = cuts.iter().copied().chain([body.len()]).collect();
    for (i, &e) in ends.iter().enumerate() {
        let chunk = &body[at..e];
        match s.push(chunk, i == ends.len() - 1) {
            Some(b) => out.extend(b),
            None => out.extend_from_slice(chunk),
        }
        at = e;
    }
    (out, s.cut, s.generated_tokens())
}

fn chat_delta(text: &str) -> String {
    serde_json::json!({"object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":text}}]}).to_string()
}

#[test]
fn generated_text_counts_the_deltas_of_each_api_and_nothing_repeated() {
    let cases: &[(&str, (u64, u64))] = &[
        (r#"{"choices":[{"delta":{"content":"abcd"}}]}"#, (4, 0)),
        (
            r#"{"choices":[{"delta":{"content":"ab"}},{"delta":{"refusal":"cd","reasoning_content":"e"}}]}"#,
            (5, 0),
        ),
        (
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#,
            (7, 0),
        ),
        (r#"{"choices":[{"delta":{"content":"日本語x"}}]}"#, (1, 3)),
        // Legacy function calls and audio transcripts are generated text too (they were not
        // counted, so such streams were never cut); base64 payloads are not text.
        (
            r#"{"choices":[{"delta":{"role":"assistant","function_call":{"arguments":"{\"q\":1}"}}}]}"#,
            (7, 0),
        ),
        (
            r#"{"choices":[{"delta":{"audio":{"id":"a1","transcript":"hi there","data":"AAAAAAAAAAAA"}}}]}"#,
            (8, 0),
        ),
        (
            r#"{"type":"response.image_generation_call.partial_image","partial_image_b64":"AAAA"}"#,
            (0, 0),
        ),
        (r#"{"type":"response.audio.delta","delta":"AAAA"}"#, (0, 0)),
        (
            r#"{"type":"response.audio.transcript.delta","delta":"ok"}"#,
            (2, 0),
        ),
        (
            r#"{"type":"response.output_text.delta","delta":"hello"}"#,
            (5, 0),
        ),
        (
            r#"{"type":"response.function_call_arguments.delta","delta":"{}"}"#,
            (2, 0),
        ),
        (
            r#"{"type":"response.output_text.done","text":"hello"}"#,
            (0, 0),
        ),
        (
            r#"{"type":"response.completed","response":{"output":[{"content":[{"text":"hello"}]}]}}"#,
            (0, 0),
        ),
        (
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"hey"}}"#,
            (3, 0),
        ),
        (
            r#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{\"q\""}}"#,
            (4, 0),
        ),
        (
            r#"{"type":"content_block_delta","delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            (2, 0),
        ),
        (
            r#"{"type":"message_delta","usage":{"output_tokens":9}}"#,
            (0, 0),
        ),
        ("[DONE]", (0, 0)),
        ("not json", (0, 0)),
    ];
    for (doc, want) in cases {
        assert_eq!(generated_text(doc.as_bytes()), *want, "{doc}");
    }
}

#[test]
fn a_capped_stream_is_cut_at_the_event_that_passes_the_cap_at_every_split() {
    // 10 deltas of 40 ASCII bytes: 10 tokens each; a cap of 35 is passed by the 4th.
    let text = "x".repeat(40);
    let docs: Vec<String> = (0..10)
        .map(|_| chat_delta(&text))
        .chain(["[DONE]".to_string()])
        .collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let body = sse(&refs);
    let want: Vec<u8> = [sse(&refs[..3]), b"event: error\ndata: {}\n\n".to_vec()].concat();
    for cut in 0..=body.len() {
        let (out, was_cut, generated) = scan_capped(&body, &[cut], 35);
        assert!(was_cut, "cut at {cut}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want),
            "split at {cut}"
        );
        assert_eq!(generated, 40, "split at {cut}");
    }
    let cuts: Vec<usize> = (1..body.len()).collect();
    assert_eq!(scan_capped(&body, &cuts, 35).0, want);
    // Under the cap: the stream passes untouched.
    let (out, was_cut, generated) = scan_capped(&body, &[body.len() / 2], 100);
    assert_eq!((out, was_cut, generated), (body.clone(), false, 100));
}

#[test]
fn a_cut_inside_a_named_event_closes_it_before_the_error_event() {
    let body = "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"aaaaaaaa\"}}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"bbbbbbbb\"}}\r\n\r\nevent: message_stop\r\ndata: {}\r\n\r\n";
    let first = "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"aaaaaaaa\"}}\r\n\r\n";
    let want = format!("{first}event: error\ndata: {{}}\n\n");
    for cut in 0..=body.len() {
        let (out, was_cut, _) = scan_capped(body.as_bytes(), &[cut], 3);
        assert!(was_cut);
        assert_eq!(String::from_utf8_lossy(&out), want, "split at {cut}");
        // Under the cap, the held fields go out with their data: the stream is unchanged.
        let (out, was_cut, _) = scan_capped(body.as_bytes(), &[cut], 100);
        assert!(!was_cut);
        assert_eq!(String::from_utf8_lossy(&out), body, "split at {cut}");
    }
    // A field-only event, and fields at the very end of a stream, go out too.
    let body = "event: ping\n\nid: 7\nevent: x";
    for cut in 0..=body.len() {
        assert_eq!(
            String::from_utf8_lossy(&scan_capped(body.as_bytes(), &[cut], 100).0),
            body
        );
    }
    // A usage count reported at the end does not cut what was already sent.
    let body = sse(&[
        &chat_delta("abcd"),
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":500}}"#,
        "[DONE]",
    ]);
    let (out, was_cut, generated) = scan_capped(&body, &[], 10);
    assert_eq!((out, was_cut, generated), (body, false, 500));
}

#[test]
fn top_level_members_are_found_as_a_full_parse_finds_them() {
    // Every document the old full parse read gives the same usage and model; keys named alike
    // inside strings, nested objects or arrays are not taken for the top-level ones.
    let docs = [
        r#"{"id":"x","model":"gpt-4o","choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 9}","usage":{"prompt_tokens":7}}}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"model":"m"}"#,
        r#"  {"model" : "m" , "usage" : { "input_tokens" : 3 , "output_tokens" : 4 } }  "#,
        r#"{"type":"response.completed","response":{"model":"o3","usage":{"input_tokens":3,"output_tokens":2}}}"#,
        r#"{"type":"message_start","message":{"model":"claude","usage":{"input_tokens":7,"output_tokens":1}}}"#,
        r#"{"model":"m","usage":null}"#,
        r#"{"model":"m","usage":"n/a"}"#,
        r#"{"model":"m","usage":[10,20]}"#,
        r#"{"model":"m","usage":{"prompt_tokens":"ten"}}"#,
        r#"{"text":"a\\","model":"m\"x","usage":{"prompt_tokens":1}}"#,
        r#"{"a":[{"usage":{"prompt_tokens":99}}],"b":{"model":"no"},"model":"yes","usage":{"prompt_tokens":2},"z":1}"#,
        r#"{"model":"m","usage":{"prompt_tokens":1}} trailing"#,
        r#"{"model":"m","usage":{"prompt_tokens":1}"#,
        r#"[{"model":"m"}]"#,
        "not json",
        "",
    ];
    let full = |d: &str| {
        #[derive(serde::Deserialize)]
        struct W {
            model: Option<serde_json::Value>,
            usage: Option<serde_json::Value>,
        }
        serde_json::from_str::<W>(d)
            .ok()
            .map(|w| (w.model, w.usage))
    };
    for d in docs {
        let mut o = Observed::default();
        let carried = o.document(d.as_bytes());
        match full(d) {
            None => assert!(
                !carried && o.model.is_none(),
                "{d}: read although not one object"
            ),
            Some((model, usage)) => {
                // As the full parse read it: an object whose fields have usage's types.
                let direct = usage.as_ref().is_some_and(|u| {
                    u.is_object() && serde_json::from_value::<WireUsage>(u.clone()).is_ok()
                });
                let nested = d.contains("\"response\"") || d.contains("\"message\"");
                if !nested {
                    assert_eq!(carried, direct, "{d}");
                    assert_eq!(
                        o.model.clone(),
                        model.and_then(|m| m.as_str().map(str::to_string)),
                        "{d}"
                    );
                }
            }
        }
    }
    let mut o = Observed::default();
    assert!(o.document(docs[0].as_bytes()));
    assert_eq!(
        (o.model.as_deref(), o.usage()),
        (Some("gpt-4o"), Some(u(5, 6, 0, 0, 0)))
    );
    let mut o = Observed::default();
    assert!(o.document(docs[10].as_bytes()));
    assert_eq!(
        (o.model.as_deref(), o.usage().map(|u| u.input)),
        (Some("yes"), Some(2))
    );
    for (d, want) in [(docs[3], (Some("o3"), 3)), (docs[4], (Some("claude"), 7))] {
        let mut o = Observed::default();
        assert!(o.document(d.as_bytes()), "{d}");
        assert_eq!(
            (o.model.as_deref(), o.usage().map(|u| u.input).unwrap_or(0)),
            want
        );
    }
}
