//! `agentgate audit verify`: walks the chain through every segment and reports the first record
//! that was modified, removed, inserted or reordered, or a torn/truncated segment.

use super::store::{self, GENESIS};
use std::fs;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Report {
    /// Records whose place in the chain checked out.
    pub verified: u64,
    pub segments: usize,
    /// The first problem, if any.
    pub problem: Option<String>,
}

pub fn verify(dir: &Path) -> Result<Report, String> {
    let segs = store::segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = Report {
        segments: segs.len(),
        ..Report::default()
    };
    let (first_segment, mut expect_seq, mut prev) = match store::anchor(dir) {
        Some(a) => (a.first_segment, a.seq + 1, a.hash),
        None => (1, 0, GENESIS.to_string()),
    };
    for (expected_segment, n) in (first_segment..).zip(segs) {
        if n != expected_segment {
            report.problem = Some(format!(
                "segment {expected_segment} is missing (found segment {n} next): records from seq {expect_seq} on were removed"
            ));
            return Ok(report);
        }
        let path = store::segment_path(dir, n);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, raw) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            let at = format!("segment {n} line {}", i + 1);
            if !raw.ends_with(b"\n") {
                report.problem = Some(format!(
                    "{at}: the segment ends inside a record (truncated, or a crash during a write); the chain is intact up to seq {}",
                    expect_seq as i64 - 1
                ));
                return Ok(report);
            }
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let Some((body, stated)) = store::unseal(&line) else {
                report.problem = Some(format!("{at}: not a sealed record (damaged or inserted)"));
                return Ok(report);
            };
            let v: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(_) => {
                    report.problem = Some(format!("{at}: not valid JSON (modified)"));
                    return Ok(report);
                }
            };
            let seq = v.get("seq").and_then(|s| s.as_u64());
            let actual = crate::util::hex::hex(&boring::sha::sha256(body.as_bytes()));
            if actual != stated {
                report.problem = Some(format!(
                    "{at}: record seq {} was modified (its content does not match its hash)",
                    seq.map_or("?".into(), |s| s.to_string())
                ));
                return Ok(report);
            }
            let Some(seq) = seq else {
                report.problem = Some(format!("{at}: record without seq"));
                return Ok(report);
            };
            if seq != expect_seq {
                report.problem = Some(format!(
                    "{at}: expected record seq {expect_seq}, found seq {seq}: records were removed, inserted or reordered"
                ));
                return Ok(report);
            }
            if v.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
                report.problem = Some(format!(
                    "{at}: record seq {seq} does not chain to the record before it (that record was replaced, or this one inserted)"
                ));
                return Ok(report);
            }
            prev = stated.to_string();
            expect_seq += 1;
            report.verified += 1;
        }
    }
    // Records cut off at a line boundary leave no torn line: the index still lists them.
    if let Some(last) = store::read_index(dir).last() {
        if last.seq >= expect_seq {
            report.problem = Some(format!(
                "the index lists records up to seq {} but the store ends at seq {}: records were removed from the end",
                last.seq,
                expect_seq as i64 - 1
            ));
        }
    }
    Ok(report)
}
