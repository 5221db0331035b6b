use super::*;
use std::sync::Arc;

fn engine() -> Arc<Engine> {
    Arc::new(Engine::new(&engine_custom(), [7; 32]).unwrap())
}

/// The custom detectors of the tests' engine.
fn engine_custom() -> Vec<CustomDetector> {
    vec![
        CustomDetector {
            name: "employee_id".into(),
            regex: Some("EMP-[0-9]{6}".into()),
            words: vec![],
        },
        CustomDetector {
            name: "deny".into(),
            regex: None,
            words: vec!["rm -rf /".into(), "Project Bluebird".into()],
        },
    ]
}

fn redact_all() -> Rules {
    Rules::all(Action::Redact)
}

/// (detector, value) positives, checksum-valid where a checksum applies.
pub const POSITIVES: &[(&str, &str)] = &[
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----"),
    ("anthropic_key", "sk-ant-api03-Xa7Kd93LmQp2Rz8TvWb4Nc6Yh1Jf5Gs0Ue9Io3Pk7Ll2Mm4Nn6Oo8Pp1Qq3Rr5Ss7Tt9Uu2Vv4Ww6Xx8Yy0Zz-AbCdEfAA"),
    ("openai_key", "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5"),
    ("openai_key", "sk-Zq8Xw2Ec4Rv6Tb8Yn0Um2Ik4Ol6Pa8Sd0Fg2Hj4Kl6Zx8Cv"),
    ("openai_key", "sk-svcacct-Rt5Yu7Io9Pa1Sd3Fg5Hj7Kl9Zx1Cv3Bn5Mq7Wl9Ek2Rj4Tk6Yl8Um0Io"),
    ("aws_access_key_id", "AKIAWD2FRLHBOX3PFQQM"),
    ("github_token", "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
    ("github_token", "github_pat_11ABCDEFG0123456789abc_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456"),
    ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("google_api_key", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("stripe_key", "sk_live_51Hx7aBcDeFgHiJkLmNoPqRsTu"),
    ("jwt", "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoiYWdlbnQtMSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1"),
    ("email", "jane.doe@example.com"),
    ("email", "j.smith+agents@mail.corp.example.co.uk"),
    ("credit_card", "4111 1111 1111 1111"),
    ("credit_card", "5500-0000-0000-0004"),
    ("credit_card", "378282246310005"),
    ("iban", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432"),
    ("us_ssn", "536-22-1234"),
    ("us_itin", "912-70-1234"),
    ("azure_client_secret", "eqD8Q~z6LBlnvEGm1vb4R1v0iEL20MgKndrQ3Fvk"),
    ("huggingface_token", "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"),
    ("npm_token", "npm_OEcAZfrmxKjN1XflVGzNRxsfN6SPMkch6Vlb"),
    ("pypi_token", "pypi-AgEIcHlwaS5vcmcrrL8LgfnPdrSluBA2OC3UCN6qTWNf-YSAuAO02hfO28u1UFOeL5wZV_c2x4y3i6aYWGhe1"),
    ("gitlab_token", "glpat-Wh7eBERjPZthNbWHMnIPm2wYtrT.01s1588sv"),
    ("twilio_key", "SK074243983221f188d062456f1480c1d1"),
    ("sendgrid_key", "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"),
    ("phone", "+1 415 555 2671"),
    ("phone", "(415) 555-2671"),
    ("phone", "+442071838750"),
    ("phone", "030 1234 5678"),
    ("ipv4", "203.0.113.7"),
    ("ipv6", "2001:db8::8a2e:370:7334"),
    ("employee_id", "EMP-004217"),
    ("deny", "Project Bluebird"),
];

/// Values found only with their context: (detector, text, value).
const IN_CONTEXT: &[(&str, &str, &str)] = &[
    (
        "aws_secret_key",
        "aws_secret_access_key = Bws/P0RVC2gWOoihqoxo3KqTvmUQL6AYKeue6Yfq",
        "Bws/P0RVC2gWOoihqoxo3KqTvmUQL6AYKeue6Yfq",
    ),
    ("us_ssn", "SSN: 912-34-5678", "912-34-5678"),
    (
        "azure_storage_key",
        "AccountName=acme;AccountKey=LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==;EndpointSuffix=core.windows.net",
        "LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==",
    ),
    (
        "gcp_service_account",
        r#""private_key_id": "a37fe80ac04c605ed2d8f598271fc0ed9adb98a5","#,
        "a37fe80ac04c605ed2d8f598271fc0ed9adb98a5",
    ),
    (
        "bearer_token",
        "curl -H 'Authorization: Bearer 8f3kD9sLq2mZx7Vb1NcR4tYw' https://api",
        "8f3kD9sLq2mZx7Vb1NcR4tYw",
    ),
    (
        "generic_secret",
        "DB_PASSWORD=Zx9qR2mK7vB3nW",
        "Zx9qR2mK7vB3nW",
    ),
    (
        "generic_secret",
        r#"{"client_secret": "a8Kd92jLq0ZmX7cV"}"#,
        "a8Kd92jLq0ZmX7cV",
    ),
    // A greedy match that runs into what follows (found by src/props.rs): the value is still
    // found, up to the last separator where it validates.
    (
        "credit_card",
        "card 4111 1111 1111 1111 12/27 cvc",
        "4111 1111 1111 1111",
    ),
    (
        "credit_card",
        "4111 1111 1111 1111 0 items",
        "4111 1111 1111 1111",
    ),
    (
        "iban",
        "IBAN DE89 3704 0044 0532 0130 00 12 EUR",
        "DE89 3704 0044 0532 0130 00",
    ),
];

/// Texts that must produce no finding: near misses and everyday agent traffic.
const NEGATIVES: &[&str] = &[
    "4111 1111 1111 1112",
    "DE89370400440532013001",
    "000-12-3456 666-12-3456 123-45-6789",
    "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "AKIA123 ghp_short sk-learn scikit-learn",
    "127.0.0.1 0.0.0.0 1.2.3 v1.99.9 10.0.19041.1",
    "jane.doe@localhost user@ host",
    "password=changeme password: ${DB_PASSWORD} api_key=<your-key-here>",
    "::1 a::b std::fmt::Display crate::mask::Engine",
    "550e8400-e29b-41d4-a716-446655440000 12345678-1234-5678-1234-567812345678",
    "commit 9669995a1b2c3d4e5f60718293a4b5c6d7e8f901 sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "fn main() { let x: Vec<u32> = vec![1, 2, 3]; println!(\"{x:?}\"); }",
    "2026-11-29T02:18:42.123Z INFO request_id=9f1c2e status=200 duration_ms=412.3 port=8443",
    "The quick brown fox jumps over the lazy dog; tokens: 1234567890, total 98765.",
    "00:1a:2b:3c:4d:5e 12:30:45 <p>hello</p> a@b",
];

pub(super) fn findings(e: &Engine, text: &str) -> Vec<(String, String)> {
    e.scan(text.as_bytes())
        .iter()
        .filter(|f| f.valid)
        .map(|f| {
            let name = e
                .detectors()
                .get(f.detector)
                .map_or("placeholder".to_string(), |d| d.name.clone());
            (name, text[f.start..f.end].to_string())
        })
        .collect()
}

#[test]
fn every_detector_finds_its_values_in_prose() {
    let e = engine();
    for (det, value) in POSITIVES {
        let text = format!("Please note: {value} is what we use.");
        assert_eq!(
            findings(&e, &text),
            vec![(det.to_string(), value.to_string())],
            "{det}: {value}"
        );
    }
    for (det, text, value) in IN_CONTEXT {
        assert_eq!(
            findings(&e, text),
            vec![(det.to_string(), value.to_string())],
            "{det}: {text}"
        );
    }
    let covered: std::collections::BTreeSet<&str> = POSITIVES
        .iter()
        .map(|p| p.0)
        .chain(IN_CONTEXT.iter().map(|p| p.0))
        .collect();
    for d in e.detectors() {
        assert!(
            covered.contains(d.name.as_str()),
            "detector {} has no positive test",
            d.name
        );
    }
}

#[test]
fn near_misses_and_negatives_find_nothing() {
    let e = engine();
    for text in NEGATIVES {
        assert_eq!(findings(&e, text), vec![], "{text}");
    }
}

#[test]
fn actions() {
    let e = engine();
    let vault = Vault::default();
    let mut rules = redact_all();
    rules.detectors.insert("email".into(), Action::Pseudonymize);
    rules.detectors.insert("phone".into(), Action::Hash);
    rules.detectors.insert("ipv4".into(), Action::Allow);
    let text = "mail jane.doe@example.com or bob@example.org, call +14155552671, key AKIAWD2FRLHBOX3PFQQM, host 203.0.113.7, again jane.doe@example.com";
    let (out, tally) = e.mask(text, &rules, Some(&vault), false);
    let hash = e.keyed_hash("+14155552671");
    assert_eq!(
        out,
        format!("mail <EMAIL_1> or <EMAIL_2>, call [PHONE:{hash}], key [REDACTED:AWS_ACCESS_KEY_ID], host 203.0.113.7, again <EMAIL_1>")
    );
    assert_eq!(hash.len(), 12);
    assert_eq!(tally.counts[&("email".to_string(), "pseudonymize")], 3);
    assert_eq!(tally.blocked, None);
    // The answer restores this conversation's placeholders and masks what the upstream adds.
    let answer = "I wrote to <EMAIL_1> and <EMAIL_2>; also try admin@corp.example, not <EMAIL_9>.";
    let resp = Rules {
        pii: Action::Redact,
        ..redact_all()
    };
    let (back, t) = e.mask(answer, &resp, Some(&vault), true);
    assert_eq!(back, "I wrote to jane.doe@example.com and bob@example.org; also try [REDACTED:EMAIL], not <EMAIL_9>.");
    assert_eq!(t.restored, 2);
    // Block names the detector.
    rules.detectors.insert("private_key".into(), Action::Block);
    let (_, t) = e.mask(POSITIVES[0].1, &rules, None, false);
    assert_eq!(t.blocked.as_deref(), Some("private_key"));
}

fn stream_all(
    e: &Arc<Engine>,
    parts: &[&str],
    rules: &Arc<Rules>,
    vault: Option<Arc<Vault>>,
    restore: bool,
) -> (Vec<String>, String) {
    let mut m = stream::StreamMasker::new(e.clone(), rules.clone(), vault, restore);
    let mut outs: Vec<String> = parts.iter().map(|p| m.push(p)).collect();
    outs.push(m.finish());
    let joined = outs.concat();
    (outs, joined)
}

/// Every value, cut at every offset into 2 pieces and at every pair of offsets into 3: the
/// released text equals whole-text masking and never contains the value or a prefix of it
/// longer than what the surrounding text itself has.
#[test]
fn split_at_every_offset_equals_whole_text() {
    let e = engine();
    let rules = Arc::new(redact_all());
    // (what is embedded in the text, the secret part of it)
    let values: Vec<(&str, &str)> = POSITIVES
        .iter()
        .map(|p| (p.1, p.1))
        .chain(IN_CONTEXT.iter().map(|p| (p.1, p.2)))
        .collect();
    for (embedded, secret) in values {
        let text = format!("Sure, here it is: {embedded} — keep it safe.");
        let (whole, _) = e.mask(&text, &rules, None, false);
        assert!(
            !whole.contains(secret),
            "{secret} not masked whole: {whole}"
        );
        let value = secret;
        let bytes: Vec<usize> = (1..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &bytes {
            let (_, got) = stream_all(&e, &[&text[..i], &text[i..]], &rules, None, false);
            assert_eq!(got, whole, "{value} split at {i}");
        }
        // Three pieces: every pair of cuts in and around the value.
        let vstart = text.find(secret).unwrap();
        let span: Vec<usize> = bytes
            .iter()
            .copied()
            .filter(|&i| i >= vstart.saturating_sub(2) && i <= vstart + value.len() + 2)
            .collect();
        for (a, &i) in span.iter().enumerate() {
            for &j in &span[a + 1..] {
                let (outs, got) = stream_all(
                    &e,
                    &[&text[..i], &text[i..j], &text[j..]],
                    &rules,
                    None,
                    false,
                );
                assert_eq!(got, whole, "{value} split at {i},{j}");
                // Nothing released before the value was complete contains its start.
                let head = value.get(..value.len().min(8)).unwrap_or(value);
                assert!(
                    !outs[0].contains(head) && !outs[1].contains(head),
                    "{value}: prefix released early"
                );
            }
        }
    }
}

/// Byte-at-a-time (one TCP byte per chunk, the worst case) equals whole-text masking.
#[test]
fn byte_at_a_time() {
    let e = engine();
    let rules = Arc::new(redact_all());
    let mut text = String::from("Contact jane.doe@example.com, card 4111 1111 1111 1111, ");
    for (_, v) in POSITIVES {
        text.push_str(v);
        text.push_str(" and then ");
    }
    let (whole, _) = e.mask(&text, &rules, None, false);
    let pieces: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let (_, got) = stream_all(&e, &refs, &rules, None, false);
    assert_eq!(got, whole);
}

#[test]
fn placeholders_restored_when_cut_at_every_offset() {
    let e = engine();
    let vault = Arc::new(Vault::default());
    let p = vault.placeholder_for("EMAIL", "jane.doe@example.com");
    let rules = Arc::new(redact_all());
    let text = format!("Dear {p}, your order shipped to {p}.");
    let want = "Dear jane.doe@example.com, your order shipped to jane.doe@example.com.";
    for i in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
        let (_, got) = stream_all(
            &e,
            &[&text[..i], &text[i..]],
            &rules,
            Some(vault.clone()),
            true,
        );
        assert_eq!(got, want, "cut at {i}");
    }
}

#[test]
fn holdback_is_only_what_could_still_match() {
    let e = engine();
    let rules = Arc::new(redact_all());
    let mut m = stream::StreamMasker::new(e.clone(), rules, None, false);
    assert_eq!(m.push("The answer is "), "The answer is ");
    assert_eq!(m.held(), 0);
    let out = m.push("sk-proj-Ab3dE5");
    assert_eq!(out, "", "a possible key is held");
    assert_eq!(m.held(), "sk-proj-Ab3dE5".len());
    let out = m.push("gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5 done.");
    // `done.` could still be the start of an e-mail address (done.x@example.com).
    assert_eq!(out, "[REDACTED:OPENAI_KEY] ");
    // Prose is released up to the last word, which could still start an e-mail address.
    let out = m.push(" Hello world");
    assert_eq!(out, "done. Hello ");
    assert_eq!(m.finish(), "world");
}

/// Strings change, keys included (a key is text an upstream reads too: issue 22 found a key in
/// `metadata` forwarded unmasked); numbers and layout stay byte for byte.
#[test]
fn json_only_strings_change() {
    let e = engine();
    let rules = redact_all();
    let body = br#"{"model":"gpt","messages":[{"role":"user","content":"mail jane.doe@example.com\nplease"}],"jane.doe@example.com":1, "n": 4111111111111111, "s":"a\u0040b x\u0040example.com"}"#;
    let (out, tally) = json::mask_json(&e, body, &rules, None, false).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        r#"{"model":"gpt","messages":[{"role":"user","content":"mail [REDACTED:EMAIL]\nplease"}],"[REDACTED:EMAIL]":1, "n": 4111111111111111, "s":"a@b [REDACTED:EMAIL]"}"#
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(tally.counts.values().sum::<u64>(), 3);
    assert!(json::mask_json(&e, b"{\"a\": ", &rules, None, false).is_err());
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert!(
        json::mask_json(&e, deep.as_bytes(), &rules, None, false).is_err(),
        "nesting is bounded"
    );
}

#[test]
fn unbounded_custom_patterns_are_refused() {
    let bad = [CustomDetector {
        name: "x".into(),
        regex: Some("EMP-[0-9]+".into()),
        words: vec![],
    }];
    let err = Engine::new(&bad, [0; 32]).err().unwrap();
    assert!(err.contains("unbounded"), "{err}");
    let empty = [CustomDetector {
        name: "y".into(),
        regex: Some("a{0,3}".into()),
        words: vec![],
    }];
    assert!(Engine::new(&empty, [0; 32]).is_err());
}

/// At least 1 MiB of everyday agent traffic yields no finding at all.
#[test]
fn negative_corpus_has_no_false_positives() {
    let e = engine();
    let mut total = 0;
    for seed in 1..=4 {
        let body = corpus::chat_json(300 * 1024, seed);
        total += body.len();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in v["messages"].as_array().unwrap() {
            let text = m["content"].as_str().unwrap();
            let found = findings(&e, text);
            assert!(found.is_empty(), "false positives {found:?} in {text}");
        }
    }
    assert!(total >= 1 << 20, "{total} bytes");
}

fn chat_event(text: &str) -> String {
    let v = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

/// Parses an SSE byte stream into the concatenated content deltas (Chat Completions), checking
/// that every event is valid JSON or `[DONE]`.
fn chat_content(sse: &[u8]) -> (String, bool) {
    let text = std::str::from_utf8(sse).unwrap();
    let mut content = String::new();
    let mut done = false;
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("bad event {ev:?}"));
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(|t| t.as_str())
        {
            content.push_str(t);
        }
    }
    (content, done)
}

fn sse_through(
    e: &Arc<Engine>,
    rules: &Arc<Rules>,
    vault: Option<Arc<Vault>>,
    chunks: &[&[u8]],
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), vault, true);
    let mut outs: Vec<Vec<u8>> = chunks.iter().map(|c| m.push(c).unwrap()).collect();
    outs.push(m.finish());
    let all = outs.concat();
    (outs, all)
}

/// A secret the model emits, split across 2 and 3 SSE events at every offset, and the whole
/// stream cut into TCP chunks at every offset: the client never gets the value or a prefix of
/// it, the content equals whole-text masking, events stay valid, `[DONE]` is kept.
#[test]
fn sse_value_split_across_events_and_chunks() {
    let e = engine();
    let rules = Arc::new(redact_all());
    for (_, value) in POSITIVES.iter().filter(|p| {
        [
            "openai_key",
            "email",
            "credit_card",
            "jwt",
            "github_token",
            "iban",
        ]
        .contains(&p.0)
    }) {
        let text = format!("Your key is {value}. Keep it.");
        let (whole, _) = e.mask(&text, &rules, None, false);
        let head = &value[..8];
        let vstart = text.find(value).unwrap();
        let cuts: Vec<usize> = (vstart.saturating_sub(1)..=vstart + value.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j > i) {
                let stream = format!(
                    "{}{}{}{}data: [DONE]\n\n",
                    chat_event(&text[..i]),
                    chat_event(&text[i..j]),
                    chat_event(&text[j..]),
                    chat_event("")
                );
                let (outs, all) = sse_through(&e, &rules, None, &[stream.as_bytes()]);
                let (content, done) = chat_content(&all);
                assert_eq!(content, whole, "{value} cut at {i},{j}");
                assert!(done);
                assert!(
                    !String::from_utf8_lossy(&outs.concat()).contains(head),
                    "{value} leaked at {i},{j}"
                );
            }
        }
        // The same stream in TCP chunks cut at every byte offset (two chunks).
        let stream = format!(
            "{}{}data: [DONE]\n\n",
            chat_event(&text[..vstart + 5]),
            chat_event(&text[vstart + 5..])
        );
        for k in 1..stream.len() {
            let (outs, all) = sse_through(
                &e,
                &rules,
                None,
                &[&stream.as_bytes()[..k], &stream.as_bytes()[k..]],
            );
            assert_eq!(chat_content(&all).0, whole, "{value} tcp cut at {k}");
            assert!(!String::from_utf8_lossy(&outs[0]).contains(head));
        }
    }
}

#[test]
fn sse_restores_placeholders_split_across_events() {
    let e = engine();
    let vault = Arc::new(Vault::default());
    let p = vault.placeholder_for("EMAIL", "jane.doe@example.com");
    let rules = Arc::new(redact_all());
    let text = format!("I will write to {p} today.");
    for i in 1..text.len() {
        let stream = format!(
            "{}{}data: [DONE]\n\n",
            chat_event(&text[..i]),
            chat_event(&text[i..])
        );
        let (_, all) = sse_through(&e, &rules, Some(vault.clone()), &[stream.as_bytes()]);
        assert_eq!(
            chat_content(&all).0,
            "I will write to jane.doe@example.com today.",
            "cut at {i}"
        );
    }
}

#[test]
fn sse_responses_and_anthropic_formats() {
    let e = engine();
    let rules = Arc::new(redact_all());
    let key = POSITIVES.iter().find(|p| p.0 == "openai_key").unwrap().1;
    let (a, b) = key.split_at(12);
    let responses = format!(
        "event: response.output_text.delta\ndata: {}\n\nevent: response.output_text.delta\ndata: {}\n\nevent: response.output_text.done\ndata: {}\n\n",
        serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": format!("key {a}")}),
        serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": format!("{b} ok")}),
        serde_json::json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": format!("key {key} ok")}),
    );
    let (_, all) = sse_through(&e, &rules, None, &[responses.as_bytes()]);
    let out = String::from_utf8(all).unwrap();
    assert!(!out.contains(&key[..8]), "{out}");
    assert!(out.contains("event: response.output_text.done"));
    let deltas: String = out
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["type"] == "response.output_text.delta")
        .map(|v| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, "key [REDACTED:OPENAI_KEY] ok");
    assert!(
        out.contains(r#""text":"key [REDACTED:OPENAI_KEY] ok""#),
        "{out}"
    );

    let anthropic = format!(
        "event: content_block_delta\ndata: {}\n\nevent: content_block_delta\ndata: {}\n\nevent: content_block_stop\ndata: {}\n\n",
        serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("key {a}")}}),
        serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": b}}),
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    );
    let (_, all) = sse_through(&e, &rules, None, &[anthropic.as_bytes()]);
    let out = String::from_utf8(all).unwrap();
    assert!(!out.contains(&key[..8]), "{out}");
    let text: String = out
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "key [REDACTED:OPENAI_KEY]");
    assert!(
        out.trim_end()
            .ends_with(r#"{"index":0,"type":"content_block_stop"}"#)
            || out.contains("content_block_stop")
    );
}

/// `mask_body`'s shortcut (one pass over the raw body, skipped walk) gives exactly what the
/// walk over every value gives: clean bodies, findings, JSON escapes that hide or form a
/// value, text and binary bodies, and a custom pattern anchored to a whole value (which only
/// the per-value walk can see, so the shortcut must be off).
#[test]
fn mask_body_shortcut_equals_the_walk() {
    let anchored = Arc::new(
        Engine::new(
            &[CustomDetector {
                name: "ticket".into(),
                regex: Some("^ACME-[0-9]{4}$".into()),
                words: vec![],
            }],
            [7; 32],
        )
        .unwrap(),
    );
    // The anchored pattern is still applied to the whole value.
    let anchored_out = anchored
        .mask_body(br#"{"content":"ACME-1234"}"#, &redact_all())
        .unwrap();
    assert!(!anchored_out.contains("ACME-1234"));
    assert!(engine().unanchored);
    assert!(!anchored.unanchored);
    let mut bodies: Vec<Vec<u8>> = vec![
        br#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#.to_vec(),
        br#"{"content":"ACME-1234"}"#.to_vec(),
        br#"{"content":"line one\nline two \"quoted\" \u0041KIAWD2FRLHBOX3PFQQM"}"#.to_vec(),
        br#"{"content":"AKIA\u0057D2FRLHBOX3PFQQM"}"#.to_vec(),
        br#"{"content":"4111 1111\n1111 1111"}"#.to_vec(),
        b"plain text with jane.doe@example.com in it".to_vec(),
        b"plain text with nothing".to_vec(),
        vec![0xff, 0xfe, b'{', b'}'],
        br#"{"a":"EMP-123456","b":"Project Bluebird"}"#.to_vec(),
        corpus::chat_json(8 * 1024, 3).into_bytes(),
    ];
    for (_, value) in POSITIVES {
        let v = serde_json::to_string(value).unwrap();
        bodies.push(format!(r#"{{"messages":[{{"content":{v}}}]}}"#).into_bytes());
        bodies.push(format!("text {value} text").into_bytes());
    }
    bodies.push(br#"{"content":"you wrote <EMAIL_1> and <PHONE_2>"}"#.to_vec());
    bodies.push(br#"{"content":"write to jane%40example.com"}"#.to_vec());
    bodies.push(br#"{"content":"write to jane&#64;example.com"}"#.to_vec());
    for e in [engine(), anchored] {
        for rules in [
            redact_all(),
            Rules::all(Action::Hash),
            Rules::all(Action::Pseudonymize),
        ] {
            for body in &bodies {
                assert_eq!(
                    e.mask_body(body, &rules).as_deref(),
                    e.mask_body_walk(body, &rules).as_deref(),
                    "{}",
                    String::from_utf8_lossy(body)
                );
                // The route's JSON masking takes the same shortcut (`mask_json`), restoring
                // pseudonyms too: the same as every string walked.
                if json::validate(body).is_err() {
                    continue;
                }
                for restore in [false, true] {
                    let (v1, v2) = (Vault::default(), Vault::default());
                    for v in [&v1, &v2] {
                        v.placeholder_for("EMAIL", "jane.doe@example.com");
                    }
                    let fast = json::mask_json(&e, body, &rules, Some(&v1), restore).unwrap();
                    let walked = json::mask_strings(&e, body, &rules, Some(&v2), restore).unwrap();
                    assert_eq!(fast.0, walked.0, "{}", String::from_utf8_lossy(body));
                    assert_eq!(fast.1.restored, walked.1.restored);
                }
            }
        }
    }
}

/// `any_candidate` searches long texts in two or four lanes: a value anywhere, across a seam,
/// at either end or at a lane's end, is found as a one-pass search finds it, and a clean text is
/// clean.
#[test]
fn lane_candidate_search_misses_nothing() {
    let e = engine();
    assert!(
        e.lane_overlap >= 60 && e.lane_overlap < 1000,
        "{}",
        e.lane_overlap
    );
    let filler = "lorem ipsum, dolor sit amet; ".repeat(110);
    for len in [
        LANES_FROM - 1,
        LANES_FROM,
        1501,
        LANES4_FROM - 1,
        LANES4_FROM,
        filler.len(),
    ] {
        let clean = &filler.as_bytes()[..len];
        assert!(!e.any_candidate(clean) && !e.any_candidate_one_pass(clean));
    }
    let values: Vec<String> = POSITIVES
        .iter()
        .map(|p| p.1)
        .chain(IN_CONTEXT.iter().map(|p| p.1))
        .map(|v| format!(" {v} "))
        .collect();
    let mut checked = 0;
    for v in values {
        for len in [LANES_FROM, 1501, LANES4_FROM - 1, LANES4_FROM, filler.len()] {
            // Every lane's start and end (with four lanes, or two below LANES4_FROM).
            let edges: Vec<usize> = if len >= LANES4_FROM {
                e.lane_spans::<4>(len)
                    .iter()
                    .flat_map(|r| [r.start, r.end])
                    .collect()
            } else {
                e.lane_spans::<2>(len)
                    .iter()
                    .flat_map(|r| [r.start, r.end])
                    .collect()
            };
            let near = |at: usize, edge: usize| at + v.len() + 2 >= edge && at <= edge + 2;
            for at in 0..=len - v.len() {
                if !(at % 41 == 0 || edges.iter().any(|&x| near(at, x)) || at + v.len() == len) {
                    continue;
                }
                let text = format!("{}{v}{}", &filler[..at], &filler[at..len - v.len()]);
                let v = v.trim();
                assert_eq!(text.len(), len);
                let one_pass = e.any_candidate_one_pass(text.as_bytes());
                assert!(one_pass, "{v:?} at {at} of {len}");
                assert_eq!(
                    e.any_candidate(text.as_bytes()),
                    one_pass,
                    "{v:?} at {at} of {len}"
                );
                checked += 1;
            }
            // Flush with the end of the text: found only at its end.
            let v = v.trim();
            let text = format!("{} {v}", &filler[..len - v.len() - 1]);
            assert!(
                e.any_candidate_one_pass(text.as_bytes()),
                "{v:?} at the end of {len}"
            );
            assert!(
                e.any_candidate(text.as_bytes()),
                "{v:?} at the end of {len}"
            );
        }
    }
    assert!(checked > 1000, "{checked}");
}

/// When the lanes' shared cache is cleared under them (it fills up), their states are gone: the
/// search falls back to one pass instead of stepping a stale state (a panic or a wrong answer).
#[test]
fn lanes_survive_their_cache_being_cleared() {
    let e = Engine::new(&[], [7; 32]).unwrap().with_tiny_lane_cache();
    let filler = "lorem ipsum, dolor sit amet; 12 ab: ".repeat(90);
    for v in [
        "AKIAWD2FRLHBOX3PFQQM",
        "4111 1111 1111 1111",
        "203.0.113.7",
        "",
    ] {
        for len in [LANES_FROM, 1501, LANES4_FROM, filler.len()] {
            for at in (0..len - v.len()).step_by(97) {
                let text = format!("{}{v}{}", &filler[..at], &filler[at..len - v.len()]);
                assert_eq!(
                    e.any_candidate(text.as_bytes()),
                    e.any_candidate_one_pass(text.as_bytes()),
                    "{v:?} at {at} of {len}"
                );
            }
        }
    }
}

#[test]
fn anchors_cover_every_builtin_and_refuse_what_they_cannot() {
    // Built-ins, and the test engine's custom regex and deny-list words: all covered (the
    // `Bearer` detector and the words by their leading literals).
    assert!(Engine::new(&[], [0; 32]).unwrap().anchors.is_some());
    assert!(engine().anchors.is_some());
    // A custom pattern that can match with no anchor byte and has no leading literal: the
    // engine walks every byte instead, and still finds everything.
    let loose = Engine::new(
        &[CustomDetector {
            name: "codename".into(),
            regex: Some("[a-z]{5}x[a-z]{5}".into()),
            words: vec![],
        }],
        [0; 32],
    )
    .unwrap();
    assert!(loose.anchors.is_none());
    let mut text = "lorem ipsum, dolor sit amet; ".repeat(20);
    assert!(!loose.any_candidate(text.as_bytes()));
    text.push_str(" abcdexfghij ");
    assert!(loose.any_candidate(text.as_bytes()));
}

#[test]
fn the_anchor_search_agrees_with_a_full_walk_on_mixed_texts() {
    // Texts of 256..4000 bytes put together from prose, JSON, anchor bytes on their own and
    // pieces of real values (whole, cut short, run together), so that windows start and end
    // inside values, touch, merge and give up; each is checked against one plain pass. A
    // custom pattern whose only anchor bytes come 51 bytes into it checks that a window
    // reaches back far enough.
    let mut custom = vec![CustomDetector {
        name: "late".into(),
        regex: Some("Z[a-z]{50}-[0-9]{3}".into()),
        words: vec![],
    }];
    custom.extend(engine_custom());
    let e = Engine::new(&custom, [7; 32]).unwrap();
    let mut pieces: Vec<String> = POSITIVES
        .iter()
        .map(|p| p.1)
        .chain(IN_CONTEXT.iter().map(|p| p.1))
        .flat_map(|v| {
            let cut = v.len() / 2;
            [v.to_string(), v[..cut].to_string(), v[cut..].to_string()]
        })
        .collect();
    for p in [
        "lorem ipsum dolor sit amet ",
        "The quick brown fox jumps over the lazy dog. ",
        r#"{"role":"user","content":"#,
        "\"},",
        " A ",
        "J",
        "7",
        "-",
        "_",
        "=",
        ":",
        "<",
        "+",
        " Bearer ",
        "bearer",
        "project bluebird",
        "Zabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx-123",
        "Zabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx",
        "\n",
    ] {
        for _ in 0..6 {
            pieces.push(p.to_string());
        }
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let (mut found, mut clean) = (0, 0);
    for _ in 0..3000 {
        let want = 256 + next(3800);
        let mut text = String::new();
        // Mostly prose, so that the anchors are few and the windows are used.
        while text.len() < want {
            if next(20) < 18 {
                text.push_str("lorem ipsum dolor sit amet consectetur adipiscing elit sed do ");
            } else {
                text.push_str(&pieces[next(pieces.len())]);
            }
        }
        let one_pass = e.any_candidate_one_pass(text.as_bytes());
        assert_eq!(e.any_candidate(text.as_bytes()), one_pass, "{text:?}");
        // The windows answered (rather than leaving it to the lanes): both ways, often.
        match e.around_anchors(text.as_bytes()) {
            Some(true) => found += 1,
            Some(false) => clean += 1,
            None => {}
        }
        if let Some(a) = e.around_anchors(text.as_bytes()) {
            // (The windows are the last part's: e-mail is searched on its own.)
            let last = &e.parts.last().unwrap().regex;
            assert_eq!(a, last.is_match(Input::new(&text)), "{text:?}");
        }
    }
    assert!(found > 300 && clean > 100, "{found} found, {clean} clean");
}

/// What a decision reads must be what the upstream reads: one structure, no key twice, no
/// deeper than the limit; escapes are valid.
#[test]
fn json_documents_the_gateway_cannot_read_alike_are_refused() {
    use json::JsonError;
    let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
    // n keys k0..; with Some((a, b)) key b is named ka again.
    let many = |n: usize, dup: Option<(usize, usize)>| {
        let keys: Vec<String> = (0..n)
            .map(|i| match dup {
                Some((a, b)) if i == b => format!("\"k{a}\":{i}"),
                _ => format!("\"k{i}\":{i}"),
            })
            .collect();
        format!("{{{}}}", keys.join(","))
    };
    type Expect = Result<(), fn(&JsonError) -> bool>;
    let table: Vec<(String, Expect)> = vec![
        (r#"{"a":1,"b":{"a":2}}"#.into(), Ok(())),
        (
            r#"{"tools":[1],"tools":[]}"#.into(),
            Err(|e| matches!(e, JsonError::DuplicateKey(k) if k == "tools")),
        ),
        (
            r#"{"a":{"x":1,"x":2}}"#.into(),
            Err(|e| matches!(e, JsonError::DuplicateKey(k) if k == "x")),
        ),
        (
            r#"{"t\u006fols":1,"tools":2}"#.into(),
            Err(|e| matches!(e, JsonError::DuplicateKey(_))),
        ),
        // Past 16 keys the check hashes: a duplicate found on either side of the switch.
        (many(40, None), Ok(())),
        (
            many(40, Some((3, 9))),
            Err(|e| matches!(e, JsonError::DuplicateKey(k) if k == "k3")),
        ),
        (
            many(40, Some((2, 16))),
            Err(|e| matches!(e, JsonError::DuplicateKey(k) if k == "k2")),
        ),
        (
            many(40, Some((20, 33))),
            Err(|e| matches!(e, JsonError::DuplicateKey(k) if k == "k20")),
        ),
        (deep(127), Ok(())),
        (deep(129), Err(|e| *e == JsonError::TooDeep)),
        (deep(10_000), Err(|e| *e == JsonError::TooDeep)),
        (
            r#"{"s":"\ud800"}"#.into(),
            Err(|e| matches!(e, JsonError::Invalid(_))),
        ),
        (
            r#"{"a":1} {"b":2}"#.into(),
            Err(|e| matches!(e, JsonError::Invalid(_))),
        ),
    ];
    for (doc, want) in table {
        let got = json::validate(doc.as_bytes());
        match (&got, want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(ok)) => assert!(ok(e), "{}: {e:?}", &doc[..doc.len().min(40)]),
            _ => panic!("{}: {got:?}", &doc[..doc.len().min(40)]),
        }
    }
}

/// Every value percent-encoded, `\u`-escaped or written with HTML references: found, replaced in
/// the same encoding (the text around it unchanged), and a stream cut at every offset gives the
/// same text.
#[test]
fn encoded_values_are_found_and_replaced_in_their_encoding() {
    let e = engine();
    let rules = Arc::new(redact_all());
    let pct = |v: &str| -> String {
        v.bytes()
            .map(|b| match b.is_ascii_alphanumeric() {
                true => (b as char).to_string(),
                false => format!("%{b:02X}"),
            })
            .collect()
    };
    let uesc = |v: &str| -> String {
        v.chars()
            .map(|c| match c.is_ascii_alphanumeric() {
                true => c.to_string(),
                false => format!("\\u{:04x}", c as u32),
            })
            .collect()
    };
    let html = |v: &str| -> String {
        v.chars()
            .map(|c| match c {
                '@' => "&commat;".to_string(),
                '.' | '-' | '+' | ':' | ' ' | '/' | '_' => format!("&#{};", c as u32),
                c => c.to_string(),
            })
            .collect()
    };
    type Encoder = fn(&str) -> String;
    let encoders: [(&str, Encoder); 3] = [("percent", pct), ("\\u", uesc), ("html", html)];
    for (det, value) in POSITIVES {
        for (name, enc) in &encoders {
            let encoded = enc(value);
            let text = format!("see {encoded} here");
            let (whole, _) = e.mask(&text, &rules, None, false);
            let view = encoded::decode(whole.as_bytes())
                .map(|d| String::from_utf8_lossy(&d.text).into_owned())
                .unwrap_or_else(|| whole.clone());
            assert!(
                !view.contains(value) && !whole.contains(&encoded),
                "{det} {name}: {whole}"
            );
            assert!(
                whole.starts_with("see ") && whole.ends_with(" here"),
                "{det} {name}: {whole}"
            );
            if *name == "percent" && encoded != *value {
                assert!(whole.contains("%5BREDACTED%3A"), "{det}: {whole}");
            }
            for i in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let (outs, got) = stream_all(&e, &[&text[..i], &text[i..]], &rules, None, false);
                assert_eq!(got, whole, "{det} {name} split at {i}");
                assert!(!outs[0].contains(&encoded), "{det} {name} split at {i}");
            }
        }
    }
}

/// The strings at `pointer` of every JSON event (SSE `data:` or NDJSON line) of `stream` of
/// `kind` (any when empty), joined, checking that every event is valid JSON or `[DONE]`.
fn joined(stream: &[u8], pointer: &str, kind: &str) -> String {
    let text = std::str::from_utf8(stream).unwrap();
    let mut out = String::new();
    let docs: Vec<(String, &str)> = if text.contains("data:") {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|ev| {
                let k = ev
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("")
                    .to_string();
                let d = ev
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("bad event {ev:?}"));
                (k, d)
            })
            .collect()
    } else {
        text.lines().map(|l| (String::new(), l)).collect()
    };
    for (k, d) in docs {
        if d == "[DONE]" || (!kind.is_empty() && k != kind) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        if let Some(t) = v.pointer(pointer).and_then(|t| t.as_str()) {
            out.push_str(t);
        }
    }
    out
}

/// A stream of events built from pieces of a text, each piece put in `make`'s document.
fn events_of(pieces: &[&str], kind: &str, make: &dyn Fn(&str) -> serde_json::Value) -> String {
    let mut s = String::new();
    for p in pieces {
        if !kind.is_empty() {
            s.push_str(&format!("event: {kind}\n"));
        }
        s.push_str(&format!("data: {}\n\n", make(p)));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

fn lines_through(e: &Arc<Engine>, rules: &Arc<Rules>, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut m = lines::LinesMasker::new(e.clone(), rules.clone(), None, false, false);
    let mut outs: Vec<Vec<u8>> = chunks.iter().map(|c| m.push(c).unwrap()).collect();
    outs.push(m.finish());
    let all = outs.concat();
    (outs, all)
}

/// Every string of every event is masked, whatever the schema, and a value split across
/// events of one path at every offset (2 and 3 pieces) is caught with no prefix sent first:
/// an unknown sibling of a Chat delta, Responses reasoning summaries, an unknown event type with
/// arrays in its path, NDJSON lines (Ollama), percent-encoded text.
#[test]
fn every_string_of_every_event_is_masked_split_safe() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(redact_all());
    type Make = fn(&str) -> serde_json::Value;
    // (name, SSE event name or "" , document, pointer of the text, NDJSON instead of SSE)
    let shapes: Vec<(&str, &str, Make, &str, bool)> = vec![
        (
            "chat sibling",
            "",
            |t| json!({"id": "chatcmpl-9", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": "", "note": t}, "finish_reason": null}]}),
            "/choices/0/delta/note",
            false,
        ),
        (
            "reasoning summary",
            "response.reasoning_summary_text.delta",
            |t| json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": t}),
            "/delta",
            false,
        ),
        (
            "unknown type, arrays",
            "",
            |t| json!({"type": "vendor.stream.delta", "parts": [{"x": 1}, {"x": 2}, {"meta": {"z": t}}]}),
            "/parts/2/meta/z",
            false,
        ),
        (
            "ndjson",
            "",
            |t| json!({"model": "llama3", "message": {"role": "assistant", "content": t}, "done": false}),
            "/message/content",
            true,
        ),
    ];
    let values = [
        "jane.doe@example.com",
        "jane.doe%40example.com",
        "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7sU9wY1aC3eG5iK7mO9qS1uW3yA5",
        "4111 1111 1111 1111",
    ];
    for (name, kind, make, pointer, ndjson) in &shapes {
        for value in values {
            let text = format!("Reach me: {value} soon.");
            let (whole, _) = e.mask(&text, &rules, None, false);
            assert!(!whole.contains(value), "{whole}");
            let head = &value[..6];
            let vstart = text.find(value).unwrap();
            let cuts: Vec<usize> = (vstart..=vstart + value.len()).collect();
            let mut splits: Vec<Vec<usize>> = cuts.iter().map(|&i| vec![i]).collect();
            for (a, &i) in cuts.iter().enumerate().step_by(3) {
                for &j in cuts[a + 1..].iter().step_by(4) {
                    splits.push(vec![i, j]);
                }
            }
            for cut in splits {
                let mut pieces = Vec::new();
                let mut at = 0;
                for &c in &cut {
                    pieces.push(&text[at..c]);
                    at = c;
                }
                pieces.push(&text[at..]);
                let (outs, all) = if *ndjson {
                    let s: String = pieces.iter().map(|p| format!("{}\n", make(p))).collect();
                    let chunks: Vec<String> =
                        pieces.iter().map(|p| format!("{}\n", make(p))).collect();
                    let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
                    let r = lines_through(&e, &rules, &refs);
                    assert_eq!(r.1, lines_through(&e, &rules, &[s.as_bytes()]).1);
                    r
                } else {
                    let s = events_of(&pieces, kind, &|t| make(t));
                    // One event per chunk, as a model server sends them.
                    let chunks: Vec<&[u8]> =
                        s.split_inclusive("\n\n").map(|c| c.as_bytes()).collect();
                    sse_through(&e, &rules, None, &chunks)
                };
                let got = joined(&all, pointer, kind);
                assert_eq!(got, whole, "{name}: {value} cut at {cut:?}");
                for (k, o) in outs.iter().enumerate().take(cut.len()) {
                    assert!(
                        !String::from_utf8_lossy(o).contains(head),
                        "{name}: {value} cut at {cut:?}: prefix sent in chunk {k}"
                    );
                }
            }
        }
    }
}

/// The piece of content in the chunk that carries `finish_reason` is masked (whole, and as the
/// end of a value split across events), and held text goes out in that chunk, not after it.
#[test]
fn content_in_the_finish_chunk_is_masked() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(redact_all());
    let chunk = |t: &str, fin: Option<&str>| json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": fin}]});
    let s = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk("Write to jane.doe@exa", None),
        chunk("mple.com and ask for ssn 536-22-1234", Some("stop"))
    );
    let (_, all) = sse_through(&e, &rules, None, &[s.as_bytes()]);
    let out = String::from_utf8(all).unwrap();
    assert!(!out.contains("exa") || !out.contains("mple.com"), "{out}");
    assert!(!out.contains("536-22-1234"), "{out}");
    assert_eq!(
        joined(out.as_bytes(), "/choices/0/delta/content", ""),
        "Write to [REDACTED:EMAIL] and ask for ssn [REDACTED:US_SSN]"
    );
    // Nothing after the finish chunk but [DONE].
    let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{out}");
    assert!(events[1].contains("\"finish_reason\":\"stop\""), "{out}");
}

/// Identifiers are never cut or moved between events even when they end like the start of a
/// value (digits), and one-shot events (`response.completed`) are masked whole, never repeated.
#[test]
fn identifiers_stay_whole_and_one_shot_events_are_not_repeated() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(redact_all());
    let chunk = |t: &str| json!({"id": "chatcmpl-AB12 555", "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_44709d6fcb", "choices": [{"index": 0, "delta": {"content": t}}]});
    let mut s = String::new();
    for t in ["Hello", " there", ", call 415"] {
        s.push_str(&format!("data: {}\n\n", chunk(t)));
    }
    let completed = json!({"type": "response.completed", "response": {"id": "resp_1", "output": [{"content": [{"type": "output_text", "text": "mail jane.doe@example.com or 415 555 2671"}]}]}});
    s.push_str(&format!("event: response.completed\ndata: {completed}\n\n"));
    let chunks: Vec<&[u8]> = s.split_inclusive("\n\n").map(|c| c.as_bytes()).collect();
    let (outs, all) = sse_through(&e, &rules, None, &chunks);
    let out = String::from_utf8(all).unwrap();
    for o in &outs[..3] {
        let o = String::from_utf8_lossy(o);
        for ev in o.split("\n\n").filter(|x| !x.is_empty()) {
            assert!(ev.contains("\"id\":\"chatcmpl-AB12 555\""), "{ev}");
            assert!(ev.contains("\"model\":\"gpt-4o-2024-08-06\""), "{ev}");
        }
    }
    assert_eq!(out.matches("response.completed").count(), 2, "{out}"); // event: line + type
    assert!(
        out.contains("mail [REDACTED:EMAIL] or [REDACTED:PHONE]"),
        "{out}"
    );
    assert_eq!(
        joined(out.as_bytes(), "/choices/0/delta/content", ""),
        "Hello there, call 415"
    );
}

/// The route's own credential split across events of a channel, at every offset: starred whole,
/// no prefix of it sent before the channel's next text shows whether it continues.
#[test]
fn the_route_key_split_across_events_is_starred() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(Rules::all(Action::Allow));
    // Base64 with `/`: the masker holds back only the word after a `/`, not the whole key.
    let key = "q7Lk2/Vn9+Xc4Wp8/Tz1Rb6Hs3Qa5==";
    let set = injected::SecretSet::new([key.to_string()]).unwrap();
    let text = format!("echo {key} done");
    let at = text.find(key).unwrap();
    for cut in at + 1..at + key.len() {
        let mut m =
            sse::SseMasker::new(e.clone(), rules.clone(), None, false).with_secrets(set.clone());
        let ev = |t: &str| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": t}}]})
            )
        };
        let first = m.push(ev(&text[..cut]).as_bytes()).unwrap();
        // (Prefixes shorter than 4 bytes occur in the JSON framing itself.)
        if cut - at >= 4 {
            assert!(
                !String::from_utf8_lossy(&first).contains(&key[..cut - at]),
                "{cut}"
            );
        }
        let mut all = first;
        all.extend(m.push(ev(&text[cut..]).as_bytes()).unwrap());
        all.extend(m.finish());
        let got = joined(&all, "/choices/0/delta/content", "");
        assert_eq!(got, format!("echo {} done", "*".repeat(key.len())), "{cut}");
    }
}

/// A hostile upstream cannot make the masker hold or repeat much: channels are bounded (leaves
/// beyond are masked value by value), and the copies that carry held text are skeletons, not
/// copies of a large event.
#[test]
fn channels_are_bounded_and_copies_are_small() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(redact_all());
    // 4,000 strings (under MAX_LEAVES) each ending like the start of a number: more open
    // texts than MAX_CHANNELS, so the stream is refused (ended with an error by the caller).
    let many: Vec<String> = (0..4_000).map(|i| format!("v{i} 41")).collect();
    let big = json!({"choices": [{"index": 0, "delta": {"parts": many}}]});
    let s = format!("data: {big}\n\n");
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, false);
    assert!(matches!(
        m.push(s.as_bytes()),
        Err(sse::SseError::Unmaskable(_))
    ));
    assert!(
        m.held() <= documents::MAX_CHANNELS * e.max_len(),
        "{}",
        m.held()
    );
    // A held value in an event that also carries half a megabyte of numbers: the copy that
    // carries it at the end is small.
    let numbers: Vec<u64> = (0..100_000).collect();
    let ev = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "call 415"}, "logits": numbers}]});
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, false);
    m.push(format!("data: {ev}\n\n").as_bytes()).unwrap();
    let tail = String::from_utf8(m.finish()).unwrap();
    assert!(tail.contains("415") && tail.len() < 200, "{tail}");
    // Past MAX_LEAVES a document is refused, after being masked value by value (in time linear
    // in its size, even with `index` fields in reverse order).
    let huge: Vec<serde_json::Value> = (0..20_000u64)
        .rev()
        .map(|i| json!({"index": i, "t": if i == 7 { "jane.doe@example.com" } else { "x" }}))
        .collect();
    let ev = json!({"choices": [{"index": 0, "delta": {"items": huge}}]});
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, false);
    let r = m.push(format!("data: {ev}\n\n").as_bytes());
    assert!(matches!(r, Err(sse::SseError::Unmaskable(_))), "{r:?}");
}

/// Stream shapes a red team used to get a split key past the document masker (each reached the
/// agent unmasked at 2f5ec0f, and an SDK joined it): CR line ends, a BOM, values in `event:`/`id:`
/// lines and comments, two elements with the same `index`, an empty or unknown chunk between the
/// halves. The agent's view (every choice's content joined, as an SDK does) never holds the key.
#[test]
fn red_team_stream_shapes_are_masked() {
    use serde_json::json;
    let e = engine();
    let rules = Arc::new(redact_all());
    let (a, b) = ("sk-ant-api03-AbCd", "EfGhIjKlMnOpQrStUvWxYz0123456789");
    let key = format!("{a}{b}");
    let cc = |t: &str| {
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": t}}]}).to_string()
    };
    let dup = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "x"}}, {"index": 0, "delta": {"content": format!("key {key}")}}]}).to_string();
    let streams: Vec<(&str, String)> = vec![
        (
            "bare CR",
            format!(": c\rdata: {}\n\n", cc(&format!("key {key}"))),
        ),
        (
            "CR events",
            format!(
                "data: {}\r\rdata: {}\r\r",
                cc(&format!("key {a}")),
                cc(&format!("{b} end"))
            ),
        ),
        (
            "BOM",
            format!("\u{feff}data: {}\n\n", cc(&format!("key {key}"))),
        ),
        (
            "event and id lines",
            format!("event: {key}\nid: {key}\ndata: {}\n\n: {key}\n\n", cc("hi")),
        ),
        ("duplicate index", format!("data: {dup}\n\n")),
        (
            "empty delta between",
            format!(
                "data: {}\n\ndata: {}\n\ndata: {}\n\n",
                cc(&format!("key {a}")),
                json!({"choices": [{"index": 0, "delta": {}}]}),
                cc(&format!("{b} end"))
            ),
        ),
        (
            "null content between",
            format!(
                "data: {}\n\ndata: {}\n\ndata: {}\n\n",
                cc(&format!("key {a}")),
                json!({"choices": [{"index": 0, "delta": {"content": null}}]}),
                cc(&format!("{b} end"))
            ),
        ),
        (
            "unknown event between",
            format!(
                "data: {}\n\ndata: {}\n\ndata: {}\n\n",
                cc(&format!("key {a}")),
                json!({"type": "pong"}),
                cc(&format!("{b} end"))
            ),
        ),
    ];
    for (name, s) in streams {
        let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, false);
        let mut out = Vec::new();
        for ev in s.as_bytes().chunks(7) {
            out.extend(m.push(ev).unwrap());
        }
        out.extend(m.finish());
        let text = String::from_utf8(out).unwrap();
        // What an SDK joins: every choice's content, in order (events split on CR/LF alike).
        let mut joined = String::new();
        for ev in text.replace('\r', "\n").split("\n\n") {
            for l in ev.lines() {
                if let Some(Ok(v)) = l
                    .strip_prefix("data: ")
                    .map(serde_json::from_str::<serde_json::Value>)
                {
                    for c in v["choices"].as_array().into_iter().flatten() {
                        joined.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        assert!(
            !joined.contains(&key) && !joined.contains(a) && !joined.contains(b),
            "{name}: {joined}"
        );
        assert!(!text.contains(a) && !text.contains(b), "{name}: {text}");
        assert!(
            !text.contains('\r') && !text.contains('\u{feff}'),
            "{name}: {text:?}"
        );
    }
    // More open texts than the bound: the stream is refused, not masked value by value.
    let pad: Vec<serde_json::Value> = (0..documents::MAX_CHANNELS + 1)
        .map(|i| json!({"index": i, "s": ""}))
        .collect();
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, false);
    let r = m.push(format!("data: {}\n\n", json!({"pad": pad})).as_bytes());
    assert!(matches!(r, Err(sse::SseError::Unmaskable(_))), "{r:?}");
}

/// MCP's SSE events are JSON-RPC messages, each whole: with `whole_events` every event goes out
/// masked as soon as it is complete, none of its strings held for or joined with the next event
/// (the stream masker would hold `"2.0"` of `jsonrpc` waiting for more and empty it).
#[test]
fn whole_events_are_masked_whole_and_nothing_is_held() {
    use serde_json::{json, Value};
    let e = engine();
    let rules = Arc::new(redact_all());
    let msg = |id: u64, text: &str| json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}});
    let events = [
        msg(1, "owner jane.doe@example.com"),
        msg(2, "call 415"),
        msg(3, " 555 2671"),
    ];
    let mut m = sse::SseMasker::new(e.clone(), rules.clone(), None, true).whole_events();
    for (i, ev) in events.iter().enumerate() {
        let out = m
            .push(format!("event: message\ndata: {ev}\n\n").as_bytes())
            .unwrap();
        assert_eq!(m.held(), 0, "event {i}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("event: message\ndata: "), "{text}");
        let v: Value =
            serde_json::from_str(text.trim_end()["event: message\ndata: ".len()..].trim()).unwrap();
        assert_eq!(v["jsonrpc"], "2.0", "{text}");
        assert_eq!(v["id"], json!(i as u64 + 1));
        if i == 0 {
            assert_eq!(v["result"]["content"][0]["text"], "owner [REDACTED:EMAIL]");
        } else {
            // Messages are not one text: their pieces are not joined into a phone number.
            assert_eq!(
                v["result"]["content"][0]["text"],
                events[i]["result"]["content"][0]["text"]
            );
        }
    }
    assert!(m.finish().is_empty());
}
