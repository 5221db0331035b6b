//! `agentgate token create`: a new service-account token and the configuration line for it.

use crate::identity::service_account::{generate_token, sha256_hex};
use std::path::Path;

/// Prints the token once (or writes it to `write`), then the YAML line that lets it in.
pub fn create(name: &str, groups: &[String], write: Option<&Path>) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:/".contains(&b))
    };
    if !ok(name) || groups.iter().any(|g| !ok(g)) {
        return Err(
            "names and groups may use letters, digits and - _ . @ : / (no spaces or quotes)".into(),
        );
    }
    let token = generate_token()?;
    let hash = sha256_hex(&token);
    let line = format!(
        "- {{ name: {name}, token_sha256: {hash}, groups: [{}] }}",
        groups.join(", ")
    );
    match write {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(f, "{token}").map_err(|e| format!("{}: {e}", path.display()))?;
            let hash_path = format!("{}.sha256", path.display());
            std::fs::write(&hash_path, format!("{hash}\n"))
                .map_err(|e| format!("{hash_path}: {e}"))?;
            println!(
                "# token written to {} (mode 0600), its SHA-256 to {hash_path}",
                path.display()
            );
        }
        None => {
            println!("# The token for `{name}`, shown once (agentgate keeps only its SHA-256).");
            println!("# Give it to the agent as its API key, e.g. OPENAI_API_KEY:");
            println!("{token}");
        }
    }
    println!("# Add under identity.service_accounts:");
    println!("{line}");
    Ok(())
}
