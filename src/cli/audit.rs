//! `agentgate audit verify`: check the record store's hash chain.

use super::StoreArgs;

/// Prints whether the chain is intact; `Ok(false)` when a record was tampered with or damaged.
pub fn verify(store: &StoreArgs) -> Result<bool, String> {
    let dir = store.records_dir()?;
    let r = crate::record::verify::verify(&dir)?;
    match r.problem {
        None => {
            println!(
                "{}: intact: {} records in {} segment(s)",
                dir.display(),
                r.verified,
                r.segments
            );
            Ok(true)
        }
        Some(p) => {
            println!(
                "{}: TAMPERED or DAMAGED after {} intact records: {p}",
                dir.display(),
                r.verified
            );
            Ok(false)
        }
    }
}
