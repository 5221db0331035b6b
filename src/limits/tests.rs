use super::*;
use crate::config::Window;
use std::time::Duration;

fn config(extra: &str) -> Config {
    let text = config_text(extra);
    Config::parse(&text, std::path::Path::new("t.yaml")).expect("config parses")
}

fn config_text(extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: agents, address: "127.0.0.1:8443", tls: {{}} }}
admin: {{ address: "127.0.0.1:9090" }}
routes:
  - {{ name: openai, match: {{ path_prefix: /v1/ }}, upstream: {{ url: "https://api.openai.com" }}, access: {{ groups: [agents] }} }}
  - {{ name: other, match: {{ path_prefix: /x/ }}, upstream: {{ url: "https://api.openai.com" }}, access: {{ groups: [agents] }} }}
identity:
  service_accounts:
    - {{ name: ci, token_sha256: 52429752765c16a4897560e0f4b0a373ee9dfab7da0c8ca37a09c9e62cccd576, groups: [agents] }}
{extra}
"#
    )
}

fn limiter(extra: &str) -> Limiter {
    Limiter::new(&config(extra), Ledger::in_memory()).expect("limiter")
}

/// Admission, waited for (the embedded store answers at once).
fn admit(l: &Limiter, c: &Caller<'_>, a: Option<&Asked>, now: i64) -> Result<Ticket, Refusal> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(l.admit(c, a, now)).map_err(|d| match d {
        Denied::Limit(r) => r,
        Denied::StoreUnavailable(e) => panic!("{e}"),
    })
}

fn caller<'a>(identity: &'a str, groups: &'a [String], route: &'a str) -> Caller<'a> {
    Caller {
        identity,
        groups,
        route,
    }
}

fn asked(model: &str, max: Option<u64>, bytes: u64) -> Asked {
    Asked {
        model: Some(model.into()),
        max_output: max,
        bytes,
        ..Asked::default()
    }
}

const T0: i64 = 1_780_000_000_000; // 2026-05-28T20:26:40Z

#[test]
fn windows_are_aligned_and_calendar_ones_follow_the_time_zone() {
    let utc = TimeZone::UTC;
    let paris = TimeZone::get("Europe/Paris").unwrap();
    let minute = Window::Every(Duration::from_secs(60));
    // 2026-12-05T02:30:10.5Z
    let now = 1_796_437_810_500;
    assert_eq!(
        window::bounds(minute, now, &utc),
        (1_796_437_800_000, 1_796_437_860_000)
    );
    // A day in UTC, and in Paris (UTC+1 in December: the day began at 23:00Z the day before).
    assert_eq!(
        window::bounds(Window::Day, now, &utc),
        (1_796_428_800_000, 1_796_515_200_000)
    );
    assert_eq!(
        window::bounds(Window::Day, now, &paris),
        (1_796_425_200_000, 1_796_511_600_000)
    );
    // December 2026 in UTC, and in Paris.
    assert_eq!(
        window::bounds(Window::Month, now, &utc),
        (1_796_083_200_000, 1_798_761_600_000)
    );
    assert_eq!(
        window::bounds(Window::Month, now, &paris),
        (1_796_079_600_000, 1_798_758_000_000)
    );
    // March 2026 in Paris has 31 days less an hour (DST begins on the 29th).
    let march = 1_773_500_000_000; // 2026-03-14
    let (s, e) = window::bounds(Window::Month, march, &paris);
    assert_eq!(e - s, 31 * 86_400_000 - 3_600_000);
    assert_eq!(window::day(now, &paris), "2026-12-05");
    assert_eq!(window::day(1_796_425_100_000, &paris), "2026-12-04");
    for (ms, want) in [
        (0, "0ms"),
        (250, "250ms"),
        (1000, "1s"),
        (1001, "2s"),
        (360_000, "6m0s"),
        (3_723_000, "1h2m3s"),
    ] {
        assert_eq!(window::reset_str(ms), want);
    }
}

#[test]
fn requests_and_tokens_are_counted_per_identity_and_refused_past_the_limit() {
    let l = limiter(
        "limits:\n  - { name: per-agent, per: identity, match: { routes: [openai] }, tokens: { per: 1m, max: 1000 }, requests: { per: 1m, max: 3 } }",
    );
    let g = vec!["agents".to_string()];
    let a = caller("a", &g, "openai");
    let b = caller("b", &g, "openai");
    let req = asked("gpt-4o", Some(100), 400); // 100 + 100 tokens reserved
    let t1 = admit(&l, &a, Some(&req), T0).expect("first");
    assert!(t1
        .headers
        .contains(&("x-ratelimit-remaining-requests".into(), "2".into())));
    assert!(t1
        .headers
        .contains(&("x-ratelimit-remaining-tokens".into(), "800".into())));
    t1.settle(Charge::Used {
        tokens: 30,
        cost: 0,
    });
    admit(&l, &a, Some(&req), T0)
        .unwrap()
        .settle(Charge::Reserved);
    admit(&l, &a, Some(&req), T0)
        .unwrap()
        .settle(Charge::Nothing);
    // Three requests in this minute: the fourth is refused, another identity is not.
    let r = admit(&l, &a, Some(&req), T0).err().expect("refused");
    assert_eq!((r.kind, r.limit.as_str()), (Kind::Requests, "per-agent"));
    assert!(!r.no_retry);
    assert!(r.retry_after_ms > 0 && r.retry_after_ms <= 60_000);
    assert!(admit(&l, &b, Some(&req), T0).is_ok());
    // The next minute starts afresh, and the other route is not limited.
    assert!(admit(&l, &a, Some(&req), T0 + 60_000).is_ok());
    assert!(admit(&l, &caller("a", &g, "other"), Some(&req), T0).is_ok());
    // 30 used + 200 kept + 0 given back: 770 tokens left in the first minute for b's window? a's:
    let s = l.ledger.lock();
    let used: Vec<u64> = s
        .counters
        .iter()
        .filter(|(k, _)| k.contains("\u{1f}a\u{1f}tokens"))
        .map(|(_, c)| c.used)
        .collect();
    assert!(used.contains(&230), "{used:?}");
}

#[test]
fn a_request_larger_than_what_is_left_is_refused_and_one_larger_than_the_quota_is_not_retried() {
    let l = limiter("limits:\n  - { name: t, per: identity, tokens: { per: 1m, max: 1000 } }");
    let g = vec![];
    let a = caller("a", &g, "openai");
    // max_tokens omitted: the default output (4096) alone is over the quota.
    let r = admit(&l, &a, Some(&asked("m", None, 40)), T0)
        .err()
        .expect("refused");
    assert!(r.no_retry, "{r:?}");
    assert!(r.message.contains("lower max_tokens"), "{}", r.message);
    // huge
    assert!(admit(&l, &a, Some(&asked("m", Some(u64::MAX), 40)), T0).is_err());
    // 900 fit, then 200 more do not (100 are left) but the window will make room.
    admit(&l, &a, Some(&asked("m", Some(890), 40)), T0)
        .unwrap()
        .settle(Charge::Reserved);
    let r = admit(&l, &a, Some(&asked("m", Some(190), 40)), T0)
        .err()
        .expect("refused");
    assert!(!r.no_retry && r.kind == Kind::Tokens);
    assert!(r
        .headers
        .contains(&("x-ratelimit-remaining-tokens".into(), "100".into())));
    // A request that reads no body (a GET) reserves no tokens but is refused once none are left.
    admit(&l, &a, Some(&asked("m", Some(90), 40)), T0)
        .unwrap()
        .settle(Charge::Reserved);
    assert!(admit(&l, &a, None, T0).is_err());
}

#[test]
fn cost_budgets_are_per_group_in_calendar_months_and_say_insufficient_quota() {
    let l = limiter(
        "usage:\n  prices: { m: { input: 1000000, output: 1000000 } }\nlimits:\n  - { name: team, per: group, groups: [team-a], cost: { per: month, max: 10.00, currency: USD } }",
    );
    let team = vec!["team-a".to_string(), "x".to_string()];
    let outsider = vec!["x".to_string()];
    let a = caller("a", &team, "openai");
    // $1 per token: 4 prompt tokens (16 bytes) and 5 output reserve $9.
    let req = asked("m", Some(5), 16);
    let t = admit(&l, &a, Some(&req), T0).expect("fits");
    assert!(t
        .headers
        .contains(&("x-ratelimit-remaining-cost".into(), "1.000000".into())));
    t.settle(Charge::Used {
        tokens: 3,
        cost: 3_000_000,
    });
    // $3 spent: another $9 does not fit; a member of the team but not another caller is refused.
    let r = admit(&l, &caller("b", &team, "openai"), Some(&req), T0)
        .err()
        .expect("refused");
    assert_eq!(r.kind, Kind::Cost);
    assert!(r.no_retry, "a month's budget is not worth retrying for");
    assert!(admit(&l, &caller("c", &outsider, "openai"), Some(&req), T0).is_ok());
    // Next month it fits again.
    assert!(admit(&l, &a, Some(&req), T0 + 32 * 86_400_000).is_ok());
}

#[test]
fn concurrency_is_counted_while_tickets_live() {
    let l = limiter("limits:\n  - { name: c, per: route, concurrent: 2 }");
    let g = vec![];
    let a = caller("a", &g, "openai");
    let t1 = admit(&l, &a, None, T0).unwrap();
    let t2 = admit(&l, &caller("b", &g, "openai"), None, T0).unwrap();
    let r = admit(&l, &a, None, T0).err().expect("third refused");
    assert_eq!(r.kind, Kind::Concurrent);
    drop(t1);
    let t3 = admit(&l, &a, None, T0).expect("room again");
    t2.settle(Charge::Nothing);
    t3.settle(Charge::Nothing);
    assert!(l.ledger.lock().inflight.is_empty());
}

#[test]
fn racing_requests_never_overspend() {
    let l = Arc::new(limiter(
        "limits:\n  - { name: t, per: identity, tokens: { per: 1h, max: 1000 } }",
    ));
    let passed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (l, passed) = (l.clone(), passed.clone());
            std::thread::spawn(move || {
                let g = vec![];
                for _ in 0..50 {
                    if let Ok(t) = admit(
                        &l,
                        &caller("a", &g, "openai"),
                        Some(&asked("m", Some(96), 16)),
                        T0,
                    ) {
                        passed.fetch_add(1, Ordering::SeqCst);
                        t.settle(Charge::Reserved);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 100 tokens each: exactly ten fit.
    assert_eq!(passed.load(Ordering::SeqCst), 10);
}

#[test]
fn the_ledger_file_keeps_counters_and_totals_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("agentgate-ledger-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("usage.json");
    let _ = std::fs::remove_file(&path);
    let cfg = config("limits:\n  - { name: t, per: identity, tokens: { per: month, max: 1000 } }");
    let ledger = Arc::new(Ledger {
        state: Mutex::new(State::default()),
        path: Some(path.clone()),
        dirty: AtomicBool::new(false),
    });
    let l = Limiter::new(&cfg, ledger.clone()).unwrap();
    let g = vec!["agents".to_string()];
    let now = now_ms();
    admit(
        &l,
        &caller("a", &g, "openai"),
        Some(&asked("m", Some(996), 16)),
        now,
    )
    .unwrap()
    .settle(Charge::Reserved);
    let usage = Usage {
        input: 4,
        output: 996,
        ..Usage::default()
    };
    ledger.record(day_totals(
        &TimeZone::UTC,
        now,
        &caller("a", &g, "openai"),
        "m",
        Some(&usage),
        7,
    ));
    ledger.flush();
    let again = Limiter::new(&cfg, Ledger::read_file(&path).unwrap()).unwrap();
    assert!(admit(&again, &caller("a", &g, "openai"), None, now).is_err());
    let totals = again.ledger.totals_since("2000-01-01");
    assert_eq!(totals.len(), 1);
    assert_eq!(
        (
            totals[0].input_tokens,
            totals[0].output_tokens,
            totals[0].cost_micros
        ),
        (4, 996, 7)
    );
    std::fs::write(&path, b"{broken").unwrap();
    assert!(Ledger::read_file(&path)
        .err()
        .unwrap()
        .contains("not a usage ledger"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cut_streams_limits_give_each_ticket_the_room_they_had_at_admission() {
    let l = limiter(
        "usage: { default_max_output_tokens: 100 }\nlimits:\n  - { name: loose, per: identity, tokens: { per: 1m, max: 100000 }, cut_streams: true }\n  - { name: tight, per: identity, tokens: { per: 1m, max: 1000 }, cost: { per: day, max: 5.00 }, cut_streams: true }\n  - { name: counted, per: identity, tokens: { per: 1m, max: 600 } }",
    );
    let g = vec![];
    let a = caller("a", &g, "openai");
    let req = asked("gpt-4o", None, 400); // 100 + 100 reserved
    let t1 = admit(&l, &a, Some(&req), T0).expect("first");
    // The tightest cutting quota of each kind, before this request's own reservation; the
    // limit without cut_streams (600) does not cut.
    let cut = t1.cut.clone().expect("a cut");
    assert_eq!(cut.tokens, Some((1000, "tight".to_string())));
    assert_eq!(cut.cost.as_ref().map(|c| c.1.as_str()), Some("tight"));
    let t2 = admit(&l, &a, Some(&req), T0).expect("second");
    assert_eq!(
        t2.cut.clone().unwrap().tokens,
        Some((800, "tight".to_string()))
    );
    // No limit that cuts: no cut.
    let l = limiter("limits:\n  - { name: t, per: identity, tokens: { per: 1m, max: 100000 } }");
    assert!(admit(&l, &a, Some(&req), T0).unwrap().cut.is_none());
    // cut_streams on a limit with nothing to cut at is a configuration error.
    let bad =
        "limits:\n  - { name: r, per: identity, requests: { per: 1m, max: 5 }, cut_streams: true }";
    let text = config_text(bad);
    let Err(e) = Config::parse(&text, std::path::Path::new("t.yaml")) else {
        panic!("cut_streams without tokens or cost was accepted");
    };
    assert!(
        e.to_string().contains("cut_streams needs tokens or cost"),
        "{e}"
    );
}

#[test]
fn a_cost_room_converts_to_output_tokens_at_the_models_price() {
    let p = crate::usage::PriceTable::with([]);
    // gpt-4o: 2.50 in, 10.00 out per million. 1,000 prompt tokens cost 2,500 micros; 0.01 USD
    // (10,000 micros) leaves 7,500 micros: 750 output tokens.
    assert_eq!(p.output_within(Some("gpt-4o"), 1000, 10_000), Some(750));
    assert_eq!(p.output_within(Some("gpt-4o"), 1000, 1000), Some(0));
    assert_eq!(p.output_within(Some("no-such-model"), 1000, 10_000), None);
}
