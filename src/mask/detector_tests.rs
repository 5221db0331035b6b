//! The detectors of issue 23 (SSN in every area after a context word, ITINs, documented example
//! credentials, Azure, GCP, Hugging Face, npm, PyPI, GitLab, Twilio, SendGrid, more IBAN and
//! phone formats): what each finds, in its context, and the near misses it must leave alone.

use super::tests::findings as found;
use super::*;
use std::sync::Arc;

fn engine() -> Engine {
    Engine::new(&[], [7; 32]).unwrap()
}

/// (detector, text, value): each text yields exactly this one finding.
const FOUND: &[(&str, &str, &str)] = &[
    // SSN-shaped numbers after a context word: any area, three printed forms.
    ("us_ssn", "SSN: 912-34-5678", "912-34-5678"),
    ("us_ssn", "ssn=666123456", "666123456"),
    ("us_ssn", "Social Security number 000 12 3456.", "000 12 3456"),
    ("us_ssn", "the customer's SSN is 123-45-6789", "123-45-6789"),
    ("us_ssn", r#"{"user_ssn": "536221234"}"#, "536221234"),
    ("us_ssn", "TIN 536-22-1234", "536-22-1234"),
    ("us_ssn", "taxpayer John Q. Public, 912 40 1234", "912 40 1234"),
    // ITIN context with a number outside the ITIN groups: still SSN-shaped with a context word.
    ("us_ssn", "ITIN: 912-40-1234", "912-40-1234"),
    // Alone, an issued SSN as before.
    ("us_ssn", "ref 536-22-1234 ok", "536-22-1234"),
    // ITINs: alone when dashed, in any printed form after a context word.
    ("us_itin", "number 912-70-1234 on file", "912-70-1234"),
    ("us_itin", "ITIN 900501234", "900501234"),
    ("us_itin", "Tax ID: 999 99 0001", "999 99 0001"),
    ("us_itin", "SSN 965-88-4321", "965-88-4321"),
    // Secrets.
    (
        "aws_access_key_id",
        "key AKIAWD2FRLHBOX3PFQQM here",
        "AKIAWD2FRLHBOX3PFQQM",
    ),
    (
        "aws_secret_key",
        "aws_secret_access_key = Bws/P0RVC2gWOoihqoxo3KqTvmUQL6AYKeue6Yfq",
        "Bws/P0RVC2gWOoihqoxo3KqTvmUQL6AYKeue6Yfq",
    ),
    (
        "azure_storage_key",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==;EndpointSuffix=core.windows.net",
        "LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==",
    ),
    (
        "azure_storage_key",
        r#"AZURE_STORAGE_KEY: "LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==""#,
        "LkcN2WTqyI4bC6dnk/1c3ThAeVwBUVKOk8w95uxwPzokm2eJJQnVKN6BHtnp/EQsmXv5eh1YcuCbCh4lScW+ye==",
    ),
    (
        "azure_client_secret",
        "(use this one: eqD8Q~z6LBlnvEGm1vb4R1v0iEL20MgKndrQ3Fvk)",
        "eqD8Q~z6LBlnvEGm1vb4R1v0iEL20MgKndrQ3Fvk",
    ),
    (
        "gcp_service_account",
        r#"{"type": "service_account", "private_key_id": "a37fe80ac04c605ed2d8f598271fc0ed9adb98a5", "client_id": "1"}"#,
        "a37fe80ac04c605ed2d8f598271fc0ed9adb98a5",
    ),
    (
        "gcp_service_account",
        r#"args: "{\"private_key_id\":\"a37fe80ac04c605ed2d8f598271fc0ed9adb98a5\"}""#,
        "a37fe80ac04c605ed2d8f598271fc0ed9adb98a5",
    ),
    // A service account's key inside a string literal: its line breaks are `\n` escapes.
    (
        "private_key",
        r#""private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCy1yG25m+cplha\n8h1Jmd9m15gGabp2Uk5B\/lgHglYiE+TRH7GvLTg30x9FIoarZR5SLKWaSQ50JPNL\n-----END PRIVATE KEY-----\n", "client_email": "x""#,
        r"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCy1yG25m+cplha\n8h1Jmd9m15gGabp2Uk5B\/lgHglYiE+TRH7GvLTg30x9FIoarZR5SLKWaSQ50JPNL\n-----END PRIVATE KEY-----",
    ),
    (
        "huggingface_token",
        "HF_TOKEN=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 poetry run",
        "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",
    ),
    (
        "huggingface_token",
        "use_auth_token='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')",
        "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",
    ),
    (
        "npm_token",
        "npm config set //registry.npmjs.org/:token npm_OEcAZfrmxKjN1XflVGzNRxsfN6SPMkch6Vlb",
        "npm_OEcAZfrmxKjN1XflVGzNRxsfN6SPMkch6Vlb",
    ),
    (
        "pypi_token",
        "twine upload -u __token__ -p pypi-AgEIcHlwaS5vcmcrrL8LgfnPdrSluBA2OC3UCN6qTWNf-YSAuAO02hfO28u1UFOeL5wZV_c2x4y3i6aYWGhe1",
        "pypi-AgEIcHlwaS5vcmcrrL8LgfnPdrSluBA2OC3UCN6qTWNf-YSAuAO02hfO28u1UFOeL5wZV_c2x4y3i6aYWGhe1",
    ),
    (
        "gitlab_token",
        "git clone https://oauth2:glpat-yw8VQTQ3rUkjMeWLZGDI@gitlab.example.com/x.git",
        "glpat-yw8VQTQ3rUkjMeWLZGDI",
    ),
    // Routable: the `.` part is the token's; a `.` ending the sentence is not.
    (
        "gitlab_token",
        "token glpat-Wh7eBERjPZthNbWHMnIPm2wYtrT.01s1588sv.",
        "glpat-Wh7eBERjPZthNbWHMnIPm2wYtrT.01s1588sv",
    ),
    (
        "gitlab_token",
        "export GITLAB_RUNNER=glrt-yw8VQTQ3rUkjMeWLZGDI.",
        "glrt-yw8VQTQ3rUkjMeWLZGDI",
    ),
    (
        "twilio_key",
        "twilio sid SK074243983221f188d062456f1480c1d1",
        "SK074243983221f188d062456f1480c1d1",
    ),
    (
        "twilio_key",
        "account AC0440bd0f2ea9156934543d65628343db.",
        "AC0440bd0f2ea9156934543d65628343db",
    ),
    // The head ends at the first digit: a SID whose first hex digits are letters.
    (
        "twilio_key",
        "SKfeedbeefcab9243983221f188d062456",
        "SKfeedbeefcab9243983221f188d062456",
    ),
    (
        "sendgrid_key",
        "the SendGrid one is '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'",
        "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",
    ),
    // More IBAN countries (registry lengths) and phone formats.
    (
        "iban",
        "pay to RU0204452560040702810412345678901 today",
        "RU0204452560040702810412345678901",
    ),
    (
        "iban",
        "LC55 HEMM 0001 0001 0012 0012 0002 3015",
        "LC55 HEMM 0001 0001 0012 0012 0002 3015",
    ),
    (
        "iban",
        "YE15CBYE0001018861234567891234",
        "YE15CBYE0001018861234567891234",
    ),
    ("phone", "appelez le 06 12 34 56 78 demain", "06 12 34 56 78"),
    ("phone", "tél. 01.42.68.53.00", "01.42.68.53.00"),
    ("phone", "Tokyo office 03-1234-5678", "03-1234-5678"),
    ("phone", "Sydney 02 9876 5432", "02 9876 5432"),
];

/// Texts in which nothing may be found: documented example credentials and near misses of the
/// detectors above.
const NOTHING: &[&str] = &[
    // Documented examples (AWS's docs, jwt.io), as gitleaks leaves them.
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAI44QH8DHBEXAMPLE",
    "aws_secret_access_key=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
    "password=Zx9qR2mK7vEXAMPLE",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    // SSN-shaped without a context word: never-issued areas, fakes, non-ITIN 9XX groups.
    "912-34-5678 000-12-3456 666-12-3456 123-45-6789",
    "912-89-1234 912-93-1234 912-49-1234 912-66-1234",
    // Context word, but not nine digits in one printed form.
    "SSN 12345678, SSN: 1234567890, SSN 536-221234, SSN 536 22-1234",
    // Not a context word.
    "tinsel 536221234 and assn 536221234 and tinted 123456789",
    // The context is too far away (more than 32 bytes).
    "Your SSN is not needed for this form; the order number is 536221234",
    // Vendor-shaped, but placeholders, wrong lengths or wrong alphabets.
    "AccountKey=abc123; AccountKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
    "client_id bP88Q~xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
    r#""private_key_id": "abc123", commit a37fe80ac04c605ed2d8f598271fc0ed9adb98a5"#,
    "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx hf_requiredCharacteristicTypesForDisplayMetadata rhf_SponsoredProductsRemoteRHFSearchEXPSubsK",
    "npm_config_cache=/tmp npm_OEcAZfrmxKjN1XflVGzNRxsfN6 npm_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "pypi-AgEIcHlwaS5vcmcshort",
    "glpat-XXXXXXXXXXX-XXXXXXXX glpat-short",
    "SK074243983221f188d062456f1480c1d SKU-12345 ACME-9 AC0440bd0f2ea9156934543D65628343db",
    "SG.abc.def SG.iAWQmFsV26BuFQemqtiVee.5guHSA7",
    // Phone-like numbers that are not phones.
    "v0.1.2.3 06 12 34 56 0.5 12 34 56 78",
];

#[test]
fn new_detectors_find_their_values_in_context() {
    let e = engine();
    for (det, text, value) in FOUND {
        assert_eq!(
            found(&e, text),
            vec![(det.to_string(), value.to_string())],
            "{det}: {text}"
        );
    }
}

#[test]
fn documented_examples_and_near_misses_find_nothing() {
    let e = engine();
    for text in NOTHING {
        assert_eq!(found(&e, text), vec![], "{text}");
    }
}

/// The two entries of `us_ssn` and of `us_itin` are one detector to users: one name, one
/// placeholder label, one per-detector rule.
#[test]
fn a_detector_with_two_patterns_is_one_detector() {
    let e = engine();
    let mut rules = Rules::all(Action::Redact);
    rules.detectors.insert("us_ssn".into(), Action::Allow);
    let text = "SSN 912-34-5678 and 536-22-1234; ITIN 912-70-1234";
    let (out, tally) = e.mask(text, &rules, None, false);
    assert_eq!(
        out,
        "SSN 912-34-5678 and 536-22-1234; ITIN [REDACTED:US_ITIN]"
    );
    assert_eq!(tally.counts.len(), 1);
    let (out, tally) = e.mask(text, &Rules::all(Action::Redact), None, false);
    assert_eq!(
        out,
        "SSN [REDACTED:US_SSN] and [REDACTED:US_SSN]; ITIN [REDACTED:US_ITIN]"
    );
    assert_eq!(tally.counts[&("us_ssn".to_string(), "redact")], 2);
}

/// Each new value cut at every offset through the stream masker: the released text equals
/// whole-text masking and no piece released before the value is complete holds its first bytes.
#[test]
fn new_detectors_split_at_every_offset() {
    let e = Arc::new(engine());
    let rules = Arc::new(Rules::all(Action::Redact));
    for (det, text, value) in FOUND {
        let text = format!("Sure: {text} — ok.");
        let (whole, _) = e.mask(&text, &rules, None, false);
        assert!(!whole.contains(value), "{det}: {whole}");
        let vstart = text.find(value).unwrap();
        for i in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut m = stream::StreamMasker::new(e.clone(), rules.clone(), None, false);
            let first = m.push(&text[..i]);
            let rest = m.push(&text[i..]) + &m.finish();
            assert_eq!(first.clone() + &rest, whole, "{det} cut at {i}");
            // Before the value is whole, not one byte of it is released.
            if i < vstart + value.len() {
                assert!(
                    first.len() <= vstart || !text.starts_with(&first),
                    "{det}: {:?} released at cut {i}",
                    &first[vstart..]
                );
            }
        }
    }
}

/// The validators, on their own.
#[test]
fn validators() {
    use validate::*;
    for ok in ["912-70-1234", "900 50 1234", "999991234", "965-88-0000"] {
        assert!(itin(ok), "{ok}");
    }
    for bad in [
        "912-66-1234",
        "912-89-1234",
        "912-93-1234",
        "812-70-1234",
        "912-701234",
        "912 70-1234",
        "91-270-1234",
    ] {
        assert!(!itin(bad), "{bad}");
    }
    for ok in ["000-00-0000", "912 34 5678", "666123456"] {
        assert!(ssn_in_context(ok), "{ok}");
    }
    for bad in [
        "12345678",
        "1234567890",
        "123-456789",
        "12-345-6789",
        "123 45-6789",
    ] {
        assert!(!ssn_in_context(bad), "{bad}");
    }
    assert!(documented_example("AKIAIOSFODNN7EXAMPLE") && !documented_example("EXAMPLE"));
    assert!(!aws_key_id("AKIAIOSFODNN7EXAMPLE") && aws_key_id("AKIAWD2FRLHBOX3PFQQM"));
    assert!(!high_entropy_secret(
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    ));
    assert!(!twilio_sid("SK074243983221f188d062456f1480c1d") && !twilio_sid("SK"));
    assert!(!sendgrid_key("SG.a.b.c") && !huggingface_token("hf_short"));
}

/// More than 1 MiB of what agents and tools carry (lockfile hashes, image digests, manifests,
/// tracebacks, access logs, diffs, CSV, hex dumps, ids) yields no finding.
#[test]
fn agent_traffic_has_no_false_positives() {
    let e = engine();
    let mut total = 0;
    for seed in 1..=5 {
        let body = corpus::agent_traffic(256 * 1024, seed);
        total += body.len();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for m in v["messages"].as_array().unwrap() {
            let text = m["content"].as_str().unwrap();
            assert_eq!(found(&e, text), vec![], "in {text}");
        }
    }
    assert!(total >= 1 << 20, "{total} bytes");
    assert!(corpus::agent_traffic(64 * 1024, 9).contains("sha512-"));
}
