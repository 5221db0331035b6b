//! `agentgate audit verify`: check the record store's hash chain, its index, and the store
//! against signed checkpoints; `agentgate audit pubkey`: the key auditors check them with.

use super::StoreArgs;
use crate::config::Config;
use crate::record::checkpoint::{self, PublicKey};
use crate::record::verify::{verify_with, Options};
use std::path::{Path, PathBuf};

/// Prints what was checked and what was found; `Ok(false)` when something was tampered with
/// or damaged.
pub fn verify(
    store: &StoreArgs,
    checkpoints: Option<&Path>,
    pubkeys: &[String],
) -> Result<bool, String> {
    let mut keys = pubkeys
        .iter()
        .map(|k| PublicKey::from_text(k))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        if let Some(path) = &store.config {
            keys.push(configured_key(path)?.public().clone());
        }
    }
    if let Some(db) = store.shared()? {
        if let Some(p) = checkpoints {
            return Err(format!(
                "--checkpoints {}: the shared store is checked against the checkpoints replicas signed into it; \
                 to check one replica's local store against exported checkpoints, give its --dir",
                p.display()
            ));
        }
        return verify_shared(&db, &keys);
    }
    let dir = store.records_dir()?;
    let exported = match checkpoints {
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let r = verify_with(&dir, &Options { exported, keys })?;
    let range = match r.last_seq {
        Some(l) => format!(", seq {}..{l}", r.first_seq),
        None => String::new(),
    };
    let ok = r.problems.is_empty();
    if ok {
        println!(
            "{}: intact: {} records in {} segment(s){range}; the index agrees with the chain",
            dir.display(),
            r.verified,
            r.segments
        );
    } else {
        println!(
            "{}: TAMPERED or DAMAGED after {} intact records: {}",
            dir.display(),
            r.verified,
            r.problems[0]
        );
        for p in &r.problems[1..] {
            println!("also: {p}");
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    Ok(ok)
}

/// Every replica's chain in the shared store, one report each.
fn verify_shared(db: &crate::db::Database, keys: &[PublicKey]) -> Result<bool, String> {
    let reports = db
        .block_on(crate::record::shared::verify(db, keys))
        .map_err(|e| e.to_string())?;
    if reports.is_empty() {
        println!("the shared store holds no records yet");
    }
    let mut ok = true;
    for r in &reports {
        let range = match (r.first_seq, r.last_seq) {
            (Some(a), Some(b)) => format!(", seq {a}..{b}"),
            _ => String::new(),
        };
        let who = format!("replica {} (chain {})", r.replica, r.chain);
        if r.problems.is_empty() {
            println!("{who}: intact: {} records{range}", r.records);
        } else {
            ok = false;
            println!(
                "{who}: TAMPERED or DAMAGED ({} records intact{range}): {}",
                r.records, r.problems[0]
            );
            for p in &r.problems[1..] {
                println!("{who}: also: {p}");
            }
        }
        for n in &r.notes {
            println!("{who}: note: {n}");
        }
    }
    Ok(ok)
}

/// The key `config` signs checkpoints with.
fn configured_key(config: &Path) -> Result<std::sync::Arc<checkpoint::SigningKey>, String> {
    let c = Config::load(config).map_err(|e| e.to_string())?;
    let state: PathBuf = c.server.state_dir.clone();
    checkpoint::signing_key(c.recording.signing_key.as_ref(), &state).map(|(k, _)| k)
}

/// Prints the public key (`ed25519:BASE64`) and its id.
pub fn pubkey(config: &Path) -> Result<(), String> {
    let k = configured_key(config)?;
    println!("{}", k.public().to_text());
    eprintln!("key id {}", k.public().id());
    Ok(())
}
