//! `agentgate cert pin`: the `pins_sha256` value of a PEM certificate.

use std::path::Path;

pub fn pin(file: &Path) -> Result<(), String> {
    let pin = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|pem| crate::tls::pin_of_pem(&pem))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    println!("{pin}");
    Ok(())
}
