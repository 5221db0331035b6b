//! `make eval-masking`: the masking evaluation at full size (`src/mask/eval.rs`), printed and
//! saved to `bench/results/eval-masking.md`. It reports; the CI-size run in `cargo test`
//! (`mask::eval::tests`) is what fails when a claimed cell misses a target.
//!
//! `cargo run --release --example eval_masking [-- --ci] [-- --out PATH]`

use agentgate::mask::eval::{self, Size};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = if args.iter().any(|a| a == "--ci") {
        Size::ci()
    } else {
        Size::full()
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench/results/eval-masking.md".into());
    let t = Instant::now();
    let report = eval::run(size);
    let mut table = report.markdown(size);
    table.push_str(&format!(
        "\n({} build, {:.1} s)\n",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        t.elapsed().as_secs_f64()
    ));
    print!("{table}");
    if let Err(e) = std::fs::write(&out, &table) {
        eprintln!("writing {out}: {e}");
        std::process::exit(1);
    }
    eprintln!("saved to {out}");
}
