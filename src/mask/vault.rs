//! Pseudonyms: per conversation, each distinct value gets a placeholder (`<EMAIL_1>`), the same
//! one every time it is seen, and the placeholder maps back to the value only for that
//! conversation. Vaults live in memory, expire after an idle time, and are bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Maps {
    by_value: HashMap<(String, String), String>,
    by_placeholder: HashMap<String, String>,
    next: HashMap<String, u32>,
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
        if m.by_value.len() >= MAX_VALUES {
            return format!("[REDACTED:{label}]");
        }
        let n = m.next.entry(label.to_string()).or_insert(0);
        *n += 1;
        let p = format!("<{label}_{n}>");
        m.by_placeholder.insert(p.clone(), value.to_string());
        m.by_value.insert(key, p.clone());
        p
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
        if map.len() >= self.max_conversations {
            let idle = self.idle;
            map.retain(|_, (_, seen)| now.duration_since(*seen) < idle);
            if map.len() >= self.max_conversations {
                // Still full: forget the least recently used.
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (_, s))| *s)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
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
}
