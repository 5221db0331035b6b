"""The cost of recording and of its signed checkpoints (issue 29), as `make bench` reports it:
runs the writer's own bench (`benches/record.rs`: the writer thread masks, renders, hash-chains
and appends records shaped like run.py's exchange) with a checkpoint every 1,000 records (the
default), every 100, and only at each flush, and reports CPU per record, records/s, what a
checkpoint adds per record, and one checkpoint's signature and fsyncs alone.

    .venv/bin/python bench/record.py [--profile release|debug] [--smoke]

`release` runs `cargo bench --profile release --bench record` (optimised, sharing make bench's
release build), `debug` runs the same harness as a test
(`cargo test --bench record`). `--smoke` writes 2,000 records a round instead of 20,000.
Writes bench/results/<date>-record.md (or --out)."""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import ROOT, machine  # noqa: E402

ROW = re.compile(r"^(?P<what>.+?)\s+(?P<us>[\d.]+) us CPU/record\s+(?P<rps>\d+) records/s")
ONE = re.compile(r"one checkpoint: Ed25519 signature (?P<sign>[\d.]+) us CPU; 3 fsyncs (?P<fsync>\d+) us wall")


def run_bench(profile: str, records: int) -> tuple[str, list[str]]:
    """The bench's output lines and the command that made them."""
    # `--profile release`: the release build's artifacts (make bench has just built them), not
    # the bench profile's, which would compile every dependency once more (~20 minutes here).
    cmd = ["cargo", "bench", "--locked", "--profile", "release", "--bench", "record"] if profile == "release" \
        else ["cargo", "test", "--locked", "--bench", "record"]
    env = dict(os.environ, AGENTGATE_BENCH_RECORDS=str(records))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return " ".join(cmd), p.stdout.splitlines()


def report(command: str, lines: list[str], profile: str, records: int) -> tuple[str, bool]:
    rows = [m.groupdict() for m in map(ROW.match, lines) if m]
    one = next((m.groupdict() for m in map(ONE.search, lines) if m), None)
    out = [
        f"# agentgate: the recorder and its signed checkpoints ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Build: {profile}. Command: `AGENTGATE_BENCH_RECORDS={records} {command}` "
        f"(`benches/record.rs`): {records:,} records a round of a 1.5 KB request and a 2 KB answer, median of "
        "5 rounds, each configuration on a fresh store. The side-by-side throughput cost of recording is run.py's "
        "`agentgate-recorded` row; this isolates the writer thread.",
        "",
        "| writer | CPU per record | records/s |",
        "| --- | ---: | ---: |",
    ]
    for r in rows:
        out.append(f"| {r['what'].strip()} | {float(r['us']):.1f} µs | {int(r['rps'])} |")
    ok = len(rows) == 3 and one is not None
    if ok:
        default, none = float(rows[0]["us"]), float(rows[2]["us"])
        out += [
            "",
            f"Checkpoints as configured by default against (nearly) none: {default - none:+.1f} µs of CPU per "
            f"record ({(default - none) / none * 100:+.1f}%; run-to-run noise on a shared machine is of the same order).",
            f"One checkpoint alone: the Ed25519 signature {float(one['sign']):.1f} µs of CPU, the three fsyncs "
            f"(segment, index, checkpoints.jsonl) {int(one['fsync'])} µs of writer-thread wall time; at one "
            f"checkpoint per 1,000 records, {float(one['sign']) / 1000:.3f} µs of CPU and "
            f"{int(one['fsync']) / 1000:.2f} µs of wall time per record.",
        ]
    out += ["", "The bench's output:", "", "```", *lines, "```", ""]
    return "\n".join(out), ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    ap.add_argument("--smoke", action="store_true", help="2,000 records a round: checks the harness works")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    records = 2_000 if args.smoke else 20_000
    command, lines = run_bench(args.profile, records)
    text, ok = report(command, lines, args.profile, records)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (datetime.date.today().isoformat() + ("-record-smoke" if args.smoke else "-record") + ".md")
    path.write_text(text)
    print(text)
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
