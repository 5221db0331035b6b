//! The embedded record store: append-only JSON-lines segments under `state_dir/records`, each
//! line a record carrying the hash of the previous one (`prev`) and its own (`hash`, the
//! SHA-256 of the line without it), so a chain runs through every segment. An index file lists
//! each record's id, time, route, identity and place for listing. Retention deletes whole
//! segments from the oldest and writes down where the chain now starts (`retention.jsonl`).

use super::checkpoint::{self, Checkpoint, RetentionEvent};
use crate::util::hex::push_hex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Bytes of records a batch stops at (it holds at least one record, however large).
const BATCH_BYTES: usize = 1 << 20;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Turns a record body (JSON object text, with `seq` and `prev`) into its stored line (no `\n`).
pub fn seal(body: &str) -> (String, String) {
    let mut line = body.as_bytes().to_vec();
    let mut hash = String::new();
    seal_in_place(&mut line, 0, &mut hash);
    (String::from_utf8(line).expect("JSON text"), hash)
}

/// `seal` without copies: `buf[start..]` holds the body (a JSON object) and becomes the line;
/// `hash` receives the body's hash.
fn seal_in_place(buf: &mut Vec<u8>, start: usize, hash: &mut String) {
    hash.clear();
    push_hex(hash, &boring::sha::sha256(&buf[start..]));
    buf.pop(); // the closing brace
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(hash.as_bytes());
    buf.extend_from_slice(b"\"}");
}

/// The body and the stated hash of a stored line, if it has the sealed shape.
pub fn unseal(line: &str) -> Option<(String, &str)> {
    const TAIL: usize = ",\"hash\":\"".len() + 64 + 2;
    if line.len() < TAIL + 2 || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - TAIL;
    let tail = &line[cut..];
    if !tail.starts_with(",\"hash\":\"") {
        return None;
    }
    let hash = &tail[9..9 + 64];
    Some((format!("{}}}", &line[..cut]), hash))
}

/// One entry of `index.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexEntry {
    pub id: String,
    pub seq: u64,
    pub ts_ms: u64,
    pub route: Option<String>,
    pub subject: Option<String>,
    pub conversation: String,
    pub status: u16,
    pub method: String,
    pub path: String,
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    /// The record's hash (absent in entries written before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// Where the chain starts after retention removed older segments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anchor {
    pub first_segment: u64,
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    /// `max_age` or `max_size` (absent in anchors written before it was kept).
    #[serde(default)]
    pub reason: String,
}

impl Anchor {
    pub fn event(&self) -> RetentionEvent {
        RetentionEvent {
            first_segment: self.first_segment,
            seq: self.seq,
            hash: self.hash.clone(),
            reason: self.reason.clone(),
            ts: self.ts.clone(),
        }
    }
}

/// The store's id, random at creation (`store-id`): checkpoints name it.
pub fn store_id(dir: &Path) -> Option<String> {
    let id = fs::read_to_string(dir.join("store-id")).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The store's own checkpoints, oldest first (a torn last line is left out).
pub fn local_checkpoints(dir: &Path) -> Vec<Checkpoint> {
    fs::read_to_string(dir.join(CHECKPOINTS))
        .map(|t| checkpoint::read_lines(&t).0)
        .unwrap_or_default()
}

const CHECKPOINTS: &str = "checkpoints.jsonl";

pub struct Store {
    dir: PathBuf,
    id: String,
    /// Bytes in all segments.
    total: u64,
    segment_size: u64,
    current: u64,
    file: File,
    /// Bytes of the current segment written.
    size: u64,
    index: File,
    index_size: u64,
    /// A failed write could not be cut back from the segment: go on in a new one.
    segment_torn: bool,
    /// The index ends in a partial line (a crash, or a failed write not cut back): the next
    /// write starts on a new line.
    index_torn: bool,
    /// Seq and hash of the next record after the last one written.
    pub next_seq: u64,
    pub last_hash: String,
    /// Records rendered into `pending` / `pending_idx` and not written yet, and the hash of
    /// the last of them. Both buffers are kept between batches (no allocation per record).
    staged: usize,
    staged_hash: String,
    pending: Vec<u8>,
    pending_idx: Vec<u8>,
    hash: String,
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:08}.jsonl"))
}

/// The segment numbers present, ascending.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".jsonl"))
        {
            if let Ok(n) = n.parse() {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub fn anchor(dir: &Path) -> Option<Anchor> {
    let text = fs::read_to_string(dir.join("retention.jsonl")).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// The last intact record of a segment: (seq, hash, byte length of the intact part).
fn last_intact(path: &Path) -> std::io::Result<Option<(u64, String, u64)>> {
    let mut last = None;
    each_intact(path, |r| {
        last = Some((r.seq, r.hash.to_string(), r.offset + r.len))
    })?;
    Ok(last)
}

/// One intact record of a segment as `each_intact` meets it.
struct Intact<'a> {
    seq: u64,
    hash: &'a str,
    /// The line's place in the segment (with its `\n`).
    offset: u64,
    len: u64,
    record: serde_json::Value,
}

/// Calls `f` with each intact record of a segment, in order, up to the first line that is not
/// one (a torn last write: what follows it is left for `audit verify` to report).
fn each_intact(path: &Path, mut f: impl FnMut(Intact<'_>)) -> std::io::Result<()> {
    let mut text = Vec::new();
    File::open(path)?.read_to_end(&mut text)?;
    let mut pos = 0u64;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break; // a torn last write
        }
        let Ok(s) = std::str::from_utf8(&line[..line.len() - 1]) else {
            break;
        };
        let Some((body, hash)) = unseal(s) else { break };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&body) else {
            break;
        };
        let Some(seq) = record.get("seq").and_then(|x| x.as_u64()) else {
            break;
        };
        let len = line.len() as u64;
        f(Intact {
            seq,
            hash,
            offset: pos,
            len,
            record,
        });
        pos += len;
    }
    Ok(())
}

/// The index entry of a stored record, made from the record itself (what the writer put in
/// both): used to list again records whose entries were never written.
fn entry_of(r: &Intact<'_>, segment: u64) -> IndexEntry {
    let v = &r.record;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    IndexEntry {
        id: text("id").unwrap_or_default().to_string(),
        seq: r.seq,
        ts_ms: text("ts")
            .and_then(crate::util::time::parse_rfc3339_ms)
            .unwrap_or(0),
        route: text("route").map(str::to_string),
        subject: v
            .pointer("/identity/subject")
            .and_then(|x| x.as_str())
            .map(str::to_string),
        conversation: text("conversation").unwrap_or_default().to_string(),
        status: v
            .pointer("/response/status")
            .and_then(|x| x.as_u64())
            .and_then(|x| u16::try_from(x).ok())
            .unwrap_or(0),
        method: text("method").unwrap_or_default().to_string(),
        path: text("path").unwrap_or_default().to_string(),
        segment,
        offset: r.offset,
        len: r.len,
        hash: r.hash.to_string(),
    }
}

impl Store {
    /// Opens (or creates) the store. A torn or damaged tail of the last segment (a crash mid
    /// write) is left as it is, for `audit verify` to report; writing goes on in a new segment
    /// chained to the last intact record.
    pub fn open(dir: &Path, segment_size: u64) -> std::io::Result<Store> {
        fs::create_dir_all(dir)?;
        let segs = segments(dir)?;
        let (mut next_seq, mut last_hash) = match anchor(dir) {
            Some(a) => (a.seq + 1, a.hash),
            None => (0, GENESIS.to_string()),
        };
        let mut current = segs.last().copied().unwrap_or(1);
        let mut reuse = false;
        // The chain goes on from the newest intact record: read segments from the newest back
        // until one has one (not every segment: opening a large store stays quick).
        for &n in segs.iter().rev() {
            let path = segment_path(dir, n);
            let full = fs::metadata(&path)?.len();
            let last = last_intact(&path)?;
            if n == current {
                reuse = match &last {
                    Some((_, _, intact)) => *intact == full,
                    None => full == 0,
                };
            }
            if let Some((seq, hash, _)) = last {
                next_seq = seq + 1;
                last_hash = hash;
                break;
            }
        }
        if !segs.is_empty() && !reuse {
            current += 1;
        }
        let path = segment_path(dir, current);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        let index = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.join("index.jsonl"))?;
        let index_size = index.metadata()?.len();
        let index_torn = index_size > 0 && {
            let mut last = [0u8];
            index.read_exact_at(&mut last, index_size - 1)?;
            last[0] != b'\n'
        };
        let mut store = Store {
            dir: dir.to_path_buf(),
            total: 0,
            segment_size,
            current,
            file,
            size,
            index,
            index_size,
            segment_torn: false,
            index_torn,
            id: String::new(),
            staged_hash: last_hash.clone(),
            next_seq,
            last_hash,
            staged: 0,
            pending: Vec::new(),
            pending_idx: Vec::new(),
            hash: String::new(),
        };
        store.total = store.total_bytes();
        store.id = match store_id(dir) {
            Some(id) => id,
            None => {
                let id = crate::util::hex::random_hex(16);
                let mut f = File::create(dir.join("store-id"))?;
                writeln!(f, "{id}")?;
                f.sync_all()?;
                id
            }
        };
        store.check_issued()?;
        store.repair_index()?;
        Ok(store)
    }

    /// Refuses to go on from a chain that ends before sequence numbers already issued: a
    /// checkpoint or an index entry past the chain's end, or an index whose newest entry is
    /// not the chain's newest record, means records were removed (or the store rolled back),
    /// and going on would issue their numbers again to new records.
    fn check_issued(&self) -> std::io::Result<()> {
        let last = self.next_seq.checked_sub(1);
        let refuse = |what: String| {
            std::io::Error::other(format!(
                "{what}. Sequence numbers already issued are not issued again: keep {dir} as evidence (`agentgate audit verify --dir {dir}`), move it aside and start again to begin a new store",
                dir = self.dir.display()
            ))
        };
        if let Some(c) = local_checkpoints(&self.dir).last() {
            let ahead = c.seq.is_some_and(|s| Some(s) > last);
            let other = c.seq.is_some() && c.seq == last && c.head != self.last_hash;
            if ahead || other {
                return Err(refuse(format!(
                    "the store ends at seq {} but its checkpoint #{} ({}) was signed for records up to seq {} (head {}): records were removed from the end or the store was replaced",
                    show_seq(last), c.n, c.ts, show_seq(c.seq), c.head
                )));
            }
        }
        if let Some(e) = last_index_entry(&self.dir)? {
            if Some(e.seq) > last {
                return Err(refuse(format!(
                    "the index lists records up to seq {} but the store ends at seq {}: records were removed from the end",
                    e.seq, show_seq(last)
                )));
            }
            if Some(e.seq) == last {
                match read_record(&self.dir, &e) {
                    Ok(_) if e.hash.is_empty() || e.hash == self.last_hash => {}
                    Ok(_) => return Err(refuse(format!("the index's newest entry (seq {}) names hash {} but the chain's newest record has {}", e.seq, e.hash, self.last_hash))),
                    Err(err) => return Err(refuse(format!("the index's newest entry does not match the chain: {err}"))),
                }
            }
        }
        Ok(())
    }

    /// Lists again the records the chain has past the index's newest entry: a crash after a
    /// batch's segment write and before its index write, or an index cut or lost, leaves them
    /// unlisted (absent from listings, 404 by id). Their entries are made from the chain (each
    /// record is its own evidence: its hash is checked on every read). The index's newest
    /// entry must name its record in the chain, else the index is not built on: refused.
    fn repair_index(&mut self) -> std::io::Result<()> {
        let last = self.next_seq.checked_sub(1);
        let newest = last_index_entry(&self.dir)?;
        if last.is_none() || newest.as_ref().map(|e| e.seq) >= last {
            return Ok(());
        }
        if let Some(e) = &newest {
            read_record(&self.dir, e).map_err(|err| {
                std::io::Error::other(format!(
                    "recording store {}: the index ends at seq {} and the chain at seq {}, and its newest entry {err}; keep the directory as evidence (`agentgate audit verify --dir {}`)",
                    self.dir.display(), e.seq, show_seq(last), self.dir.display()
                ))
            })?;
        }
        let mut lines = Vec::new();
        if self.index_torn {
            lines.push(b'\n');
        }
        let mut listed = 0usize;
        let mut failed = None;
        let first = newest.as_ref().map_or(0, |e| e.segment);
        for n in segments(&self.dir)?.into_iter().filter(|&n| n >= first) {
            each_intact(&segment_path(&self.dir, n), |r| {
                if newest.as_ref().is_some_and(|e| r.seq <= e.seq) {
                    return;
                }
                match serde_json::to_writer(&mut lines, &entry_of(&r, n)) {
                    Ok(()) => {
                        lines.push(b'\n');
                        listed += 1;
                    }
                    Err(e) => failed = Some(e),
                }
            })?;
        }
        if let Some(e) = failed {
            return Err(std::io::Error::other(e));
        }
        self.index.write_all(&lines)?;
        self.index.sync_data()?;
        self.index_size += lines.len() as u64;
        self.index_torn = false;
        log::warn!(
            "recording store {}: the index ended at seq {} and the chain at seq {} (a crash between writing records and their index entries, or an index cut or lost); {listed} entries were made again from the chain",
            self.dir.display(),
            show_seq(newest.map(|e| e.seq)),
            show_seq(last)
        );
        Ok(())
    }

    /// The store's id (in every checkpoint).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Makes what was written so far durable (segment and index) before a checkpoint names it.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.index.sync_data()
    }

    /// Appends a checkpoint line to `checkpoints.jsonl` and makes it durable.
    pub fn append_checkpoint(&self, line: &str) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(CHECKPOINTS))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record (`stage` and `commit`); returns its stored line (no `\n`).
    pub fn append_with(
        &mut self,
        render: impl FnOnce(u64, &str, &mut Vec<u8>) -> serde_json::Result<()>,
        entry: IndexEntry,
    ) -> std::io::Result<&[u8]> {
        self.stage(render, entry)?;
        let lines = self.commit()?;
        Ok(&lines[..lines.len() - 1])
    }

    /// Whether the records staged make a batch: they fill the current segment (a batch never
    /// spans two segments, and a segment ends at most one record past its size) or hold
    /// `BATCH_BYTES` (large bodies: the buffer stays bounded). Commit them before staging more.
    pub fn batch_full(&self) -> bool {
        self.staged > 0
            && (self.size + self.pending.len() as u64 >= self.segment_size
                || self.pending.len() >= BATCH_BYTES)
    }

    /// Renders a record for the next `commit`: `render(seq, prev, buf)` appends to `buf` one
    /// JSON object carrying that `seq` and `prev` (the `hash` is added here); `entry` is its
    /// index line (seq, segment, offset and length are filled in here). Nothing is written yet.
    pub fn stage(
        &mut self,
        render: impl FnOnce(u64, &str, &mut Vec<u8>) -> serde_json::Result<()>,
        mut entry: IndexEntry,
    ) -> std::io::Result<()> {
        if self.staged == 0 {
            self.pending.clear();
            self.pending_idx.clear();
            // The index ends in a partial line: this batch's entries start on a new one.
            if self.index_torn {
                self.pending_idx.push(b'\n');
            }
            // One very large record does not keep its buffer for good.
            if self.pending.capacity() > 4 * BATCH_BYTES {
                self.pending.shrink_to(BATCH_BYTES);
            }
            if self.segment_torn || (self.size >= self.segment_size && self.size > 0) {
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment_path(&self.dir, self.current + 1))?;
                self.current += 1;
                self.size = 0;
                self.segment_torn = false;
            }
        }
        let seq = self.next_seq + self.staged as u64;
        let start = self.pending.len();
        let rendered = render(seq, &self.staged_hash, &mut self.pending);
        if rendered.is_err() || self.pending.last() != Some(&b'}') {
            self.pending.truncate(start);
            return Err(rendered
                .err()
                .map(std::io::Error::other)
                .unwrap_or_else(|| std::io::Error::other("a record must be a JSON object")));
        }
        seal_in_place(&mut self.pending, start, &mut self.hash);
        self.pending.push(b'\n');
        entry.seq = seq;
        entry.segment = self.current;
        entry.offset = self.size + start as u64;
        entry.len = (self.pending.len() - start) as u64;
        entry.hash.clone_from(&self.hash);
        let idx_start = self.pending_idx.len();
        if let Err(e) = serde_json::to_writer(&mut self.pending_idx, &entry) {
            self.pending.truncate(start);
            self.pending_idx.truncate(idx_start);
            return Err(std::io::Error::other(e));
        }
        self.pending_idx.push(b'\n');
        self.staged += 1;
        std::mem::swap(&mut self.staged_hash, &mut self.hash);
        Ok(())
    }

    /// Writes the staged records: one `write` to the segment and one to the index. Returns
    /// their lines (each ending in `\n`). When a write fails nothing of the batch stays: both
    /// files are cut back to where they ended, the chain goes on from the last record written,
    /// and the caller may stage the same records again.
    pub fn commit(&mut self) -> std::io::Result<&[u8]> {
        if self.staged == 0 {
            return Ok(&[]);
        }
        let written = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.index.write_all(&self.pending_idx));
        if let Err(e) = written {
            self.discard();
            // A partial write (the disk filled up half way) would leave a torn line that the
            // next record is appended after; cut it off. Shrinking a file frees space, so this
            // works on a full disk; if it does not, go on in a new segment / on a new line.
            if self.file.set_len(self.size).is_err() {
                self.segment_torn = true;
            }
            if self.index.set_len(self.index_size).is_err() {
                self.index_torn = true;
            }
            return Err(e);
        }
        let len = self.pending.len() as u64;
        self.size += len;
        self.total += len;
        self.index_size += self.pending_idx.len() as u64;
        self.index_torn = false;
        self.next_seq += self.staged as u64;
        self.staged = 0;
        self.last_hash.clone_from(&self.staged_hash);
        Ok(&self.pending)
    }

    /// Drops the staged records (not written).
    pub fn discard(&mut self) {
        self.staged = 0;
        self.staged_hash.clone_from(&self.last_hash);
    }

    /// Bytes in all segments, as of the last write (kept as records are appended; counted
    /// from the files at open and after retention).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The segment being written.
    pub fn current_segment(&self) -> u64 {
        self.current
    }

    /// Bytes in all segments, counted from the files.
    pub fn total_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| fs::metadata(segment_path(&self.dir, *n)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Deletes whole segments, oldest first, while they are older than `max_age` or the store
    /// is larger than `max_size`; the segment being written is kept. Returns the anchors written
    /// (one per segment deleted that held a record), for the next checkpoint to sign.
    pub fn retain(
        &mut self,
        max_age: Duration,
        max_size: u64,
    ) -> std::io::Result<Vec<RetentionEvent>> {
        let segs = segments(&self.dir)?;
        let mut sizes: Vec<(u64, u64, SystemTime)> = Vec::new();
        for n in &segs {
            let m = fs::metadata(segment_path(&self.dir, *n))?;
            sizes.push((*n, m.len(), m.modified()?));
        }
        let mut total: u64 = sizes.iter().map(|s| s.1).sum();
        let now = SystemTime::now();
        let mut deleted = 0;
        let mut events = Vec::new();
        for (n, len, modified) in sizes {
            if n >= self.current {
                break;
            }
            let old = now.duration_since(modified).unwrap_or_default() > max_age;
            if !old && total <= max_size {
                break;
            }
            let path = segment_path(&self.dir, n);
            let last = last_intact(&path)?;
            if let Some((seq, hash, _)) = last {
                let a = Anchor {
                    first_segment: n + 1,
                    seq,
                    hash,
                    ts: crate::util::time::rfc3339(now),
                    reason: if old { "max_age" } else { "max_size" }.into(),
                };
                events.push(a.event());
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("retention.jsonl"))?;
                f.write_all(
                    format!(
                        "{}\n",
                        serde_json::to_string(&a).map_err(std::io::Error::other)?
                    )
                    .as_bytes(),
                )?;
            }
            fs::remove_file(&path)?;
            total -= len;
            deleted += 1;
        }
        if deleted > 0 {
            self.rewrite_index()?;
        }
        self.total = self.total_bytes();
        Ok(events)
    }

    /// Drops index entries of deleted segments.
    fn rewrite_index(&mut self) -> std::io::Result<()> {
        let first = segments(&self.dir)?
            .first()
            .copied()
            .unwrap_or(self.current);
        let path = self.dir.join("index.jsonl");
        let kept: Vec<String> = BufReader::new(File::open(&path)?)
            .lines()
            .map_while(Result::ok)
            .filter(|l| serde_json::from_str::<IndexEntry>(l).is_ok_and(|e| e.segment >= first))
            .collect();
        let tmp = self.dir.join("index.jsonl.tmp");
        let mut f = File::create(&tmp)?;
        for l in &kept {
            writeln!(f, "{l}")?;
        }
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        self.index = OpenOptions::new().read(true).append(true).open(&path)?;
        self.index_size = self.index.metadata()?.len();
        self.index_torn = false;
        Ok(())
    }
}

/// Index entries, oldest first.
pub fn read_index(dir: &Path) -> Vec<IndexEntry> {
    match File::open(dir.join("index.jsonl")) {
        Ok(f) => BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn show_seq(s: Option<u64>) -> String {
    s.map_or("none (empty)".into(), |s| s.to_string())
}

/// The newest entry of the index (its last whole line), read from the end of the file.
pub fn last_index_entry(dir: &Path) -> std::io::Result<Option<IndexEntry>> {
    let mut f = match File::open(dir.join("index.jsonl")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut back = 64 * 1024u64;
    loop {
        let from = len.saturating_sub(back);
        f.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        // Whole lines only: what follows the last '\n' is torn, and the window's first piece
        // is a fragment unless the window starts the file.
        let end = tail.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let mut lines: Vec<&[u8]> = tail[..end].split(|b| *b == b'\n').collect();
        if from > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        if let Some(e) = lines
            .iter()
            .rev()
            .find_map(|l| serde_json::from_slice::<IndexEntry>(l).ok())
        {
            return Ok(Some(e));
        }
        if from == 0 {
            return Ok(None);
        }
        back *= 4;
    }
}

/// The stored line an index entry points at, as it is (no `\n`; not checked: the writer's own
/// records, read back to send them to the shared store).
pub fn read_line(dir: &Path, e: &IndexEntry) -> std::io::Result<String> {
    let f = File::open(segment_path(dir, e.segment))?;
    let mut buf = vec![0u8; e.len as usize];
    f.read_exact_at(&mut buf, e.offset)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(std::io::Error::other)
}

/// The stored record for an index entry, as JSON, after checking that it is the record the
/// entry names: the line at that place hashes to the hash it states (and the entry's), has the
/// entry's id and seq, and the next record (if any) chains to it. Anything else is an error,
/// never another record.
pub fn read_record(dir: &Path, e: &IndexEntry) -> std::io::Result<serde_json::Value> {
    let mismatch = |why: String| {
        std::io::Error::other(format!(
            "the index entry for {} (seq {}, segment {} offset {}) does not match the record chain: {why}; run `agentgate audit verify`",
            e.id, e.seq, e.segment, e.offset
        ))
    };
    let path = segment_path(dir, e.segment);
    let mut f = BufReader::new(File::open(&path)?);
    f.seek(SeekFrom::Start(e.offset))?;
    let mut buf = vec![0u8; e.len as usize];
    f.read_exact(&mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(mismatch("the place it names is not a whole record".into()));
    }
    let line = std::str::from_utf8(&buf[..buf.len() - 1])
        .map_err(|_| mismatch("the record there is not UTF-8".into()))?;
    let (body, stated) = unseal(line).ok_or_else(|| mismatch("no sealed record there".into()))?;
    let actual = crate::util::hex::hex(&boring::sha::sha256(body.as_bytes()));
    if actual != stated {
        return Err(mismatch(format!(
            "the record there (hash {stated}) was modified"
        )));
    }
    if !e.hash.is_empty() && e.hash != stated {
        return Err(mismatch(format!(
            "the record there has hash {stated}, the index says {}",
            e.hash
        )));
    }
    let v: serde_json::Value = serde_json::from_str(line).map_err(std::io::Error::other)?;
    let (id, seq) = (v["id"].as_str().unwrap_or(""), v["seq"].as_u64());
    if id != e.id || seq != Some(e.seq) {
        return Err(mismatch(format!(
            "the record there is {id} (seq {})",
            seq.map_or("?".into(), |s| s.to_string())
        )));
    }
    // The next record (in this segment or the next one) must name this one as its `prev`.
    let mut next = Vec::new();
    f.read_until(b'\n', &mut next)?;
    if next.is_empty() {
        if let Ok(g) = File::open(segment_path(dir, e.segment + 1)) {
            BufReader::new(g).read_until(b'\n', &mut next)?;
        }
    }
    if next.ends_with(b"\n") {
        let prev = std::str::from_utf8(&next[..next.len() - 1])
            .ok()
            .and_then(unseal)
            .and_then(|(b, _)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|n| n["prev"].as_str().map(str::to_string));
        if let Some(prev) = prev {
            if prev != stated {
                return Err(mismatch(format!(
                    "the next record chains to {prev}, not to this record's hash {stated} (this record was replaced)"
                )));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seal_roundtrip_and_chain() {
        let (line, hash) = seal(r#"{"a":1,"seq":0}"#);
        assert_eq!(line, format!(r#"{{"a":1,"seq":0,"hash":"{hash}"}}"#));
        let (body, stated) = unseal(&line).unwrap();
        assert_eq!(
            (body.as_str(), stated),
            (r#"{"a":1,"seq":0}"#, hash.as_str())
        );
        assert!(unseal(r#"{"a":1}"#).is_none());
        let dir = std::env::temp_dir().join(format!("agentgate-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            s.append_with(
                |seq, prev, buf| {
                    serde_json::to_writer(
                        buf,
                        &json!({"id": format!("r{i}"), "n": i, "seq": seq, "prev": prev}),
                    )
                },
                entry(&format!("r{i}")),
            )
            .unwrap();
        }
        let r = crate::record::verify::verify(&dir).unwrap();
        assert_eq!((r.verified, r.problem), (3, None));
        let idx = read_index(&dir);
        assert_eq!(read_record(&dir, &idx[1]).unwrap()["n"], 1);
        // Reopening continues the chain in the same (intact) segment.
        drop(s);
        let mut s = Store::open(&dir, 1 << 20).unwrap();
        assert_eq!(s.next_seq, 3);
        s.append_with(
            |seq, prev, buf| {
                serde_json::to_writer(buf, &json!({"id": "x", "seq": seq, "prev": prev}))
            },
            entry("x"),
        )
        .unwrap();
        assert_eq!(segments(&dir).unwrap(), vec![1]);
        assert_eq!(crate::record::verify::verify(&dir).unwrap().verified, 4);
        let _ = fs::remove_dir_all(&dir);
    }

    fn entry(id: &str) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            seq: 0,
            ts_ms: 0,
            route: None,
            subject: None,
            conversation: "c".into(),
            status: 200,
            method: "POST".into(),
            path: "/".into(),
            segment: 0,
            offset: 0,
            len: 0,
            hash: String::new(),
        }
    }

    fn stage_n(s: &mut Store, ids: std::ops::Range<usize>) -> usize {
        let mut staged = 0;
        for i in ids {
            if s.batch_full() {
                break;
            }
            s.stage(
                |seq, prev, buf| {
                    serde_json::to_writer(
                        buf,
                        &json!({"id": format!("r{i}"), "n": i, "pad": "x".repeat(100), "seq": seq, "prev": prev}),
                    )
                },
                entry(&format!("r{i}")),
            )
            .unwrap();
            staged += 1;
        }
        staged
    }

    #[test]
    fn batches_fill_segments_and_a_failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("agentgate-batch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A torn index tail (a crash mid write) is ended before the next entry.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("index.jsonl"), b"{\"id\":\"torn").unwrap();
        // Segments of ~1 KB: a batch stops staging when the segment is full.
        let mut s = Store::open(&dir, 1000).unwrap();
        let mut n = 0;
        while n < 20 {
            let staged = stage_n(&mut s, n..20);
            assert!((1..=8).contains(&staged), "{staged}");
            let lines = s.commit().unwrap();
            assert_eq!(lines.iter().filter(|b| **b == b'\n').count(), staged);
            n += staged;
        }
        assert!(segments(&dir).unwrap().len() >= 3);
        for n in segments(&dir).unwrap() {
            let len = fs::metadata(segment_path(&dir, n)).unwrap().len();
            assert!(len < 1000 + 200, "segment {n}: {len} bytes");
        }
        // A write that fails (here: the segment handle cannot write) leaves no byte of the
        // batch and no index entry; the same records staged again continue the chain.
        assert_eq!(stage_n(&mut s, 20..22), 2);
        let path = segment_path(&dir, s.current);
        let before = fs::read(&path).unwrap();
        let writable = std::mem::replace(&mut s.file, File::open(&path).unwrap());
        assert!(s.commit().is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!((s.next_seq, read_index(&dir).len()), (20, 20));
        s.file = writable;
        let staged = stage_n(&mut s, 20..22);
        s.commit().unwrap();
        // Staged and discarded: nothing written, the chain unchanged.
        stage_n(&mut s, 100..101);
        s.discard();
        let staged2 = stage_n(&mut s, 20 + staged..23);
        s.commit().unwrap();
        let idx = read_index(&dir);
        assert_eq!(idx.len(), 20 + staged + staged2);
        for (i, e) in idx.iter().enumerate() {
            let r = read_record(&dir, e).unwrap();
            assert_eq!(
                (r["n"].as_u64(), e.seq),
                (Some(i as u64), i as u64),
                "{e:?}"
            );
        }
        let r = crate::record::verify::verify(&dir).unwrap();
        assert_eq!((r.verified, r.problem), (idx.len() as u64, None));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_of_large_records_stops_at_its_byte_bound() {
        let dir = std::env::temp_dir().join(format!("agentgate-big-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir, 1 << 30).unwrap();
        let big = "b".repeat(BATCH_BYTES * 6 / 10);
        let mut staged = 0;
        while !s.batch_full() {
            s.stage(
                |seq, prev, buf| {
                    serde_json::to_writer(buf, &json!({"big": big, "seq": seq, "prev": prev}))
                },
                entry("big"),
            )
            .unwrap();
            staged += 1;
        }
        assert_eq!(staged, 2);
        s.commit().unwrap();
        assert_eq!(read_index(&dir).len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A record as the writer writes it (the fields the index is made of) and its entry.
    fn exchange(i: usize) -> (serde_json::Value, IndexEntry) {
        let ts_ms = 1_796_000_000_000 + i as u64 * 1000;
        let ts = crate::util::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ts_ms));
        let rec = json!({"kind": "exchange", "id": format!("r{i}"), "ts": ts, "conversation": format!("c{}", i % 3),
            "identity": {"subject": "agent", "issuer": "service-account"}, "route": "openai", "method": "POST",
            "path": "/v1/chat/completions", "request": {"body": "x".repeat(150)}, "response": {"status": 200 + i as u64}});
        let entry = IndexEntry {
            id: format!("r{i}"),
            ts_ms,
            route: Some("openai".into()),
            subject: Some("agent".into()),
            conversation: format!("c{}", i % 3),
            status: 200 + i as u16,
            path: "/v1/chat/completions".into(),
            ..entry("")
        };
        (rec, entry)
    }

    fn append_exchanges(s: &mut Store, ids: std::ops::Range<usize>) {
        for i in ids {
            let (mut rec, e) = exchange(i);
            s.append_with(
                |seq, prev, buf| {
                    rec["seq"] = json!(seq);
                    rec["prev"] = json!(prev);
                    serde_json::to_writer(buf, &rec)
                },
                e,
            )
            .unwrap();
        }
    }

    /// A crash after a batch's segment write and before its index write (or an index cut or
    /// lost) leaves the index behind the chain: at start-up its missing entries are made again
    /// from the chain, every record is listed and readable, and the numbers issued next follow
    /// the chain, never the index. On the old code the store opened with a warning and the
    /// records stayed unlisted (`left: 9, right: 12`).
    #[test]
    fn an_index_behind_the_chain_is_repaired_from_the_chain() {
        let dir = std::env::temp_dir().join(format!("agentgate-repair-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // ~1 KB segments: the records span several.
        let mut s = Store::open(&dir, 1000).unwrap();
        append_exchanges(&mut s, 0..12);
        drop(s);
        assert!(segments(&dir).unwrap().len() >= 3);
        let whole = fs::read_to_string(dir.join("index.jsonl")).unwrap();
        let original = read_index(&dir);
        assert_eq!(original.len(), 12);
        let lines: Vec<&str> = whole.lines().collect();
        let cuts = [
            ("the last entries lost", lines[..9].join("\n") + "\n"),
            (
                "the last entry torn",
                lines[..11].join("\n") + "\n" + &lines[11][..20],
            ),
            ("the index empty", String::new()),
        ];
        for (case, cut) in cuts {
            fs::write(dir.join("index.jsonl"), &cut).unwrap();
            let s = Store::open(&dir, 1000).unwrap();
            assert_eq!(s.next_seq, 12, "{case}");
            drop(s);
            assert_eq!(read_index(&dir), original, "{case}");
            for e in &original {
                read_record(&dir, e).unwrap();
            }
            let r = crate::record::verify::verify(&dir).unwrap();
            assert_eq!((r.verified, r.problem), (12, None), "{case}");
        }
        fs::remove_file(dir.join("index.jsonl")).unwrap();
        let mut s = Store::open(&dir, 1000).unwrap();
        assert_eq!(read_index(&dir), original, "the index deleted");
        append_exchanges(&mut s, 12..13);
        drop(s);
        let idx = read_index(&dir);
        assert_eq!(
            (idx.len(), idx[12].seq, idx[12].id.as_str()),
            (13, 12, "r12")
        );
        // An index whose newest entry names another record is not built on: refused.
        let mut forged = original[..5].to_vec();
        forged[4].offset = original[1].offset;
        forged[4].segment = original[1].segment;
        let text: String = forged
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        fs::write(dir.join("index.jsonl"), text).unwrap();
        let err = Store::open(&dir, 1000).err().expect("refused");
        assert!(
            err.to_string().contains("does not match the record chain"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
