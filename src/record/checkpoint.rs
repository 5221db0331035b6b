//! Signed checkpoints of the record store: what an auditor keeps off the machine so that records
//! cut from the end, deleted segments, an unsigned retention anchor or a rollback to an older
//! copy of the store show up in `agentgate audit verify` (the hash chain alone cannot show them:
//! a chain cut short, or an older chain, is still a valid chain).
//!
//! A checkpoint names the store, its sequence number among the store's checkpoints (`n`), the
//! newest record (`seq`, `head`), the time, the previous checkpoint's hash (`prev`, so
//! checkpoints chain too) and the retention events since the previous one (each the anchor the
//! chain now starts from), signed with Ed25519 (BoringSSL).
//!
//! Invariant: the signed bytes are the checkpoint serialized by this module with `sig` empty,
//! and every string in it is printable ASCII without `"` or `\` (checked when a line is read),
//! so a checkpoint read back from a log pipeline serializes to the very bytes that were signed.

pub use crate::util::ed25519::{PublicKey, SigningKey};
use crate::util::hex::hex;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const KIND: &str = "checkpoint";
const VERSION: u32 = 1;

/// A retention run's deletion, as the writer did it: the chain now starts after record `seq`
/// (hash `hash`), in segment `first_segment`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionEvent {
    pub first_segment: u64,
    pub seq: u64,
    pub hash: String,
    /// `max_age` or `max_size`.
    pub reason: String,
    pub ts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub kind: String,
    pub v: u32,
    /// The store's id (`store-id` in its directory, random at creation).
    pub store: String,
    /// This checkpoint's number in the store, from 0.
    pub n: u64,
    /// The newest record written (`None`: none yet) and its hash.
    pub seq: Option<u64>,
    pub head: String,
    pub ts: String,
    /// The hash of the previous checkpoint (`GENESIS` for the first).
    pub prev: String,
    pub retention: Vec<RetentionEvent>,
    /// Why it was written: `records`, `interval`, `retention`, `flush` (shutdown).
    pub reason: String,
    /// The signing key's id (`key_id`).
    pub key: String,
    /// Ed25519 signature (base64) over the checkpoint serialized with `sig` empty.
    pub sig: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.sig.clear();
        serde_json::to_vec(&c).unwrap_or_default()
    }

    /// The checkpoint as a JSON line (no newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the signed line: the next checkpoint's `prev`.
    pub fn hash(&self) -> String {
        hex(&boring::sha::sha256(self.line().as_bytes()))
    }

    /// Fills in `key` and `sig`.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), String> {
        self.key = key.public().id();
        self.sig.clear();
        self.sig = STANDARD.encode(key.sign(&self.signed_bytes())?);
        Ok(())
    }

    /// Whether one of `keys` signed this checkpoint.
    pub fn signed_by(&self, keys: &[PublicKey]) -> bool {
        let Ok(sig) = STANDARD.decode(&self.sig) else {
            return false;
        };
        let msg = self.signed_bytes();
        keys.iter().any(|k| k.verify(&msg, &sig))
    }

    /// A checkpoint in `text`: a line as the gateway printed it, or with a prefix a log
    /// pipeline added (`2026-... stdout F {...}`). `None` when the line holds none; `Err` when
    /// it holds one that is not well formed.
    pub fn parse(text: &str) -> Option<Result<Checkpoint, String>> {
        let start = text.find("{\"kind\":\"checkpoint\"")?;
        let json = text[start..].trim_end();
        Some(
            serde_json::from_str::<Checkpoint>(json)
                .map_err(|e| format!("not a well-formed checkpoint: {e}"))
                .and_then(|c| c.check_shape().map(|()| c)),
        )
    }

    fn check_shape(&self) -> Result<(), String> {
        let plain = |s: &str| {
            s.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        let mut strings = vec![
            &self.kind,
            &self.store,
            &self.head,
            &self.ts,
            &self.prev,
            &self.reason,
            &self.key,
            &self.sig,
        ];
        for r in &self.retention {
            strings.extend([&r.hash, &r.reason, &r.ts]);
        }
        if self.kind != KIND || self.v != VERSION || !strings.iter().all(|s| plain(s)) {
            return Err("not a version 1 checkpoint of plain ASCII fields".into());
        }
        Ok(())
    }
}

/// The checkpoints in a file of lines (exported from the log pipeline, or the store's own
/// `checkpoints.jsonl`), in file order; malformed ones are returned as errors with their line.
pub fn read_lines(text: &str) -> (Vec<Checkpoint>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, l) in text.lines().enumerate() {
        match Checkpoint::parse(l) {
            Some(Ok(c)) => out.push(c),
            Some(Err(e)) => bad.push(format!("line {}: {e}", i + 1)),
            None => {}
        }
    }
    (out, bad)
}

/// The key named by `recording.signing_key`, else the one generated (once) into
/// `state_dir/checkpoint-signing-key.pem`; the flag says whether it was generated now.
pub fn signing_key(
    configured: Option<&std::sync::Arc<SigningKey>>,
    state_dir: &Path,
) -> Result<(std::sync::Arc<SigningKey>, Option<std::path::PathBuf>), String> {
    if let Some(k) = configured {
        return Ok((k.clone(), None));
    }
    let path = state_dir.join("checkpoint-signing-key.pem");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let k = SigningKey::from_text(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((std::sync::Arc::new(k), Some(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let k = SigningKey::generate()?;
            std::fs::create_dir_all(state_dir)
                .map_err(|e| format!("{}: {e}", state_dir.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(&k.to_pem()?)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((std::sync::Arc::new(k), Some(path)))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Edit = Box<dyn Fn(&mut Checkpoint)>;

    fn sample(key: &SigningKey) -> Checkpoint {
        let mut c = Checkpoint {
            kind: KIND.into(),
            v: VERSION,
            store: "0123abcd".into(),
            n: 3,
            seq: Some(41),
            head: "ab".repeat(32),
            ts: "2026-12-05T10:00:00.000Z".into(),
            prev: "cd".repeat(32),
            retention: vec![RetentionEvent {
                first_segment: 2,
                seq: 9,
                hash: "ef".repeat(32),
                reason: "max_age".into(),
                ts: "2026-12-05T09:59:59.000Z".into(),
            }],
            reason: "records".into(),
            key: String::new(),
            sig: String::new(),
        };
        c.sign(key).unwrap();
        c
    }

    /// A checkpoint verifies with its key after a trip through a log line (with a prefix), and
    /// no longer once any field changed or with another key; keys load from PEM and from a
    /// base64 seed alike.
    #[test]
    fn checkpoints_verify_only_as_signed() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let c = sample(&key);
        let keys = [key.public().clone()];
        assert!(c.signed_by(&keys));
        assert!(!c.signed_by(&[other.public().clone()]));
        let line = format!("2026-12-05T10:00:00Z stdout F {}", c.line());
        let back = Checkpoint::parse(&line).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(back.signed_by(&keys));
        let edits: Vec<Edit> = vec![
            Box::new(|c| c.n += 1),
            Box::new(|c| c.seq = Some(40)),
            Box::new(|c| c.head = "00".repeat(32)),
            Box::new(|c| c.store = "0123abce".into()),
            Box::new(|c| c.prev = "00".repeat(32)),
            Box::new(|c| c.retention.clear()),
            Box::new(|c| c.retention[0].seq = 10),
            Box::new(|c| c.ts = "2026-12-05T10:00:01.000Z".into()),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut e = c.clone();
            edit(&mut e);
            assert!(!e.signed_by(&keys), "edit {i} still verifies");
        }
        // A pipeline that re-escapes the line changes nothing signed; strings that could be
        // written in more than one way (not plain ASCII) are refused.
        let escaped = c.line().replace("\"records\"", "\"rec\\u006frds\"");
        assert!(Checkpoint::parse(&escaped)
            .unwrap()
            .unwrap()
            .signed_by(&keys));
        let accented = c.line().replace("\"records\"", "\"r\\u00e9cords\"");
        assert!(Checkpoint::parse(&accented).unwrap().is_err());
        assert!(Checkpoint::parse("{\"kind\":\"exchange\"}").is_none());
        // The same key from its PEM and from its seed.
        let pem = String::from_utf8(key.to_pem().unwrap()).unwrap();
        let again = SigningKey::from_text(&pem).unwrap();
        assert_eq!(again.public().to_text(), key.public().to_text());
        let from_seed = SigningKey::from_text(&STANDARD.encode(key.seed().unwrap())).unwrap();
        assert_eq!(from_seed.public().id(), key.public().id());
        let printed = PublicKey::from_text(&key.public().to_text()).unwrap();
        assert!(c.signed_by(&[printed]));
        assert!(SigningKey::from_text("bm90IGEga2V5").is_err());
        assert!(PublicKey::from_text("ed25519:AAAA").is_err());
    }
}
