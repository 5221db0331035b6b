//! `agentgate usage`: the usage ledger's totals (`state_dir/usage.json`, written by the running
//! gateway within a second of each exchange) summed by identity, group, route or model.

use crate::config::Config;
use crate::limits::{self, report, Ledger};
use std::path::{Path, PathBuf};

pub fn run(
    config: Option<&Path>,
    file: Option<PathBuf>,
    by: &str,
    since: &str,
    json: bool,
) -> Result<(), String> {
    let by_key = report::By::parse(by)
        .ok_or_else(|| format!("--by {by}: use identity, group, route or model"))?;
    let days = report::days(since)?;
    let (path, tz, currency) = match (file, config) {
        (Some(f), _) => (f, jiff::tz::TimeZone::UTC, "USD".to_string()),
        (None, Some(c)) => {
            let cfg = Config::load_without_secrets(c).map_err(|e| e.to_string())?;
            (
                cfg.server.state_dir.join("usage.json"),
                cfg.usage.time_zone.clone(),
                cfg.usage.currency.clone(),
            )
        }
        (None, None) => return Err("give --config (or --file STATE_DIR/usage.json)".into()),
    };
    if !path.exists() {
        return Err(format!(
            "{}: no usage ledger yet (the gateway writes it after its first exchange)",
            path.display()
        ));
    }
    let ledger = Ledger::read_file(&path)?;
    let from = report::first_day(days, limits::now_ms(), &tz);
    let rows = report::summarize(&ledger.totals_since(&from), by_key);
    if json {
        let doc = serde_json::json!({"by": by, "since": from, "currency": currency, "rows": rows});
        println!("{doc}");
        return Ok(());
    }
    println!("usage since {from} by {by} ({currency})");
    println!(
        "{:<40} {:>9} {:>12} {:>12} {:>12} {:>12} {:>14}",
        by.to_uppercase(),
        "REQUESTS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "COST"
    );
    for r in rows {
        println!(
            "{:<40} {:>9} {:>12} {:>12} {:>12} {:>12} {:>14}",
            r.key,
            r.requests,
            r.input_tokens,
            r.cached_input_tokens,
            r.output_tokens,
            r.reasoning_tokens,
            crate::usage::micros_str(r.cost_micros)
        );
    }
    Ok(())
}
