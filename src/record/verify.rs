//! `agentgate audit verify`: walks the chain through every segment and reports the first record
//! that was modified, removed, inserted or reordered, or a torn/truncated segment; then checks
//! the index against the chain, and the chain against signed checkpoints.
//!
//! What the chain alone shows, and what needs checkpoints kept off the machine: a chain cut at
//! its end, missing its newest segment, or put back from an older copy is still a valid chain.
//! Only a checkpoint signed earlier and kept elsewhere says it once went further (`Options::
//! exported`); without one the report says so (`Report::notes`). A checkpoint also vouches for
//! the record at its seq (a rolled-back store that went on issues different records under the
//! same numbers) and signs the retention events that alone may move the chain's start.

use super::checkpoint::{self, Checkpoint, PublicKey};
use super::store::{self, IndexEntry, GENESIS};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::Path;

#[derive(Debug, Default)]
pub struct Report {
    /// Records whose place in the chain checked out.
    pub verified: u64,
    pub segments: usize,
    /// The first problem, if any (also first in `problems`).
    pub problem: Option<String>,
    pub problems: Vec<String>,
    /// What was checked against, and what could not be ruled out.
    pub notes: Vec<String>,
    /// The newest record and the newest checkpoint kept off the machine, both for this store.
    pub last_seq: Option<u64>,
    pub first_seq: u64,
}

impl Report {
    fn fail(&mut self, p: String) {
        if self.problem.is_none() {
            self.problem = Some(p.clone());
        }
        self.problems.push(p);
    }
}

/// Checkpoints to check the store against.
#[derive(Default)]
pub struct Options {
    /// Checkpoint lines kept off this machine (exported from the log pipeline), with where
    /// they came from; `None` when none were given.
    pub exported: Option<(String, String)>,
    /// Keys checkpoints may be signed with; without one, no checkpoint is trusted.
    pub keys: Vec<PublicKey>,
}

pub fn verify(dir: &Path) -> Result<Report, String> {
    verify_with(dir, &Options::default())
}

/// One record as the walk met it (what the index must say about it).
struct Walked<'a> {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u64,
    id: &'a str,
    hash: &'a str,
}

/// The index read alongside the chain: entry by entry in seq order, each naming its record.
struct IndexWalk {
    entries: std::iter::Peekable<Box<dyn Iterator<Item = IndexEntry>>>,
    present: bool,
    first: Option<String>,
    count: u64,
}

impl IndexWalk {
    fn open(dir: &Path) -> IndexWalk {
        let (entries, present): (Box<dyn Iterator<Item = IndexEntry>>, bool) =
            match File::open(dir.join("index.jsonl")) {
                Ok(f) => (
                    Box::new(
                        BufReader::new(f)
                            .lines()
                            .map_while(Result::ok)
                            .filter_map(|l| serde_json::from_str(&l).ok()),
                    ),
                    true,
                ),
                Err(_) => (Box::new(std::iter::empty()), false),
            };
        IndexWalk {
            entries: entries.peekable(),
            present,
            first: None,
            count: 0,
        }
    }

    fn disagree(&mut self, p: String) {
        self.count += 1;
        self.first.get_or_insert(p);
    }

    fn record(&mut self, r: &Walked, first_seq: u64) {
        loop {
            let Some(e) = self.entries.peek() else {
                self.disagree(format!(
                    "record seq {} (id {}) is not in the index (index.jsonl lost its entry: edited, or a crash between writing the record and its entry)",
                    r.seq, r.id
                ));
                return;
            };
            if e.seq < r.seq {
                if e.seq >= first_seq {
                    let p = format!(
                        "the index lists seq {} (id {}) again or out of order",
                        e.seq, e.id
                    );
                    self.disagree(p);
                }
                self.entries.next();
                continue;
            }
            if e.seq > r.seq {
                self.disagree(format!(
                    "record seq {} (id {}) is not in the index (its entry was removed)",
                    r.seq, r.id
                ));
                return;
            }
            let same = e.id == r.id
                && e.segment == r.segment
                && e.offset == r.offset
                && e.len == r.len
                && (e.hash.is_empty() || e.hash == r.hash);
            if !same {
                let p = format!(
                    "the index entry for seq {} names {} at segment {} offset {}, but the chain's record seq {} is {} at segment {} offset {}: the index was edited (readers refuse this entry)",
                    e.seq, e.id, e.segment, e.offset, r.seq, r.id, r.segment, r.offset
                );
                self.disagree(p);
            }
            self.entries.next();
            return;
        }
    }

    /// Entries left past the chain's end, and the summary problem, if any.
    fn finish(mut self, last: Option<u64>) -> Option<String> {
        if let Some(e) = self.entries.by_ref().last() {
            return Some(format!(
                "the index lists records up to seq {} but the store ends at seq {}: records were removed from the end",
                e.seq,
                last.map_or("none".into(), |s| s.to_string())
            ));
        }
        if !self.present && last.is_some() {
            return Some(
                "index.jsonl is missing: the store's records are not listed (deleted?)".into(),
            );
        }
        self.first.map(|p| match self.count {
            1 => format!("index disagrees with the chain: {p}"),
            n => format!("index disagrees with the chain: {p} (and {} more)", n - 1),
        })
    }
}

/// Walks the chain; `Ok(Some(problem))` stops at the first broken link.
fn walk(
    dir: &Path,
    report: &mut Report,
    index: &mut IndexWalk,
    wanted: &mut HashMap<u64, Option<String>>,
) -> Result<Option<String>, String> {
    let segs = store::segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    report.segments = segs.len();
    let (first_segment, mut expect_seq, mut prev) = match store::anchor(dir) {
        Some(a) => (a.first_segment, a.seq + 1, a.hash),
        None => (1, 0, GENESIS.to_string()),
    };
    report.first_seq = expect_seq;
    for (expected_segment, n) in (first_segment..).zip(segs) {
        if n != expected_segment {
            return Ok(Some(format!(
                "segment {expected_segment} is missing (found segment {n} next): records from seq {expect_seq} on were removed"
            )));
        }
        let path = store::segment_path(dir, n);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut offset = 0u64;
        for (i, raw) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            let at = format!("segment {n} line {}", i + 1);
            if !raw.ends_with(b"\n") {
                return Ok(Some(format!(
                    "{at}: the segment ends inside a record (truncated, or a crash during a write); the chain is intact up to seq {}",
                    expect_seq as i64 - 1
                )));
            }
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let Some((body, stated)) = store::unseal(&line) else {
                return Ok(Some(format!(
                    "{at}: not a sealed record (damaged or inserted)"
                )));
            };
            let v: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(_) => return Ok(Some(format!("{at}: not valid JSON (modified)"))),
            };
            let seq = v.get("seq").and_then(|s| s.as_u64());
            let actual = crate::util::hex::hex(&boring::sha::sha256(body.as_bytes()));
            if actual != stated {
                return Ok(Some(format!(
                    "{at}: record seq {} was modified (its content does not match its hash)",
                    seq.map_or("?".into(), |s| s.to_string())
                )));
            }
            let Some(seq) = seq else {
                return Ok(Some(format!("{at}: record without seq")));
            };
            if seq != expect_seq {
                return Ok(Some(format!(
                    "{at}: expected record seq {expect_seq}, found seq {seq}: records were removed, inserted or reordered"
                )));
            }
            if v.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
                return Ok(Some(format!(
                    "{at}: record seq {seq} does not chain to the record before it (that record was replaced, or this one inserted)"
                )));
            }
            index.record(
                &Walked {
                    seq,
                    segment: n,
                    offset,
                    len: raw.len() as u64,
                    id: v.get("id").and_then(|i| i.as_str()).unwrap_or(""),
                    hash: stated,
                },
                report.first_seq,
            );
            if let Some(slot) = wanted.get_mut(&seq) {
                *slot = Some(stated.to_string());
            }
            offset += raw.len() as u64;
            prev = stated.to_string();
            expect_seq += 1;
            report.verified += 1;
        }
    }
    report.last_seq = expect_seq.checked_sub(1).filter(|s| *s >= report.first_seq);
    Ok(None)
}

/// A checkpoint and where it was read.
struct Seen {
    c: Checkpoint,
    from: &'static str,
}

pub fn verify_with(dir: &Path, opts: &Options) -> Result<Report, String> {
    let mut report = Report::default();
    let id = store::store_id(dir);
    // Checkpoints: the exported ones (the outside view) and the store's own.
    let mut seen: Vec<Seen> = Vec::new();
    let mut exported_for_store = 0;
    if let Some((name, text)) = &opts.exported {
        if opts.keys.is_empty() {
            return Err("checking checkpoints needs the public key they were signed with (--pubkey, or --config with recording.signing_key)".into());
        }
        let (all, bad) = checkpoint::read_lines(text);
        for b in bad {
            report.fail(format!("{name} {b}"));
        }
        if all.is_empty() {
            return Err(format!("{name} holds no checkpoint line"));
        }
        let mut stores: Vec<&str> = Vec::new();
        for c in &all {
            if !c.signed_by(&opts.keys) {
                report.fail(format!(
                    "checkpoint #{} of store {} in {name} is not signed by the given key (forged or altered)",
                    c.n, c.store
                ));
            } else if Some(&c.store) == id.as_ref() {
                exported_for_store += 1;
                seen.push(Seen {
                    c: c.clone(),
                    from: "exported",
                });
            } else if !stores.contains(&c.store.as_str()) {
                stores.push(&c.store);
            }
        }
        if exported_for_store == 0 {
            report.fail(format!(
                "none of the checkpoints in {name} is for this store (id {}); they are for store(s) {}: the store was replaced by another, or these checkpoints are another replica's",
                id.as_deref().unwrap_or("missing: store-id was deleted"),
                stores.join(", ")
            ));
        }
    }
    let local = store::local_checkpoints(dir);
    if !opts.keys.is_empty() {
        for c in local {
            if !c.signed_by(&opts.keys) || Some(&c.store) != id.as_ref() {
                report.fail(format!(
                    "checkpoint #{} in the store's checkpoints.jsonl is not signed by the given key for this store (forged or altered)",
                    c.n
                ));
            } else {
                seen.push(Seen { c, from: "store" });
            }
        }
    } else if !local.is_empty() {
        report
            .notes
            .push("the store's own checkpoints were not checked: no public key (--pubkey)".into());
    }

    let mut wanted: HashMap<u64, Option<String>> = seen
        .iter()
        .filter_map(|s| s.c.seq)
        .map(|s| (s, None))
        .collect();
    let mut index = IndexWalk::open(dir);
    if let Some(p) = walk(dir, &mut report, &mut index, &mut wanted)? {
        // A broken chain comes first; what follows it cannot be compared.
        report.problems.insert(0, p.clone());
        report.problem = Some(p);
        return Ok(report);
    }
    if let Some(p) = index.finish(report.last_seq) {
        report.fail(p);
    }
    check_checkpoints(dir, &mut report, &seen, &wanted, opts);
    Ok(report)
}

fn check_checkpoints(
    dir: &Path,
    report: &mut Report,
    seen: &[Seen],
    hashes: &HashMap<u64, Option<String>>,
    opts: &Options,
) {
    let name = opts.exported.as_ref().map_or("", |(n, _)| n.as_str());
    let last = report.last_seq;
    // Checkpoints by number: two different ones under one number are a fork.
    let mut by_n: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        let v = by_n.entry(s.c.n).or_default();
        if !v.iter().any(|o| o.c == s.c) {
            v.push(s);
        }
    }
    for (n, v) in &by_n {
        if v.len() > 1 {
            report.fail(format!(
                "two different checkpoints #{n} (signed at {} and {}): the store was rolled back (or its checkpoints rewritten) and went on from an older state",
                v[0].c.ts, v[1].c.ts
            ));
        }
        if let Some(before) = n.checked_sub(1).and_then(|b| by_n.get(&b)) {
            if !v
                .iter()
                .all(|c| before.iter().any(|b| b.c.hash() == c.c.prev))
            {
                report.fail(format!(
                    "checkpoint #{n} does not follow checkpoint #{}: the checkpoints were rewritten",
                    n - 1
                ));
            }
        }
    }
    // The newest record each checkpoint vouches for must still be there, and be the same.
    let mut newest: Option<&Seen> = None;
    for s in seen {
        let Some(seq) = s.c.seq else { continue };
        if last.is_none_or(|l| seq > l) {
            if newest.is_none_or(|o| o.c.seq < Some(seq)) {
                newest = Some(s);
            }
            continue;
        }
        if seq < report.first_seq {
            continue;
        }
        if let Some(Some(h)) = hashes.get(&seq) {
            if *h != s.c.head {
                report.fail(format!(
                    "record seq {seq} is not the record checkpoint #{} ({}, {}) signed: the store was rolled back and written again from there, or records replaced with the chain recomputed",
                    s.c.n, s.c.ts, s.from
                ));
            }
        }
    }
    if let Some(s) = newest {
        report.fail(format!(
            "records were cut from the end: checkpoint #{} ({}, {}) was signed when the store held records up to seq {} (head {}), but it now ends at seq {} — the newest records or segments were deleted, or the store was rolled back to an older copy",
            s.c.n,
            s.c.ts,
            s.from,
            s.c.seq.map_or("?".into(), |q| q.to_string()),
            s.c.head,
            last.map_or("none (empty)".into(), |l| l.to_string())
        ));
    }
    // A rolled-back store also carries older checkpoints of its own.
    let newest_of = |from: &str| seen.iter().filter(|s| s.from == from).map(|s| s.c.n).max();
    if let (Some(outside), Some(own)) = (newest_of("exported"), newest_of("store")) {
        if own < outside {
            report.fail(format!(
                "rollback: the store's own checkpoints end at #{own}, but #{outside} was exported later: this is an older copy of the store"
            ));
        }
    }
    // The chain may start after seq 0 only where a signed retention event moved its start.
    if report.first_seq > 0 && !seen.is_empty() {
        let anchor_hash = store::anchor(dir).map(|a| a.hash).unwrap_or_default();
        let signed = seen.iter().any(|s| {
            s.c.retention
                .iter()
                .any(|r| r.seq + 1 == report.first_seq && r.hash == anchor_hash)
        });
        if !signed {
            report.fail(format!(
                "the chain starts at seq {} (retention.jsonl's anchor), but no signed checkpoint records a retention run that deleted the records before it: the oldest records were removed outside retention",
                report.first_seq
            ));
        }
    }
    // What the checkpoints given cover, and what they cannot.
    let exported: Vec<&Checkpoint> = seen
        .iter()
        .filter(|s| s.from == "exported")
        .map(|s| &s.c)
        .collect();
    match exported.iter().max_by_key(|c| c.n) {
        None if opts.exported.is_none() => report.notes.push(
            "no checkpoints kept off this machine were given (--checkpoints FILE): records cut from the end, a deleted newest segment or a rollback to an older copy of the store cannot be ruled out".into(),
        ),
        None => {}
        Some(c) => {
            let mut ns: Vec<u64> = exported.iter().map(|c| c.n).collect();
            ns.sort_unstable();
            ns.dedup();
            let missing = (c.n + 1) as usize - ns.len();
            report.notes.push(format!(
                "checked against {} checkpoint(s) from {name}, the newest #{} ({}) for records up to seq {}{}",
                ns.len(),
                c.n,
                c.ts,
                c.seq.map_or("none".into(), |s| s.to_string()),
                if missing > 0 {
                    format!("; {missing} older checkpoint(s) are not in the file, so retention events they signed cannot be shown")
                } else {
                    String::new()
                }
            ));
            if let (Some(l), Some(s)) = (last, c.seq) {
                if l > s {
                    report.notes.push(format!(
                        "records after seq {s} (up to {l}) were written after the newest checkpoint given: a cut among them cannot be ruled out until a later checkpoint is exported"
                    ));
                }
            }
        }
    }
}
