//! Finding recorded exchanges in a store's index, for the CLI (`agentgate sessions`) and the
//! admin API (`/v1/sessions`) alike.
//!
//! Invariant: `find` answers one exchange only when the id names exactly one — the whole id,
//! or a prefix of at least `MIN_PREFIX` characters that begins one id and no other. A prefix
//! that begins several ids is an error, never the newest of them.

use super::store::{read_index, read_record, IndexEntry};
use std::path::Path;

/// The shortest id prefix accepted (shorter ones must be the whole id).
pub const MIN_PREFIX: usize = 8;

/// Which exchanges to list; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only exchanges recorded at or after this time (ms since the Unix epoch).
    pub since_ms: u64,
    pub route: Option<String>,
    /// The caller's subject.
    pub subject: Option<String>,
    pub conversation: Option<String>,
    pub limit: usize,
}

impl Filter {
    fn admits(&self, e: &IndexEntry) -> bool {
        e.ts_ms >= self.since_ms
            && self
                .route
                .as_ref()
                .is_none_or(|r| e.route.as_ref() == Some(r))
            && self
                .subject
                .as_ref()
                .is_none_or(|s| e.subject.as_ref() == Some(s))
            && self
                .conversation
                .as_ref()
                .is_none_or(|c| &e.conversation == c)
    }
}

/// The exchanges of `dir` that `filter` admits, newest first, at most `filter.limit`.
pub fn list(dir: &Path, filter: &Filter) -> Vec<IndexEntry> {
    read_index(dir)
        .into_iter()
        .rev()
        .filter(|e| filter.admits(e))
        .take(filter.limit)
        .collect()
}

/// Why `find` found no single exchange.
#[derive(Debug)]
pub enum FindError {
    Unknown,
    /// The prefix begins this many different ids.
    Ambiguous {
        prefix: String,
        ids: usize,
    },
    /// The index names the exchange but its record could not be read.
    Read(std::io::Error),
}

impl std::fmt::Display for FindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FindError::Unknown => f.write_str("no such recorded exchange"),
            FindError::Ambiguous { prefix, ids } => write!(
                f,
                "{prefix} is the start of {ids} recorded exchanges' ids; give more of the id"
            ),
            FindError::Read(e) => write!(f, "{e}"),
        }
    }
}

/// The record of the exchange `id` names (the whole id, or an unambiguous prefix).
pub fn find(dir: &Path, id: &str) -> Result<serde_json::Value, FindError> {
    let index = read_index(dir);
    let entry = find_in(&index, id)?;
    read_record(dir, entry).map_err(FindError::Read)
}

/// The newest entry of `index` (oldest first) that `id` names.
pub fn find_in<'a>(index: &'a [IndexEntry], id: &str) -> Result<&'a IndexEntry, FindError> {
    if let Some(e) = index.iter().rev().find(|e| e.id == id) {
        return Ok(e);
    }
    if id.len() < MIN_PREFIX {
        return Err(FindError::Unknown);
    }
    let mut matches = index.iter().rev().filter(|e| e.id.starts_with(id));
    let Some(newest) = matches.next() else {
        return Err(FindError::Unknown);
    };
    let mut others: Vec<&str> = matches
        .map(|e| e.id.as_str())
        .filter(|other| *other != newest.id)
        .collect();
    if others.is_empty() {
        return Ok(newest);
    }
    others.sort_unstable();
    others.dedup();
    Err(FindError::Ambiguous {
        prefix: id.to_string(),
        ids: others.len() + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, seq: u64, route: &str, subject: &str) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            seq,
            ts_ms: 1000 * seq,
            route: Some(route.into()),
            subject: Some(subject.into()),
            conversation: format!("c{}", seq % 2),
            status: 200,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            segment: 0,
            offset: 0,
            len: 0,
            hash: String::new(),
        }
    }

    fn index() -> Vec<IndexEntry> {
        vec![
            entry("aaaa1111bbbb2222", 0, "openai", "alice"),
            entry("aaaa1111cccc3333", 1, "openai", "bob"),
            entry("dddd4444eeee5555", 2, "mock", "alice"),
            entry("short", 3, "mock", "bob"),
            // The same id indexed twice is one exchange (the newer entry answers).
            entry("ffff6666gggg7777", 4, "mock", "alice"),
            entry("ffff6666gggg7777", 5, "mock", "alice"),
        ]
    }

    #[test]
    fn find_by_id_or_unambiguous_prefix() {
        let index = index();
        // (asked, the seq found, or the error shown)
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("aaaa1111bbbb2222", Ok(0)),
            ("aaaa1111cccc3333", Ok(1)),
            ("short", Ok(3)),
            ("dddd4444", Ok(2)),
            ("dddd4444eeee", Ok(2)),
            ("ffff6666", Ok(5)),
            (
                "aaaa1111",
                Err("aaaa1111 is the start of 2 recorded exchanges' ids; give more of the id"),
            ),
            ("aaaa1111b", Ok(0)),
            // Below the shortest prefix: only a whole id counts.
            ("dddd444", Err("no such recorded exchange")),
            ("shor", Err("no such recorded exchange")),
            ("", Err("no such recorded exchange")),
            ("99999999", Err("no such recorded exchange")),
            ("dddd4444eeee5555x", Err("no such recorded exchange")),
        ];
        for (asked, want) in cases {
            let got = find_in(&index, asked)
                .map(|e| e.seq)
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "find {asked:?}");
        }
    }

    #[test]
    fn list_filters_newest_first() {
        let dir = std::env::temp_dir().join(format!("agentgate-query-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lines: String = index()
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(dir.join("index.jsonl"), lines).unwrap();
        let all = Filter {
            limit: usize::MAX,
            ..Filter::default()
        };
        // (filter, the seqs listed)
        let cases: Vec<(Filter, Vec<u64>)> = vec![
            (all.clone(), vec![5, 4, 3, 2, 1, 0]),
            (
                Filter {
                    limit: 2,
                    ..all.clone()
                },
                vec![5, 4],
            ),
            (
                Filter {
                    since_ms: 3000,
                    ..all.clone()
                },
                vec![5, 4, 3],
            ),
            (
                Filter {
                    route: Some("openai".into()),
                    ..all.clone()
                },
                vec![1, 0],
            ),
            (
                Filter {
                    subject: Some("bob".into()),
                    ..all.clone()
                },
                vec![3, 1],
            ),
            (
                Filter {
                    conversation: Some("c0".into()),
                    route: Some("mock".into()),
                    ..all.clone()
                },
                vec![4, 2],
            ),
            (
                Filter {
                    route: Some("nope".into()),
                    ..all.clone()
                },
                vec![],
            ),
        ];
        for (filter, want) in cases {
            let got: Vec<u64> = list(&dir, &filter).iter().map(|e| e.seq).collect();
            assert_eq!(got, want, "{filter:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
