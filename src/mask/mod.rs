//! The masking engine (pure, no I/O): finds secrets and personal data in text and replaces
//! them per policy — redact, keyed hash, reversible pseudonym, or block.
//!
//! Every detector (built-in, custom regex, deny-list word) and the pseudonym placeholder form
//! are compiled into multi-pattern regexes (two: e-mail alone, everything else together), and
//! their matches are merged leftmost-first. Validators (Luhn,
//! mod-97, entropy...) turn pattern hits into findings. A lazy DFA over the same patterns tells
//! a stream how many trailing bytes could still become a match (`stream.rs`), which is all it
//! ever holds back. Whether a long text holds any candidate at all is answered by walking only
//! the bytes near those every match must hold (`anchors.rs`), or in lanes (`any_candidate`).

mod anchors;
pub mod corpus;
pub mod detectors;
pub mod documents;
pub mod encoded;
pub mod eval;
pub mod injected;
pub mod json;
pub mod lines;
pub mod sse;
pub mod stream;
pub mod validate;
pub mod vault;

use detectors::{Category, Extend, BUILTINS};
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;
pub use vault::Vault;

/// What happens to a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Leave it.
    Allow,
    /// `[REDACTED:EMAIL]`.
    Redact,
    /// `[EMAIL:hmac]`: keyed, stable, irreversible.
    Hash,
    /// `<EMAIL_1>`, restored in the response to the same conversation.
    Pseudonymize,
    /// Refuse the request (or end the stream).
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Redact => "redact",
            Action::Hash => "hash",
            Action::Pseudonymize => "pseudonymize",
            Action::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "allow" | "off" => Action::Allow,
            "redact" => Action::Redact,
            "hash" => Action::Hash,
            "pseudonymize" => Action::Pseudonymize,
            "block" => Action::Block,
            _ => return None,
        })
    }
}

/// A detector the engine runs.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    /// `EMAIL` for `email`: what placeholders and redactions are called.
    pub label: String,
    pub category: Category,
    group: usize,
    validate: Option<fn(&str) -> bool>,
    extend: Option<Extend>,
}

/// A custom detector from the config: a named regex or a list of words.
#[derive(Debug, Clone)]
pub struct CustomDetector {
    pub name: String,
    pub regex: Option<String>,
    pub words: Vec<String>,
}

/// What one direction of a policy does, by category and by detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub secrets: Action,
    pub pii: Action,
    pub custom: Action,
    /// Per-detector overrides (`email: hash`).
    pub detectors: BTreeMap<String, Action>,
}

impl Rules {
    /// The same action for every category and no per-detector override.
    pub fn all(action: Action) -> Rules {
        Rules {
            secrets: action,
            pii: action,
            custom: action,
            detectors: BTreeMap::new(),
        }
    }

    /// Whether every detector is allowed (nothing is masked: a stream masker then only frames
    /// the stream for the credential scrubber).
    pub fn allows_all(&self) -> bool {
        [self.secrets, self.pii, self.custom]
            .iter()
            .chain(self.detectors.values())
            .all(|a| *a == Action::Allow)
    }

    pub fn action(&self, d: &Detector) -> Action {
        if let Some(a) = self.detectors.get(&d.name) {
            return *a;
        }
        match d.category {
            Category::Secret => self.secrets,
            Category::Pii => self.pii,
            Category::Custom => self.custom,
        }
    }
}

/// A value found in a text: its byte span and which detector found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    /// Index into `Engine::detectors`, or `Engine::placeholder_id()` for a pseudonym.
    pub detector: usize,
    /// Where the pattern (with its context, e.g. `password=`) begins: a stream that must wait
    /// for this value holds back from here, so the context is seen again.
    pub anchor: usize,
    /// The value reached the end of the text and could go on: a stream must wait.
    pub open: bool,
    /// Passed its validator (an open finding may not have, yet).
    pub valid: bool,
}

/// Counts of what a masking pass did, for metrics and records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// (detector, action) -> count.
    pub counts: BTreeMap<(String, &'static str), u64>,
    /// Placeholders restored to their values.
    pub restored: u64,
    /// The first detector whose action is `block`.
    pub blocked: Option<String>,
}

impl Tally {
    fn add(&mut self, detector: &str, action: Action) {
        *self
            .counts
            .entry((detector.to_string(), action.as_str()))
            .or_default() += 1;
        if action == Action::Block && self.blocked.is_none() {
            self.blocked = Some(detector.to_string());
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        self.restored += other.restored;
        if self.blocked.is_none() {
            self.blocked = other.blocked;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.restored == 0
    }
}

/// The placeholder form of a pseudonym: `<LABEL_N>`.
const PLACEHOLDER: &str = r"<[A-Z][A-Z0-9_]{0,39}_[0-9]{1,6}>";

/// One compiled regex and the global detector id of each of its patterns.
struct Part {
    regex: Regex,
    ids: Vec<usize>,
}

/// Texts at least this long are searched for a candidate in lanes (shorter ones gain nothing
/// over the overlap the lanes share).
const LANES_FROM: usize = 1024;
/// Texts at least this long are searched in four lanes (`cargo bench --bench mask`: a 1.5 KB
/// body is faster in two, a 2.2 KB one in four; eight spill the walks' state to the stack).
const LANES4_FROM: usize = 2048;

/// Texts at least this long are walked only around their anchors when they have few.
const ANCHORS_FROM: usize = 256;

/// The earliest position at or after `from` from which the rest of `text` is still the
/// beginning of a match of `dfa` (anchored there); `text.len()` when there is none. A cache that
/// gives up counts as "may match" (a stream holds back, conservatively).
pub(crate) fn live_from(dfa: &DFA, caches: &CachePool, text: &[u8], from: usize) -> usize {
    let mut cache = caches.take(dfa);
    let mut found = text.len();
    'starts: for i in from..text.len() {
        let input = Input::new(text).range(i..).anchored(Anchored::Yes);
        let Ok(mut sid) = dfa.start_state_forward(&mut cache, &input) else {
            found = i;
            break;
        };
        for &b in &text[i..] {
            match dfa.next_state(&mut cache, sid, b) {
                Ok(next) if next.is_dead() => continue 'starts,
                Ok(next) if next.is_quit() => break,
                Ok(next) => sid = next,
                Err(_) => break,
            }
        }
        found = i;
        break;
    }
    caches.put(cache);
    found
}

/// Lazy-DFA caches kept for reuse across calls (a cache is per search, not shareable).
#[derive(Default)]
pub(crate) struct CachePool(Mutex<Vec<DfaCache>>);

impl CachePool {
    /// A cache of `dfa` from the pool, or a new one.
    pub(crate) fn take(&self, dfa: &DFA) -> DfaCache {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| dfa.create_cache())
    }

    pub(crate) fn put(&self, cache: DfaCache) {
        if let Ok(mut p) = self.0.lock() {
            p.push(cache);
        }
    }
}

/// Detectors scanned by a regex of their own. The e-mail pattern starts at every word, so in a
/// combined automaton it multiplies the states of every other pattern (1.4 MB/s measured);
/// alone, the regex engine searches for `@` first and runs at memchr speed.
const SOLO: &[&str] = &["email"];

/// Debug shows only that it is an engine (its tables are large and say nothing useful).
impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

pub struct Engine {
    parts: Vec<Part>,
    dfa: DFA,
    dfa_caches: CachePool,
    /// The last part's patterns as a lazy DFA of their own, stepped by `any_candidate` over
    /// parts of a text at once (see `lanes`), and the longest text they can match.
    lanes: DFA,
    lane_caches: CachePool,
    lane_overlap: usize,
    /// Where in a text the lanes' patterns can match (`None` if a custom pattern can match
    /// anywhere): long texts are walked only there.
    anchors: Option<anchors::Anchors>,
    /// The lanes' patterns, for a test that rebuilds the lanes with a tiny cache.
    #[cfg(test)]
    lane_patterns: Vec<String>,
    detectors: Vec<Detector>,
    /// The longest text any pattern can match: a stream never holds back more.
    max_len: usize,
    /// No pattern uses a `^`/`$` anchor (only a custom one could): then text in which no
    /// pattern finds a candidate has none in any part of it either (see `mask_body`).
    unanchored: bool,
    hash_key: [u8; 32],
}

pub(crate) fn syntax_config() -> syntax::Config {
    // Byte-oriented, ASCII classes and word boundaries: fast, and the lazy DFA never gives up
    // on non-ASCII text. Spans are widened to character boundaries before use.
    syntax::Config::new().unicode(false).utf8(false)
}

/// A custom detector's pattern: its regex and its words (case-insensitive), as alternatives.
fn custom_pattern(c: &CustomDetector) -> String {
    let mut alternatives = Vec::new();
    if let Some(r) = &c.regex {
        alternatives.push(format!("(?:{r})"));
    }
    if !c.words.is_empty() {
        let words: Vec<String> = c.words.iter().map(|w| regex_syntax_escape(w)).collect();
        alternatives.push(format!("(?i:{})", words.join("|")));
    }
    alternatives.join("|")
}

/// Checks one detector's pattern: it parses, matches only bounded text (streams must know how
/// much to hold back) and never the empty string. Its longest match, and whether it is anchored.
fn check_pattern(p: &str, name: &str) -> Result<(usize, bool), String> {
    let hir = regex_automata::util::syntax::parse_with(p, &syntax_config())
        .map_err(|e| format!("detector `{name}`: {e}"))?;
    let anchored = hir.properties().look_set().contains_anchor();
    let Some(n) = hir.properties().maximum_len() else {
        return Err(format!(
            "detector `{name}`: the pattern can match text of unbounded length; bound every repetition (e.g. [0-9]{{6,12}} instead of [0-9]+) so streams know how much to hold back"
        ));
    };
    if hir.properties().minimum_len() == Some(0) {
        return Err(format!(
            "detector `{name}`: the pattern matches the empty string"
        ));
    }
    Ok((n, anchored))
}

impl Engine {
    /// Checks custom detectors as `new` does (each pattern, and that they compile together)
    /// without building the whole engine: config validation uses it, so a configuration's
    /// engine is compiled once, by start-up or the reload that applies it.
    pub fn check_custom(custom: &[CustomDetector]) -> Result<(), String> {
        let patterns: Vec<String> = custom.iter().map(custom_pattern).collect();
        for (c, p) in custom.iter().zip(&patterns) {
            check_pattern(p, &c.name)?;
        }
        if !patterns.is_empty() {
            Regex::builder()
                .syntax(syntax_config())
                .build_many(&patterns)
                .map_err(|e| format!("building the detectors: {e}"))?;
        }
        Ok(())
    }

    /// The built-in detectors plus `custom`, with the key that makes `hash` stable.
    pub fn new(custom: &[CustomDetector], hash_key: [u8; 32]) -> Result<Engine, String> {
        let mut patterns: Vec<String> = Vec::new();
        let mut detectors = Vec::new();
        for b in BUILTINS {
            patterns.push(b.pattern.to_string());
            detectors.push(Detector {
                name: b.name.to_string(),
                label: b.name.to_ascii_uppercase(),
                category: b.category,
                group: b.group,
                validate: b.validate,
                extend: b.extend,
            });
        }
        for c in custom {
            patterns.push(custom_pattern(c));
            detectors.push(Detector {
                name: c.name.clone(),
                label: c.name.to_ascii_uppercase().replace('-', "_"),
                category: Category::Custom,
                group: 0,
                validate: None,
                extend: None,
            });
        }
        patterns.push(PLACEHOLDER.to_string());
        let mut max_len = 0;
        let mut unanchored = true;
        // The longest text each pattern itself (without its extension) can match.
        let mut longest = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            let (n, anchored) = check_pattern(p, &name_of(&detectors, i))?;
            unanchored &= !anchored;
            let ext = detectors
                .get(i)
                .and_then(|d: &Detector| d.extend)
                .map_or(0, |x| x.max_len());
            max_len = max_len.max(n).max(ext);
            longest.push(n);
        }
        let solo = |i: usize| {
            detectors
                .get(i)
                .is_some_and(|d: &Detector| SOLO.contains(&d.name.as_str()))
        };
        let mut groups: Vec<Vec<usize>> = (0..patterns.len())
            .filter(|&i| solo(i))
            .map(|i| vec![i])
            .collect();
        groups.push((0..patterns.len()).filter(|&i| !solo(i)).collect());
        let mut parts = Vec::new();
        for ids in groups {
            let pats: Vec<&str> = ids.iter().map(|&i| patterns[i].as_str()).collect();
            let regex = Regex::builder()
                .syntax(syntax_config())
                .build_many(&pats)
                .map_err(|e| format!("building the detectors: {e}"))?;
            parts.push(Part { regex, ids });
        }
        let dfa = DFA::builder()
            .syntax(syntax_config())
            .configure(DFA::config().cache_capacity(4 << 20))
            .build_many(&patterns)
            .map_err(|e| format!("building the stream automaton: {e}"))?;
        let last = &parts[parts.len() - 1].ids;
        let lane_patterns: Vec<&str> = last.iter().map(|&i| patterns[i].as_str()).collect();
        let lanes = DFA::builder()
            .syntax(syntax_config())
            .build_many(&lane_patterns)
            .map_err(|e| format!("building the detectors: {e}"))?;
        let lane_overlap = last.iter().map(|&i| longest[i]).max().unwrap_or(0);
        let anchors = anchors::Anchors::new(&lane_patterns, lane_overlap, syntax_config());
        Ok(Engine {
            parts,
            dfa,
            dfa_caches: CachePool::default(),
            lanes,
            lane_caches: CachePool::default(),
            lane_overlap,
            anchors,
            #[cfg(test)]
            lane_patterns: lane_patterns.iter().map(|p| p.to_string()).collect(),
            detectors,
            max_len,
            unanchored,
            hash_key,
        })
    }

    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    pub fn placeholder_id(&self) -> usize {
        self.detectors.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether any pattern finds a candidate anywhere in `text` (before validation).
    pub fn any_candidate(&self, text: &[u8]) -> bool {
        let (last, solo) = self.parts.split_last().expect("at least one part");
        if solo.iter().any(|p| p.regex.is_match(Input::new(text))) {
            return true;
        }
        if self.unanchored && text.len() >= ANCHORS_FROM {
            if let Some(found) = self.around_anchors(text) {
                return found;
            }
        }
        // Long texts in lanes: one lazy DFA step is a load that waits for the one before, so
        // independent walks over parts of the text take about the time of one.
        if self.unanchored && text.len() >= LANES_FROM {
            let found = if text.len() >= LANES4_FROM {
                self.lanes::<4>(text)
            } else {
                self.lanes::<2>(text)
            };
            if let Some(found) = found {
                return found;
            }
        }
        last.regex.is_match(Input::new(text))
    }

    /// Whether the last part matches in `text`, walking only the bytes around its anchors
    /// (`anchors.rs`); `None` when they are too many to gain anything or the lazy DFA gives up.
    fn around_anchors(&self, text: &[u8]) -> Option<bool> {
        // One walk steps a byte in about the time four lanes step four (`lanes`).
        let windows = self.anchors.as_ref()?.windows(text, text.len() / 4)?;
        let mut cache = self.lane_caches.take(&self.lanes);
        let mut found = Some(false);
        for w in windows {
            // The bytes around the window are look-around context, as in the whole text.
            let input = Input::new(text).range(w).earliest(true);
            match self.lanes.try_search_fwd(&mut cache, &input) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    found = Some(true);
                    break;
                }
                Err(_) => {
                    found = None;
                    break;
                }
            }
        }
        self.lane_caches.put(cache);
        found
    }

    /// `any_candidate` in one pass per part (what the lanes must agree with).
    #[cfg(test)]
    pub(crate) fn any_candidate_one_pass(&self, text: &[u8]) -> bool {
        self.parts
            .iter()
            .any(|p| p.regex.is_match(Input::new(text)))
    }

    /// The spans of a text of `len` bytes that `N` lanes search: `len` cut in `N` equal parts,
    /// each but the last running on by the longest match any pattern of the last part can
    /// make, so a match that starts in a span also ends in it.
    pub(crate) fn lane_spans<const N: usize>(&self, len: usize) -> [std::ops::Range<usize>; N] {
        std::array::from_fn(|k| {
            let start = len * k / N;
            let end = if k + 1 == N {
                len
            } else {
                (len * (k + 1) / N)
                    .saturating_add(self.lane_overlap)
                    .min(len)
            };
            start..end
        })
    }

    /// The lanes rebuilt with a cache so small that it is cleared every few steps.
    #[cfg(test)]
    pub(crate) fn with_tiny_lane_cache(mut self) -> Engine {
        let pats: Vec<&str> = self.lane_patterns.iter().map(String::as_str).collect();
        self.lanes = DFA::builder()
            .syntax(syntax_config())
            .configure(
                DFA::config()
                    .cache_capacity(0)
                    .skip_cache_capacity_check(true),
            )
            .build_many(&pats)
            .expect("the same patterns build");
        self.lane_caches = CachePool::default();
        self
    }

    /// Whether the last part matches in any of the `N` lane spans of `text` (the text around
    /// each is context for look-around), stepping them all at once through one cache (the
    /// lanes walk the same states: one table stays hot). `None` when the lazy DFA gives up or
    /// its cache was cleared under a lane (the caller searches the usual way).
    fn lanes<const N: usize>(&self, text: &[u8]) -> Option<bool> {
        let mut cache = self.lane_caches.take(&self.lanes);
        let found = self.step_lanes(text, self.lane_spans::<N>(text.len()), &mut cache);
        self.lane_caches.put(cache);
        found
    }

    // Its own function: inlined into a caller, the walks' state was spilled to the stack
    // between steps in some builds (a third slower). One index steps N slices in lockstep.
    #[inline(never)]
    #[allow(clippy::needless_range_loop)]
    fn step_lanes<const N: usize>(
        &self,
        text: &[u8],
        spans: [std::ops::Range<usize>; N],
        cache: &mut DfaCache,
    ) -> Option<bool> {
        let dfa = &self.lanes;
        let clears = cache.clear_count();
        let mut s = [LazyStateID::default(); N];
        for k in 0..N {
            s[k] = dfa
                .start_state_forward(cache, &Input::new(text).range(spans[k].clone()))
                .ok()?;
            // A match state, once entered, says a match ended one byte earlier; any other
            // tagged state (dead, quit) cannot occur in these unanchored ASCII searches: give
            // up on it.
            if s[k].is_tagged() {
                return None;
            }
        }
        // A state id is valid until the cache is cleared (when it fills up): then the other
        // lanes' states are gone and the search starts over the usual way.
        let valid = |cache: &DfaCache| cache.clear_count() == clears;
        if !valid(cache) {
            return None;
        }
        let n = spans.iter().map(|r| r.len()).min().unwrap_or(0);
        let heads: [&[u8]; N] = std::array::from_fn(|k| &text[spans[k].start..][..n]);
        for i in 0..n {
            // The fast step reads the transition table only; a tagged result is a transition
            // not computed yet (or a match): the full step computes it and tells which.
            let mut next = s;
            let mut tagged = false;
            for k in 0..N {
                next[k] = dfa.next_state_untagged(cache, s[k], heads[k][i]);
                tagged |= next[k].is_tagged();
            }
            if !tagged {
                s = next;
                continue;
            }
            for k in 0..N {
                s[k] = dfa.next_state(cache, s[k], heads[k][i]).ok()?;
                // Before the next lane's (now stale) state is used.
                if !valid(cache) {
                    return None;
                }
            }
            if s.iter().any(|x| x.is_tagged()) {
                return s.iter().any(|x| x.is_match()).then_some(true);
            }
        }
        for k in 0..N {
            let mut st = s[k];
            for &x in &text[spans[k].start + n..spans[k].end] {
                st = dfa.next_state(cache, st, x).ok()?;
                if st.is_tagged() {
                    return st.is_match().then_some(true);
                }
            }
            // The byte after the span (or the end of the text) completes a match ending there.
            st = match text.get(spans[k].end) {
                Some(&x) => dfa.next_state(cache, st, x).ok()?,
                None => dfa.next_eoi_state(cache, st).ok()?,
            };
            if st.is_match() {
                return Some(true);
            }
            // The next lanes' states stay valid only while the cache was not cleared.
            if !valid(cache) {
                return None;
            }
        }
        Some(false)
    }

    /// Every finding in `text`, in order, non-overlapping (leftmost-first; a pattern hit that
    /// fails its validator lets the search go on from the next byte).
    pub fn scan(&self, text: &[u8]) -> Vec<Finding> {
        self.scan_from(text, 0)
    }

    /// `scan` of `text[from..]`, with the bytes before `from` as look-behind context only. The
    /// text is searched as it stands and, when it holds escapes, decoded (`encoded.rs`): a
    /// value found only in the decoded view is reported as the original span that encodes it.
    /// Valid findings that overlap are merged into one span.
    pub fn scan_from(&self, text: &[u8], from: usize) -> Vec<Finding> {
        let plain = self.scan_plain(text, from);
        let Some(d) = encoded::decode(text) else {
            return plain;
        };
        let mut all = plain;
        for f in self.scan_plain(&d.text, d.position_of(from)) {
            let (start, end) = d.original(f.start, f.end);
            let (anchor, _) = d.original(f.anchor, f.anchor);
            all.push(Finding {
                start,
                end,
                anchor,
                ..f
            });
        }
        merge_findings(all)
    }

    /// Where a stream must start holding back `text` (scanned from `from`): the earliest
    /// position whose rest could still begin a match, as it stands or decoded, or an escape
    /// the end cut short; `text.len()` when nothing needs to wait.
    pub fn hold_from(&self, text: &[u8], from: usize) -> usize {
        let mut cut = self.live_suffix(text, from);
        if let Some(d) = encoded::decode(text) {
            let live = self.live_suffix(&d.text, d.position_of(from));
            cut = cut.min(d.original(live, live).0);
        }
        if let Some(i) = encoded::open_escape(text) {
            cut = cut.min(i.max(from));
        }
        encoded::escape_start(text, cut).max(from)
    }

    fn scan_plain(&self, text: &[u8], from: usize) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut at = from;
        let n = self.parts.len();
        // The next match of each part at or after `at` (start, end, local pattern id).
        let mut next: Vec<Option<(usize, usize, usize)>> = vec![None; n];
        let mut done = vec![false; n];
        // Created when a detector needs a group (most scans find nothing at all).
        let mut caps: Vec<Option<regex_automata::util::captures::Captures>> = vec![None; n];
        while at < text.len() {
            for k in 0..n {
                if done[k] || next[k].is_some_and(|m| m.0 >= at) {
                    continue;
                }
                match self.parts[k].regex.find(Input::new(text).range(at..)) {
                    Some(m) => next[k] = Some((m.start(), m.end(), m.pattern().as_usize())),
                    None => {
                        done[k] = true;
                        next[k] = None;
                    }
                }
            }
            let best = (0..n)
                .filter_map(|k| next[k].map(|m| (m.0, self.parts[k].ids[m.2], k, m)))
                .min_by_key(|(start, id, _, _)| (*start, *id));
            let Some((_, pid, k, (m_start, m_end, _))) = best else {
                break;
            };
            let (mut s, mut e) = (m_start, m_end);
            let mut open = false;
            let valid = if pid == self.placeholder_id() {
                true
            } else {
                let det = &self.detectors[pid];
                if det.group > 0 {
                    let input = Input::new(text).range(m_start..m_end);
                    let c = caps[k].get_or_insert_with(|| self.parts[k].regex.create_captures());
                    self.parts[k].regex.search_captures(&input, c);
                    match c.get_group(det.group) {
                        Some(g) => {
                            s = g.start;
                            e = g.end;
                        }
                        None => {
                            at = m_start + 1;
                            continue;
                        }
                    }
                }
                if let Some(x) = det.extend {
                    match x.apply(text, s, e) {
                        Some(ext) => {
                            e = ext.end;
                            open = ext.open;
                        }
                        None => {
                            at = m_start + 1;
                            continue;
                        }
                    }
                }
                (s, e) = widen(text, s.max(from), e);
                match det.validate {
                    Some(v) => {
                        let ok = |end: usize| std::str::from_utf8(&text[s..end]).is_ok_and(v);
                        if ok(e) {
                            true
                        } else if let Some(end) = (s + 1..e)
                            .rev()
                            .filter(|&i| matches!(text[i], b' ' | b'-'))
                            .find(|&i| ok(i))
                        {
                            // A greedy match ran into what follows the value (a card number
                            // followed by ` 12/27`): the longest valid value before a separator.
                            e = end;
                            true
                        } else {
                            false
                        }
                    }
                    None => true,
                }
            };
            if valid || open {
                out.push(Finding {
                    start: s,
                    end: e,
                    detector: pid,
                    anchor: m_start.min(s),
                    open,
                    valid,
                });
            }
            if valid {
                at = e.max(m_start + 1);
            } else {
                at = m_start + 1;
            }
        }
        out
    }

    /// The earliest position at or after `from` where the rest of `text` could still be the
    /// beginning of a match (so a stream must hold it back); `text.len()` if there is none.
    pub fn live_suffix(&self, text: &[u8], from: usize) -> usize {
        let from = from.max(text.len().saturating_sub(self.max_len));
        live_from(&self.dfa, &self.dfa_caches, text, from)
    }

    /// Replaces the findings in `text` per `rules`; placeholders known to `vault` are
    /// restored when `restore` is set. Returns the new text and what was done.
    pub fn apply(
        &self,
        text: &str,
        findings: &[Finding],
        rules: &Rules,
        vault: Option<&Vault>,
        restore: bool,
    ) -> (String, Tally) {
        let mut out = String::with_capacity(text.len());
        let mut tally = Tally::default();
        let mut last = 0;
        for f in findings.iter().filter(|f| f.valid) {
            let value = &text[f.start..f.end];
            let replacement = if f.detector == self.placeholder_id() {
                match (restore, vault.and_then(|v| v.value_of(value))) {
                    (true, Some(original)) => {
                        tally.restored += 1;
                        Some(original)
                    }
                    _ => None,
                }
            } else {
                let det = &self.detectors[f.detector];
                let action = rules.action(det);
                if action != Action::Allow {
                    tally.add(&det.name, action);
                }
                match action {
                    Action::Allow => None,
                    Action::Redact | Action::Block => Some(format!("[REDACTED:{}]", det.label)),
                    Action::Hash => Some(format!("[{}:{}]", det.label, self.keyed_hash(value))),
                    Action::Pseudonymize => Some(match vault {
                        Some(v) => v.placeholder_for(&det.label, value),
                        None => format!("[REDACTED:{}]", det.label),
                    }),
                }
            };
            if let Some(r) = replacement {
                out.push_str(&text[last..f.start]);
                match encoded::encoding_of(value.as_bytes()) {
                    encoded::Encoding::Plain => out.push_str(&r),
                    enc => out.push_str(&encoded::encode_like(&r, enc)),
                }
                last = f.end;
            }
        }
        out.push_str(&text[last..]);
        (out, tally)
    }

    /// Scans and applies in one call.
    pub fn mask(
        &self,
        text: &str,
        rules: &Rules,
        vault: Option<&Vault>,
        restore: bool,
    ) -> (String, Tally) {
        let findings = self.scan(text.as_bytes());
        if findings.is_empty() {
            return (text.to_string(), Tally::default());
        }
        self.apply(text, &findings, rules, vault, restore)
    }

    /// A body masked by `rules` for storage or display: as JSON when it parses (string values
    /// only), else as UTF-8 text; `None` when it is neither. A body with nothing to mask comes
    /// back borrowed, not copied.
    pub fn mask_body<'a>(&self, body: &'a [u8], rules: &Rules) -> Option<Cow<'a, str>> {
        if self.nothing_in_any_string(body) {
            return std::str::from_utf8(body).ok().map(Cow::Borrowed);
        }
        self.mask_body_walk(body, rules).map(Cow::Owned)
    }

    /// Whether one pass over the raw bytes shows that no string of the JSON document (or no
    /// part of the text) `body` holds anything to find, placeholders included. Without an
    /// escape marker (a backslash, `%`, `&`) every JSON string is a substring of the body as it
    /// stands and decodes to itself, and with no anchor in any pattern (word boundaries see the
    /// same non-word `"` around a value as the edge of the value alone), no candidate in the
    /// body means none in any string. `false` says only "walk the strings".
    pub fn nothing_in_any_string(&self, body: &[u8]) -> bool {
        self.unanchored && !encoded::has_marker(body) && !self.any_candidate(body)
    }

    /// `mask_body` without the shortcut: each JSON string value (or the text) scanned.
    fn mask_body_walk(&self, body: &[u8], rules: &Rules) -> Option<String> {
        let walked =
            json::validate(body).and_then(|()| json::mask_strings(self, body, rules, None, false));
        if let Ok((m, _)) = walked {
            return Some(
                String::from_utf8(m)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            );
        }
        let text = std::str::from_utf8(body).ok()?;
        Some(self.mask_decoded_once_more(self.mask(text, rules, None, false).0, rules))
    }

    /// A body that is not JSON (broken, or a record's body cut at `recording.max_body`) is
    /// masked as text, where one layer of escapes is decoded; in JSON, a string's own escapes
    /// are decoded and then one layer more. A value escaped twice (a tool call's `arguments`,
    /// JSON inside a JSON string: `\\u0073k-…`) would pass as text what the JSON walk finds:
    /// where the masked text, decoded once, still holds something to mask, that decoded text
    /// is what is kept, masked (its escapes are lost, never the value).
    fn mask_decoded_once_more(&self, masked: String, rules: &Rules) -> String {
        let Some(view) = encoded::decode(masked.as_bytes()) else {
            return masked;
        };
        let view = String::from_utf8_lossy(&view.text);
        if self.scan(view.as_bytes()).is_empty() {
            return masked;
        }
        let again = self.mask(&view, rules, None, false).0;
        if again == view {
            masked
        } else {
            again
        }
    }

    /// First 12 hex digits of HMAC-SHA256(key, value): stable for a key, useless without it.
    fn keyed_hash(&self, value: &str) -> String {
        match boring::hash::hmac_sha256(&self.hash_key, value.as_bytes()) {
            Ok(m) => crate::util::hex::hex(&m[..6]),
            Err(_) => "unavailable".into(),
        }
    }
}

fn name_of(detectors: &[Detector], i: usize) -> String {
    detectors
        .get(i)
        .map(|d| d.name.clone())
        .unwrap_or_else(|| "placeholder".into())
}

/// Findings sorted by start; valid ones that overlap become one span (the earliest's
/// detector), so no byte is replaced twice. Invalid ones (open, for a stream's hold-back) stay.
fn merge_findings(mut all: Vec<Finding>) -> Vec<Finding> {
    all.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut out: Vec<Finding> = Vec::with_capacity(all.len());
    for f in all {
        if f.valid {
            if let Some(p) = out.iter_mut().rev().find(|p| p.valid) {
                if f.start < p.end {
                    p.end = p.end.max(f.end);
                    p.anchor = p.anchor.min(f.anchor);
                    p.open |= f.open;
                    continue;
                }
            }
        }
        out.push(f);
    }
    out
}

/// Widens a byte span to UTF-8 character boundaries.
fn widen(text: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s > 0 && (text[s] & 0xC0) == 0x80 {
        s -= 1;
    }
    while e < text.len() && (text[e] & 0xC0) == 0x80 {
        e += 1;
    }
    (s, e)
}

/// A literal for the regex syntax (meta characters escaped).
fn regex_syntax_escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len() * 2);
    for c in word.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod detector_tests;
#[cfg(test)]
mod tests;
