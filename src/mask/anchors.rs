//! Where in a text a candidate can be, found faster than the detectors' automaton walks it.
//!
//! Nearly every match of a built-in detector holds one of a few bytes that plain prose and
//! JSON keys rarely hold: a digit, `:`, `=`, `-`, `_`, `+`, `<`, `A` or `J` (card numbers and
//! phones have digits, keys and tokens `-`/`_`, `password: x` a `:`, `AKIA...`/`AIza...` an
//! `A`, JWTs `eyJ`). A text is searched for those bytes sixteen at a time; only the bytes
//! within the longest match's length of one are walked by the automaton. A pattern that can
//! match without any of them (`Bearer` tokens, deny-list words) is found by its leading
//! literals instead (`Bearer`, `bearer`), searched with Aho-Corasick.
//!
//! Both properties are proved, not assumed, when the engine is built: each pattern's syntax
//! must hold an anchor in every match (a `[:=]` or `sk-` that cannot be skipped), or its own
//! DFA, explored over every other byte, must reach no match (`anchored_by`), or its prefixes
//! must be a finite set of literals of a few bytes. If one pattern has none of these (a custom
//! regex such as `[a-z]{6}`), the engine does without this and walks every byte.

use aho_corasick::AhoCorasick;
use regex_automata::hybrid::dfa::DFA;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Class, Hir, HirKind};
use std::collections::HashSet;
use std::ops::Range;

/// The anchor bytes as one range and single bytes (what the SIMD search compares with).
const RANGE: (u8, u8) = (b'0', b':');
const SINGLES: [u8; 7] = [b'=', b'-', b'_', b'+', b'<', b'A', b'J'];

/// Leading literals shorter than this would hit too often to be worth a search.
const MIN_LITERAL: usize = 3;
/// Leading literals are cut to this many bytes (a prefix of a prefix is one too).
const MAX_LITERAL: usize = 6;

/// A pattern's lazy DFA holding more than this is not explored further (the pattern then
/// needs literals).
const DFA_LIMIT: usize = 4 << 20;

fn is_anchor(b: u8) -> bool {
    (RANGE.0..=RANGE.1).contains(&b) || SINGLES.contains(&b)
}

pub(crate) struct Anchors {
    /// The leading literals of the patterns no anchor byte is in.
    literals: Option<AhoCorasick>,
    /// The longest text any of the patterns matches.
    reach: usize,
}

impl Anchors {
    /// For the patterns (with the engine's syntax), whose matches are at most `reach` long;
    /// `None` if a pattern has neither an anchor byte in every match nor leading literals.
    pub(crate) fn new(patterns: &[&str], reach: usize, config: syntax::Config) -> Option<Anchors> {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        for p in patterns {
            if anchored_by(p, config, is_anchor) == Some(true) {
                continue;
            }
            literals.extend(leading_literals(p, config)?);
        }
        let literals = if literals.is_empty() {
            None
        } else {
            literals.sort();
            literals.dedup();
            Some(
                AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(&literals)
                    .ok()?,
            )
        };
        Some(Anchors { literals, reach })
    }

    /// The parts of `text` every match in it lies within (sorted, disjoint, merged when they
    /// are close), or `None` once they would cover more than `max` bytes (walking the whole
    /// text in lanes is then as cheap).
    pub(crate) fn windows(&self, text: &[u8], max: usize) -> Option<Vec<Range<usize>>> {
        let n = text.len();
        let reach = self.reach;
        let mut cover = Cover {
            out: Vec::new(),
            covered: 0,
            max,
        };
        // A match that holds the anchor at `q` starts after q - reach and ends by q + reach.
        let mut at = 0;
        while let Some((first, last, next)) = next_anchors(text, at) {
            cover.add(first.saturating_sub(reach)..(last + reach + 1).min(n))?;
            at = next;
        }
        let Some(ac) = &self.literals else {
            return Some(cover.out);
        };
        // A match that starts with a literal at `s` ends by s + reach. The search skips a
        // literal that starts inside the one before it (it is not an overlapping search, so
        // it can use a SIMD prefilter): the window of the one found reaches that far too.
        let mut lit: Vec<Range<usize>> = ac
            .find_iter(text)
            .map(|m| m.start()..(m.end() + reach).min(n))
            .collect();
        if lit.is_empty() {
            return Some(cover.out);
        }
        lit.append(&mut cover.out);
        lit.sort_by_key(|r| r.start);
        cover.covered = 0;
        for w in lit {
            cover.add(w)?;
        }
        Some(cover.out)
    }
}

/// Windows closer than this are walked as one.
const GAP: usize = 64;

/// Windows added in order of their starts, merged where they overlap or nearly touch.
struct Cover {
    out: Vec<Range<usize>>,
    covered: usize,
    max: usize,
}

impl Cover {
    /// `None` once more than `max` bytes are covered.
    fn add(&mut self, w: Range<usize>) -> Option<()> {
        match self.out.last_mut() {
            // Walking a short gap costs less than starting another search after it.
            Some(last) if w.start <= last.end + GAP => {
                if w.end > last.end {
                    self.covered += w.end - last.end;
                    last.end = w.end;
                }
            }
            _ => {
                self.covered += w.len();
                self.out.push(w);
            }
        }
        (self.covered <= self.max).then_some(())
    }
}

/// Whether every match of `pattern` (in any text) holds a byte `anchor` accepts; `None` if its
/// DFA grew past the limit. Shown by the syntax when it can be (`holds_anchor`); otherwise the
/// pattern's lazy DFA (every match, anchored) is walked from each kind of look-behind over the
/// bytes that are not anchors: no state so reached may end a match, on any next byte or at the
/// end of the text.
fn anchored_by(pattern: &str, config: syntax::Config, anchor: impl Fn(u8) -> bool) -> Option<bool> {
    // Most patterns show it in their syntax (`[:=]`, `sk-`, `[0-9]{13}`): no DFA needed.
    let hir = syntax::parse_with(pattern, &config).ok()?;
    if holds_anchor(&hir, &anchor) {
        return Some(true);
    }
    explore(pattern, config, anchor)
}

/// `anchored_by` shown by the pattern's lazy DFA alone.
fn explore(pattern: &str, config: syntax::Config, anchor: impl Fn(u8) -> bool) -> Option<bool> {
    // A lazy DFA: only the states reachable over non-anchor bytes are ever computed (building
    // the whole DFA of a pattern such as `aws_secret_key` took most of a second in a debug
    // build, and the engine is built again on every reload).
    let dfa = DFA::builder()
        .syntax(config)
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .starts_for_each_pattern(false)
                .cache_capacity(DFA_LIMIT),
        )
        .build(pattern)
        .ok()?;
    let mut cache = dfa.create_cache();
    // Bytes the pattern does not tell apart lead to the same state: one byte of each class is
    // walked, and a class is walked over if any of its bytes is not an anchor.
    let classes = dfa.byte_classes();
    let mut free = vec![false; classes.alphabet_len()];
    let mut byte_of = vec![0u8; classes.alphabet_len()];
    for b in 0..=255u8 {
        let c = classes.get(b) as usize;
        free[c] |= !anchor(b);
        byte_of[c] = b;
    }
    let mut seen = HashSet::new();
    let mut todo = Vec::new();
    // Start of text, after a word byte, a non-word byte, a line feed, a carriage return.
    for before in [&b""[..], b"a", b" ", b"\n", b"\r"] {
        let input = Input::new(before)
            .range(before.len()..)
            .anchored(regex_automata::Anchored::Yes);
        let s = dfa.start_state_forward(&mut cache, &input).ok()?;
        if seen.insert(s) {
            todo.push(s);
        }
    }
    while let Some(s) = todo.pop() {
        // Match states are entered one byte late: a match of the bytes walked so far.
        if dfa.next_eoi_state(&mut cache, s).ok()?.is_match() {
            return Some(false);
        }
        for (c, &b) in byte_of.iter().enumerate() {
            let t = dfa.next_state(&mut cache, s, b).ok()?;
            if t.is_match() {
                return Some(false);
            }
            if t.is_quit() || t.is_unknown() {
                return None;
            }
            if free[c] && !t.is_dead() && seen.insert(t) {
                todo.push(t);
            }
        }
    }
    // State ids stay valid only while the cache was never cleared (it filled up).
    (cache.clear_count() == 0).then_some(true)
}

/// Whether every text `hir` matches holds a byte `anchor` accepts, seen from its syntax alone
/// (`false` may only mean "not shown"): a literal or class of anchors only, at least once, in
/// sequence with anything or in every alternative.
fn holds_anchor(hir: &Hir, anchor: &impl Fn(u8) -> bool) -> bool {
    match hir.kind() {
        HirKind::Literal(lit) => lit.0.iter().any(|&b| anchor(b)),
        HirKind::Class(Class::Bytes(c)) => {
            c.ranges().iter().all(|r| (r.start()..=r.end()).all(anchor)) && !c.ranges().is_empty()
        }
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges()
                .iter()
                .all(|r| (r.start()..=r.end()).all(|ch| u8::try_from(ch).is_ok_and(anchor)))
                && !c.ranges().is_empty()
        }
        HirKind::Repetition(r) => r.min >= 1 && holds_anchor(&r.sub, anchor),
        HirKind::Capture(c) => holds_anchor(&c.sub, anchor),
        HirKind::Concat(subs) => subs.iter().any(|h| holds_anchor(h, anchor)),
        HirKind::Alternation(subs) => subs.iter().all(|h| holds_anchor(h, anchor)),
        HirKind::Empty | HirKind::Look(_) => false,
    }
}

/// Literals every match of `pattern` starts with, if they are a finite set of at least
/// `MIN_LITERAL` bytes each; cut to `MAX_LITERAL` bytes (`Bearer\t`, `Bearer\n`... become
/// `Bearer`: fewer literals, found as fast).
fn leading_literals(pattern: &str, config: syntax::Config) -> Option<Vec<Vec<u8>>> {
    let hir = syntax::parse_with(pattern, &config).ok()?;
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().len() < MIN_LITERAL) {
        return None;
    }
    let mut out: Vec<Vec<u8>> = lits
        .iter()
        .map(|l| l.as_bytes()[..l.as_bytes().len().min(MAX_LITERAL)].to_vec())
        .collect();
    out.sort();
    out.dedup();
    Some(out)
}

/// The first anchor byte at or after `i`, the last one in the sixteen bytes searched with it
/// (every anchor between the two is in the same window), and where to search on from.
#[cfg(target_arch = "x86_64")]
#[inline]
fn next_anchors(b: &[u8], mut i: usize) -> Option<(usize, usize, usize)> {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU (the target's baseline), and each load reads
    // the sixteen bytes from `i`, inside `b` (checked by the loop); the loads are unaligned.
    unsafe {
        let lo = _mm_set1_epi8(RANGE.0 as i8);
        let hi = _mm_set1_epi8(RANGE.1 as i8);
        let singles = SINGLES.map(|c| _mm_set1_epi8(c as i8));
        while i + 16 <= b.len() {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            // lo <= v <= hi, unsigned.
            let mut hit = _mm_and_si128(
                _mm_cmpeq_epi8(_mm_max_epu8(v, lo), v),
                _mm_cmpeq_epi8(_mm_min_epu8(v, hi), v),
            );
            for s in singles {
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, s));
            }
            let mask = _mm_movemask_epi8(hit) as u32;
            if mask != 0 {
                let first = i + mask.trailing_zeros() as usize;
                let last = i + 31 - mask.leading_zeros() as usize;
                return Some((first, last, i + 16));
            }
            i += 16;
        }
    }
    next_anchors_bytewise(b, i)
}

#[cfg(not(target_arch = "x86_64"))]
use next_anchors_bytewise as next_anchors;

fn next_anchors_bytewise(b: &[u8], i: usize) -> Option<(usize, usize, usize)> {
    let p = i + b.get(i..)?.iter().position(|&c| is_anchor(c))?;
    Some((p, p, p + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> syntax::Config {
        syntax::Config::new().unicode(false).utf8(false)
    }

    #[test]
    fn the_search_finds_every_anchor_byte_everywhere() {
        // The anchors the search reports (each run's first to last, all of them anchors or
        // not, must hold every anchor) for a text searched from `from`.
        fn found(text: &[u8], from: usize) -> Vec<usize> {
            let mut out = Vec::new();
            let mut at = from;
            while let Some((first, last, next)) = next_anchors(text, at) {
                assert!(first >= at && first <= last && last < next && next <= text.len() + 16);
                assert!(is_anchor(text[first]) && is_anchor(text[last]));
                out.extend((first..=last).filter(|&k| is_anchor(text[k])));
                at = next;
            }
            out
        }
        // Each byte value at each place of two 16-byte blocks and the tail after them, alone
        // and beside an anchor in the same block.
        for c in 0..=255u8 {
            for at in 0..40 {
                let mut text = vec![b'x'; 40];
                text[at] = c;
                let want: Vec<usize> = is_anchor(c).then_some(at).into_iter().collect();
                assert_eq!(found(&text, 0), want, "{c:#x} at {at}");
                assert_eq!(found(&text, at), want, "{c:#x} at {at} from {at}");
                assert_eq!(found(&text, at + 1), Vec::<usize>::new(), "{c:#x} at {at}");
                text[(at + 5) % 40] = b'7';
                let want: Vec<usize> = (0..40).filter(|&k| is_anchor(text[k])).collect();
                assert_eq!(found(&text, 0), want, "{c:#x} at {at} with a 7");
            }
        }
        assert!(found(b"", 0).is_empty());
        assert!(found(b"ab", 5).is_empty());
    }

    #[test]
    fn a_pattern_is_anchored_only_if_every_match_holds_an_anchor() {
        let yes = |p: &str| anchored_by(p, config(), is_anchor) == Some(true);
        let by_dfa = |p: &str| explore(p, config(), is_anchor) == Some(true);
        let by_syntax =
            |p: &str| holds_anchor(&syntax::parse_with(p, &config()).unwrap(), &is_anchor);
        // (pattern, every match holds an anchor byte)
        let table = [
            (r"[0-9]{4}", true),
            (r"\bsk-[a-z]{20}", true),
            (r"(?i:secret)\s{0,3}[:=]\s*x", true),
            (r"a[b0]c", false),
            (r"[a-z]{6}", false),
            (r"\bfoo\b", false),
            (r"x-?y", false),
            // A match may end before the anchor (the anchor is only look-ahead context).
            (r"abc\b", false),
            (r"abc(?:-|$)", false),
            (r"A|b", false),
            (r"A|b7", true),
            (r"(?:x[0-9]|y)z", false),
            (r"(?:x[0-9]|y=)z", true),
            (r"[a-z]{0,3}-?[0-9]{0}", false),
            (r"(?:[0-9]a|a[0-9])", true),
            (r"\b(?:ab?)?[0-9]", true),
        ];
        for (p, want) in table {
            assert_eq!(yes(p), want, "{p}");
            // The DFA decides every case; the syntax may only say yes when it is so.
            assert_eq!(by_dfa(p), want, "{p} (DFA)");
            assert!(!by_syntax(p) || want, "{p} (syntax)");
        }
        // The syntax shows these; the DFA agrees.
        for p in [
            r"(?i:aws).{0,5}[:=]x",
            r"x(?:[0-9]|[0-9]{2})",
            r"[0-9]|A|==",
        ] {
            assert!(by_syntax(p) && by_dfa(p), "{p}");
        }
    }

    #[test]
    fn leading_literals_are_required_and_long_enough() {
        assert_eq!(
            leading_literals(r"\b[Bb]earer\s{1,3}x", config()).unwrap(),
            vec![b"Bearer".to_vec(), b"bearer".to_vec()]
        );
        assert_eq!(
            leading_literals(r"(?:xyz|abcdefgh)", config()).unwrap(),
            vec![b"abcdef".to_vec(), b"xyz".to_vec()]
        );
        assert!(leading_literals(r"[a-z]{6}", config()).is_none());
        assert!(leading_literals(r"x?yz", config()).is_none());
        assert!(leading_literals(r"xy[a-z]", config()).is_none());
    }

    #[test]
    fn windows_hold_every_byte_a_match_around_an_anchor_can_reach() {
        let a = Anchors {
            literals: Some(AhoCorasick::new(["Bearer", "earer x"]).unwrap()),
            reach: 5,
        };
        let text = format!(
            "hello world 7 {}Bearer x and then",
            "and more words ".repeat(6)
        );
        let text = text.as_bytes();
        let w = a.windows(text, text.len()).unwrap();
        let seven = 12;
        assert_eq!(text[seven], b'7');
        let bearer = text.len() - 17;
        assert_eq!(&text[bearer..bearer + 6], b"Bearer");
        // (The literal inside the first one found is covered by the first one's window.)
        assert_eq!(w, vec![seven - 5..seven + 6, bearer..bearer + 6 + 5]);
        // Windows closer than GAP merge; too much coverage gives up.
        let dense = b"1 2 3 4 5 6";
        assert_eq!(a.windows(dense, 100).unwrap(), vec![0..dense.len()]);
        assert!(a.windows(dense, 5).is_none());
        let near = format!("1{}2", " ".repeat(GAP + 2 * 5));
        assert_eq!(
            a.windows(near.as_bytes(), 100).unwrap(),
            vec![0..near.len()]
        );
        let far = format!("1{}2", " ".repeat(GAP + 2 * 5 + 2));
        assert_eq!(a.windows(far.as_bytes(), 100).unwrap().len(), 2);
        assert!(a.windows(b"no such bytes here", 0).unwrap().is_empty());
    }
}
