//! Pseudonyms: per conversation, each distinct value gets a placeholder (`<EMAIL_1>`), the same
//! one every time it is seen, and the placeholder maps back to the value only for that
//! conversation. Vaults live in memory, expire after an idle time, and are bounded.
//!
//! Invariant: memory is bounded in bytes, not only in entries — per conversation
//! (`MAX_VAULT_BYTES`), across all of them (`MAX_TOTAL_BYTES`, least recently used conversations
//! evicted first), and in the number of conversations. A value that would pass a bound is
//! redacted instead of pseudonymized: masking never stops, only restoring does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes one conversation's pseudonyms may hold.
pub const MAX_VAULT_BYTES: usize = 1 << 20;
/// Bytes all conversations' pseudonyms may hold together.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;

/// Bytes held by every vault alive (for the bound and `agentgate_pseudonym_vault_bytes`).
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Bytes every vault alive holds now.
pub fn total_bytes() -> usize {
    TOTAL.load(Ordering::Relaxed)
}

/// What one pseudonym costs: the value and placeholder kept twice (both maps), the label, and
/// the maps' own overhead per entry.
fn cost(label: &str, value: &str, placeholder: &str) -> usize {
    2 * (label.len() + value.len() + placeholder.len()) + 128
}

#[derive(Default)]
struct Maps {
    by_value: HashMap<(String, String), String>,
    by_placeholder: HashMap<String, String>,
    next: HashMap<String, u32>,
    bytes: usize,
}

/// One conversation's pseudonyms.
#[derive(Default)]
pub struct Vault {
    maps: Mutex<Maps>,
}

/// Values per conversation before new values are redacted instead (memory bound).
const MAX_VALUES: usize = 10_000;

impl Vault {
    /// The placeholder for `value`, created on first sight.
    pub fn placeholder_for(&self, label: &str, value: &str) -> String {
        let Ok(mut m) = self.maps.lock() else {
            return format!("[REDACTED:{label}]");
        };
        let key = (label.to_string(), value.to_string());
        if let Some(p) = m.by_value.get(&key) {
            return p.clone();
        }
        let n = m.next.get(label).copied().unwrap_or(0) + 1;
        let p = format!("<{label}_{n}>");
        let c = cost(label, value, &p);
        if m.by_value.len() >= MAX_VALUES
            || m.bytes + c > MAX_VAULT_BYTES
            || TOTAL.load(Ordering::Relaxed) + c > MAX_TOTAL_BYTES
        {
            return format!("[REDACTED:{label}]");
        }
        m.next.insert(label.to_string(), n);
        m.bytes += c;
        TOTAL.fetch_add(c, Ordering::Relaxed);
        m.by_placeholder.insert(p.clone(), value.to_string());
        m.by_value.insert(key, p.clone());
        p
    }

    /// Bytes this conversation's pseudonyms hold.
    pub fn bytes(&self) -> usize {
        self.maps.lock().map(|m| m.bytes).unwrap_or(0)
    }

    /// The value behind a placeholder of this conversation.
    pub fn value_of(&self, placeholder: &str) -> Option<String> {
        self.maps
            .lock()
            .ok()?
            .by_placeholder
            .get(placeholder)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.maps.lock().map(|m| m.by_value.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let bytes = match self.maps.get_mut() {
            Ok(m) => m.bytes,
            Err(p) => p.into_inner().bytes,
        };
        TOTAL.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// All conversations' vaults, by conversation id.
pub struct VaultStore {
    vaults: Mutex<HashMap<String, (Arc<Vault>, Instant)>>,
    idle: Duration,
    max_conversations: usize,
}

impl VaultStore {
    pub fn new(idle: Duration, max_conversations: usize) -> VaultStore {
        VaultStore {
            vaults: Mutex::new(HashMap::new()),
            idle,
            max_conversations,
        }
    }

    /// The vault of `conversation`, created if new; idle vaults are dropped on the way.
    pub fn get(&self, conversation: &str) -> Arc<Vault> {
        let now = Instant::now();
        let Ok(mut map) = self.vaults.lock() else {
            return Arc::new(Vault::default());
        };
        if let Some((v, seen)) = map.get_mut(conversation) {
            *seen = now;
            return v.clone();
        }
        // A new conversation: make room in count and in bytes (a conversation needs up to
        // MAX_VAULT_BYTES), idle ones first, then the least recently used.
        let full = |map: &HashMap<String, (Arc<Vault>, Instant)>| {
            map.len() >= self.max_conversations || total_bytes() + MAX_VAULT_BYTES > MAX_TOTAL_BYTES
        };
        if full(&map) {
            let idle = self.idle;
            map.retain(|_, (_, seen)| now.duration_since(*seen) < idle);
        }
        while full(&map) && !map.is_empty() {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, s))| *s)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        let v = Arc::new(Vault::default());
        map.insert(conversation.to_string(), (v.clone(), now));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_value_and_separate_per_conversation() {
        let store = VaultStore::new(Duration::from_secs(60), 2);
        let a = store.get("a");
        let p1 = a.placeholder_for("EMAIL", "x@y.com");
        assert_eq!(p1, "<EMAIL_1>");
        assert_eq!(a.placeholder_for("EMAIL", "x@y.com"), p1);
        assert_eq!(a.placeholder_for("EMAIL", "z@y.com"), "<EMAIL_2>");
        assert_eq!(a.placeholder_for("PHONE", "+14155552671"), "<PHONE_1>");
        assert_eq!(a.value_of("<EMAIL_2>").as_deref(), Some("z@y.com"));
        let b = store.get("b");
        assert_eq!(
            b.value_of("<EMAIL_1>"),
            None,
            "another conversation's placeholder"
        );
        assert!(Arc::ptr_eq(&store.get("a"), &a));
        store.get("c"); // over the bound: the least recently used goes
        assert_eq!(store.vaults.lock().unwrap().len(), 2);
    }

    /// Bytes are bounded per conversation and in total, and freed when a vault goes: many
    /// distinct values in fresh conversations cannot grow memory without end (issue 22 held
    /// ~3.5 MiB per conversation, 100,000 conversations allowed).
    #[test]
    fn bytes_are_bounded_per_conversation_and_in_total() {
        let before = total_bytes();
        let v = Vault::default();
        let mut redacted = 0;
        for i in 0..20_000 {
            let p = v.placeholder_for("EMAIL", &format!("person.number.{i}@example.com"));
            redacted += usize::from(p.starts_with("[REDACTED"));
        }
        assert!(v.bytes() <= MAX_VAULT_BYTES, "{}", v.bytes());
        assert!(redacted > 0, "the per-conversation bound never applied");
        assert!(total_bytes() >= before + v.bytes());
        // (Other tests' vaults may add a few hundred bytes meanwhile: the total is process-wide.)
        let (held, total) = (v.bytes(), total_bytes());
        drop(v);
        assert!(
            total_bytes() < total - held / 2,
            "a dropped vault frees its bytes"
        );

        // Conversations are evicted (least recently used) to keep the total under its bound.
        let store = VaultStore::new(Duration::from_secs(3600), 1_000_000);
        for c in 0..100 {
            let v = store.get(&format!("conversation-{c}"));
            for i in 0..10_000 {
                if v.placeholder_for("EMAIL", &format!("p{i}@example.com"))
                    .starts_with("[REDACTED")
                {
                    break;
                }
            }
        }
        assert!(total_bytes() <= MAX_TOTAL_BYTES, "{}", total_bytes());
        assert!(
            store.vaults.lock().unwrap().len() < 100,
            "nothing was evicted"
        );
    }
}
