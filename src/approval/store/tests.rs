use super::*;
use crate::approval::{sha256_hex, Bound};
use crate::identity::AuthMethod;

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        issuer: "service-account".into(),
        method: AuthMethod::ServiceAccount,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        person: Some(crate::identity::PersonName {
            issuer: "service-account".into(),
            subject: subject.into(),
        }),
    }
}

fn rule(extra: &str) -> ApprovalRule {
    serde_yaml::from_str(&format!("name: r\napprovers: {{ groups: [sec] }}\n{extra}")).unwrap()
}

fn draft(requester: &Identity) -> Approval {
    Approval {
        id: String::new(),
        request_id: "req".into(),
        rule: "r".into(),
        route: "openai".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        query: String::new(),
        target_sha256: drafted().1,
        requester: Person::of(requester),
        reasons: vec![],
        summary: serde_json::json!({}),
        body_sha256: sha256_hex(b"{}"),
        mode: String::new(),
        approver_groups: vec![],
        min_approvals: 0,
        grant_window_s: None,
        created_ms: 0,
        expires_ms: 0,
        state: State::Pending,
        decisions: vec![],
        decided_ms: None,
        redeemed: false,
    }
}

/// The body and target hashes of `draft`'s request.
fn drafted() -> (String, String) {
    (
        sha256_hex(b"{}"),
        crate::approval::target_sha256("/v1/chat/completions", ""),
    )
}

/// `draft`'s request as the gate binds it.
fn bound<'a>(body: &'a str, target: &'a str) -> Bound<'a> {
    Bound {
        route: "openai",
        method: "POST",
        target_sha256: target,
        body_sha256: body,
    }
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("agentgate-approvals-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn decisions_follow_the_rules() {
    let s = Approvals::open(&dir("rules")).unwrap();
    let agent = who("agent", &["agents", "sec"]);
    let r2 = ApprovalRule {
        min_approvals: 2,
        ..rule("")
    };
    let (a, _rx) = s.create(&r2, draft(&agent)).unwrap();
    let e = s.decide(&a.id, &agent, true, "mine").unwrap_err();
    assert_eq!(e.status, 403, "{}", e.message);
    assert!(e.message.contains("own request"));
    let e = s
        .decide(&a.id, &who("eve", &["dev"]), true, "ok")
        .unwrap_err();
    assert_eq!(
        (e.status, e.message.contains("not in an approver group")),
        (403, true)
    );
    assert_eq!(
        s.decide(&a.id, &who("bob", &["sec"]), true, " ")
            .unwrap_err()
            .status,
        400
    );
    let one = s
        .decide(&a.id, &who("bob", &["sec"]), true, "looks fine")
        .unwrap();
    assert_eq!(
        one.state,
        State::Pending,
        "min_approvals 2: one is not enough"
    );
    assert_eq!(
        s.decide(&a.id, &who("bob", &["sec"]), true, "again")
            .unwrap_err()
            .status,
        409
    );
    let two = s
        .decide(&a.id, &who("carol", &["sec"]), true, "agreed")
        .unwrap();
    assert_eq!(two.state, State::Approved);
    assert_eq!(
        s.decide(&a.id, &who("dan", &["sec"]), false, "late")
            .unwrap_err()
            .status,
        409
    );
    assert_eq!(
        s.decide("apr_nope", &who("dan", &["sec"]), false, "x")
            .unwrap_err()
            .status,
        404
    );

    let (b, _rx) = s.create(&rule(""), draft(&agent)).unwrap();
    assert_eq!(
        s.decide(&b.id, &who("bob", &["sec"]), false, "no")
            .unwrap()
            .state,
        State::Denied
    );
}

#[tokio::test]
async fn waiting_ends_with_the_decision_or_expiry() {
    let s = Approvals::open(&dir("wait")).unwrap();
    let agent = who("agent", &["agents"]);
    let (a, rx) = s.create(&rule("timeout: 1s"), draft(&agent)).unwrap();
    let s2 = s.clone();
    let id = a.id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s2.decide(&id, &who("bob", &["sec"]), true, "go").unwrap();
    });
    assert_eq!(
        s.wait(&a.id, rx, a.expires_ms).await.unwrap().state,
        State::Approved
    );
    let (b, rx) = s.create(&rule("timeout: 1s"), draft(&agent)).unwrap();
    assert_eq!(
        s.wait(&b.id, rx, b.expires_ms).await.unwrap().state,
        State::Expired
    );
    assert_eq!(
        s.decide(&b.id, &who("bob", &["sec"]), true, "too late")
            .unwrap_err()
            .status,
        409
    );
}

#[test]
fn window_grants_and_tickets() {
    let s = Approvals::open(&dir("grants")).unwrap();
    let agent = who("agent", &["agents"]);
    let (a, _rx) = s
        .create(
            &rule("grant: { scope: window, duration: 30m }"),
            draft(&agent),
        )
        .unwrap();
    assert!(s.active_grant(&agent, "r", "openai").is_none());
    s.decide(&a.id, &who("bob", &["sec"]), true, "for the migration")
        .unwrap();
    assert_eq!(s.active_grant(&agent, "r", "openai").unwrap().id, a.id);
    assert!(
        s.active_grant(&who("other", &["agents"]), "r", "openai")
            .is_none(),
        "grants are per identity"
    );
    assert!(
        s.active_grant(&agent, "other-rule", "openai").is_none(),
        "and per rule"
    );
    assert!(
        s.active_grant(&agent, "r", "another-route").is_none(),
        "and per route"
    );

    let (t, _rx) = s.create(&rule("mode: ticket"), draft(&agent)).unwrap();
    let (body, target) = drafted();
    let same = bound(&body, &target);
    assert!(matches!(
        s.redeem(&t.id, &agent, "r", &same),
        Redeem::StillPending(_)
    ));
    s.decide(&t.id, &who("bob", &["sec"]), true, "ok").unwrap();
    // A ticket lets through only the request it was asked for: each part of it, changed alone,
    // is refused with what differs.
    let other_body = sha256_hex(b"{\"x\":1}");
    let other_path = crate::approval::target_sha256("/v1/chat/other", "");
    let other_query = crate::approval::target_sha256("/v1/chat/completions", "force=true");
    let table: [(Bound, &str); 5] = [
        (
            Bound {
                route: "other",
                ..same
            },
            "another route",
        ),
        (
            Bound {
                method: "DELETE",
                ..same
            },
            "another method",
        ),
        (
            Bound {
                target_sha256: &other_path,
                ..same
            },
            "another path or query",
        ),
        (
            Bound {
                target_sha256: &other_query,
                ..same
            },
            "another path or query",
        ),
        (
            Bound {
                body_sha256: &other_body,
                ..same
            },
            "different request body",
        ),
    ];
    for (req, what) in table {
        assert!(
            matches!(s.redeem(&t.id, &agent, "r", &req), Redeem::Refused(403, ref m) if m.contains(what)),
            "{what}"
        );
    }
    assert!(matches!(
        s.redeem(&t.id, &who("other", &[]), "r", &same),
        Redeem::Refused(403, _)
    ));
    assert!(matches!(
        s.redeem(&t.id, &agent, "r", &same),
        Redeem::Proceed(_)
    ));
    assert!(
        matches!(s.redeem(&t.id, &agent, "r", &same), Redeem::Refused(403, m) if m.contains("already used"))
    );
}

/// A ticket from a window grant is good while its window lasts, then for no request at all.
#[test]
fn a_window_tickets_ends_with_its_window() {
    let s = Approvals::open(&dir("window-ticket")).unwrap();
    let agent = who("agent", &["agents"]);
    let (t, _rx) = s
        .create(
            &rule("mode: ticket\ngrant: { scope: window, duration: 1s }"),
            draft(&agent),
        )
        .unwrap();
    s.decide(&t.id, &who("bob", &["sec"]), true, "ok").unwrap();
    let (body, target) = drafted();
    let same = bound(&body, &target);
    for _ in 0..2 {
        assert!(matches!(
            s.redeem(&t.id, &agent, "r", &same),
            Redeem::Proceed(_)
        ));
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        matches!(s.redeem(&t.id, &agent, "r", &same), Redeem::Refused(403, m) if m.contains("window (1 s) is over"))
    );
    assert!(s.active_grant(&agent, "r", "openai").is_none());
}

#[test]
fn a_restart_keeps_decisions_and_interrupts_pending_ones() {
    let d = dir("restart");
    let agent = who("agent", &["agents"]);
    let (pending, decided) = {
        let s = Approvals::open(&d).unwrap();
        let (p, _rx) = s.create(&rule(""), draft(&agent)).unwrap();
        let (w, _rx) = s
            .create(
                &rule("grant: { scope: window, duration: 1h }"),
                draft(&agent),
            )
            .unwrap();
        s.decide(&w.id, &who("bob", &["sec"]), true, "yes").unwrap();
        (p.id, w.id)
    };
    // A torn last line (a crash mid-append) is skipped.
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("approvals.jsonl"))
        .unwrap()
        .write_all(b"{\"id\":\"apr_torn")
        .unwrap();
    let s = Approvals::open(&d).unwrap();
    assert_eq!(s.get(&pending).unwrap().state, State::Interrupted);
    let w = s.get(&decided).unwrap();
    assert_eq!(
        (
            w.state,
            w.decisions[0].by.subject.as_str(),
            w.decisions[0].reason.as_str()
        ),
        (State::Approved, "bob", "yes")
    );
    assert_eq!(
        s.active_grant(&agent, "r", "openai").unwrap().id,
        decided,
        "window grants survive a restart"
    );
    assert_eq!(s.list(Some(State::Pending), 10).len(), 0);
}

/// Decided approvals older than the retention leave memory at the next sweep (a restart drops
/// them from the log); pending ones and younger ones stay.
#[test]
fn sweep_forgets_decided_approvals_past_retention() {
    let s = Approvals::open(&dir("sweep")).unwrap();
    let agent = who("agent", &["agents"]);
    let approver = who("approver", &["sec"]);
    let r = rule("timeout: 1h");
    let (old, _rx1) = s.create(&r, draft(&agent)).unwrap();
    let (young, _rx2) = s.create(&r, draft(&agent)).unwrap();
    let (pending, _rx3) = s.create(&r, draft(&agent)).unwrap();
    s.decide(&old.id, &approver, true, "ok").unwrap();
    s.decide(&young.id, &approver, false, "no").unwrap();
    let long_ago = now_ms() - RETENTION.as_millis() as u64 - 1000;
    for id in [&old.id, &pending.id] {
        s.lock().entries.get_mut(id).unwrap().approval.created_ms = long_ago;
    }
    s.lock()
        .entries
        .get_mut(&pending.id)
        .unwrap()
        .approval
        .expires_ms = now_ms() + 60_000;
    s.sweep();
    assert!(s.get(&old.id).is_none(), "decided and past retention");
    assert_eq!(s.get(&young.id).unwrap().state, State::Denied);
    assert_eq!(
        s.get(&pending.id).unwrap().state,
        State::Pending,
        "pending is never dropped"
    );
}

/// Once enough snapshots piled up, the sweep rewrites the log as one line per approval; what a
/// restart reads back is the same, and later decisions are appended to the new log.
#[test]
fn sweep_compacts_the_log_without_losing_a_decision() {
    let d = dir("compact");
    let s = Approvals::open(&d).unwrap();
    let agent = who("agent", &["agents"]);
    let approver = who("approver", &["sec"]);
    let r = rule("timeout: 1h");
    let ids: Vec<String> = (0..3)
        .map(|_| s.create(&r, draft(&agent)).unwrap().0.id)
        .collect();
    s.decide(&ids[0], &approver, true, "ok").unwrap();
    s.decide(&ids[1], &approver, false, "no").unwrap();
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(s.path()), 5);
    s.sweep();
    assert_eq!(
        lines(s.path()),
        5,
        "below the threshold nothing is rewritten"
    );
    s.appended
        .store(COMPACT_AFTER + 1, std::sync::atomic::Ordering::Relaxed);
    s.sweep();
    assert_eq!(lines(s.path()), 3, "one line per approval");
    s.decide(&ids[2], &approver, true, "later").unwrap();
    assert_eq!(lines(s.path()), 4, "appended to the compacted log");
    let states: Vec<State> = ids.iter().map(|id| s.get(id).unwrap().state).collect();
    drop(s);
    let reopened = Approvals::open(&d).unwrap();
    let again: Vec<State> = ids
        .iter()
        .map(|id| reopened.get(id).unwrap().state)
        .collect();
    assert_eq!(again, states);
    assert_eq!(
        states,
        vec![State::Approved, State::Denied, State::Approved]
    );
    assert_eq!(reopened.get(&ids[0]).unwrap().decisions[0].reason, "ok");
}

/// Issue 29: one person reached `min_approvals: 2` alone, once through the console (named by
/// the issuer's subject) and once with a service-account token (named by the account). A person
/// is one name across channels; a service account decides only as the person it is mapped to,
/// and a machine (an unmapped account, an OIDC client acting for itself) not at all.
#[test]
fn one_person_is_one_approver_whatever_the_channel() {
    let s = Approvals::open(&dir("one-person")).unwrap();
    let agent = who("agent", &["agents"]);
    let r2 = ApprovalRule {
        min_approvals: 2,
        ..rule("")
    };
    let (a, _rx) = s.create(&r2, draft(&agent)).unwrap();
    let alice = |issuer: &str, subject: &str, method: AuthMethod| Identity {
        subject: subject.into(),
        issuer: issuer.into(),
        method,
        groups: vec!["sec".into()],
        person: Some(crate::identity::PersonName {
            issuer: "https://idp.example".into(),
            subject: "alice@example.com".into(),
        }),
    };
    let console = alice("https://idp.example", "alice@example.com", AuthMethod::Oidc);
    let her_account = alice("service-account", "alice-cli", AuthMethod::ServiceAccount);
    let unmapped = Identity {
        person: None,
        ..who("alice-bot", &["sec"])
    };
    let e = s.decide(&a.id, &unmapped, true, "me again").unwrap_err();
    assert_eq!(e.status, 403, "{}", e.message);
    assert!(e.message.contains("not a person"), "{}", e.message);
    let one = s.decide(&a.id, &console, true, "ok").unwrap();
    assert_eq!(one.state, State::Pending);
    let e = s.decide(&a.id, &her_account, true, "ok again").unwrap_err();
    assert_eq!(e.status, 409, "{}", e.message);
    assert!(e.message.contains("alice@example.com"), "{}", e.message);
    let two = s.decide(&a.id, &who("bob", &["sec"]), true, "ok").unwrap();
    assert_eq!(two.state, State::Approved);
    // Her account's decision would have been recorded as her, with the account it came through.
    let p = Person::of(&her_account);
    assert_eq!(
        (p.issuer.as_str(), p.subject.as_str(), p.via.as_deref()),
        (
            "https://idp.example",
            "alice@example.com",
            Some("service-account alice-cli")
        )
    );
    // The person behind the agent's account cannot approve its requests either.
    let mapped_agent = Identity {
        person: Some(crate::identity::PersonName {
            issuer: "https://idp.example".into(),
            subject: "carol@example.com".into(),
        }),
        ..who("carol-agent", &["agents"])
    };
    let (b, _rx) = s.create(&r2, draft(&mapped_agent)).unwrap();
    let carol = Identity {
        subject: "carol@example.com".into(),
        issuer: "https://idp.example".into(),
        method: AuthMethod::Oidc,
        groups: vec!["sec".into()],
        person: Some(crate::identity::PersonName {
            issuer: "https://idp.example".into(),
            subject: "carol@example.com".into(),
        }),
    };
    let e = s.decide(&b.id, &carol, true, "mine").unwrap_err();
    assert!(e.message.contains("own request"), "{}", e.message);
}

/// A window grant of a request made through a service account mapped to a person holds for that
/// account's next requests, and after a restart (failed before: kept under the person, looked up
/// under the account's own name, `active_grant` was always `None`).
#[test]
fn a_window_grant_holds_for_a_service_account_mapped_to_a_person() {
    let d = dir("mapped-grant");
    let carol_cli = Identity {
        person: Some(crate::identity::PersonName {
            issuer: "https://idp.example".into(),
            subject: "carol@example.com".into(),
        }),
        ..who("carol-cli", &["agents"])
    };
    let a = {
        let s = Approvals::open(&d).unwrap();
        let (a, _rx) = s
            .create(
                &rule("grant: { scope: window, duration: 1h }"),
                draft(&carol_cli),
            )
            .unwrap();
        s.decide(&a.id, &who("bob", &["sec"]), true, "ok").unwrap();
        assert_eq!(
            s.active_grant(&carol_cli, "r", "openai").map(|g| g.id),
            Some(a.id.clone())
        );
        a
    };
    let s = Approvals::open(&d).unwrap();
    assert_eq!(
        s.active_grant(&carol_cli, "r", "openai").map(|g| g.id),
        Some(a.id),
        "and after a restart"
    );
}
