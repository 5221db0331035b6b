#!/usr/bin/env python3
"""Instructions and syscalls per request, thread by thread: steady where req/s is not.

On a 2-core machine shared with the load generator and the mock, requests per second move by
10-20% from run to run. Instruction counts (valgrind's callgrind) and syscall counts (strace) of
the same binary on the same requests do not, so they show what a change to the request path
saves before `make bench` can. Each system runs on its own under the tool, gets a warm-up, then
a fixed number of the bench's 1.6 KB chat POSTs (HTTP/1.1, keep-alive, 4 connections); counters
are zeroed after the warm-up, so TLS handshakes and start-up stay out of the figures.

    bench/instructions.py [--requests 2000] [--only agentgate,agentgate-full] [--strace] [--h2]
                          [--binary other/agentgate]

Prints instructions per request by thread group (proxy = Pingora's worker threads; recorder,
session log: agentgate's own threads), and with --strace the syscalls per request by name.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # noqa: E402  (the bench's systems: mock, vanilla Pingora, agentgate's variants)

VARIANTS = {"agentgate": "passthrough", "agentgate-recorded": "recorded", "agentgate-full": "full"}


H2 = False  # --h2: the same requests over HTTP/2 (h2load's default), 4 connections, 1 stream each


def h1load(port: int, n: int, work: pathlib.Path) -> None:
    body = work / "instr-body.json"
    msg = "The quick brown fox jumps over the lazy dog. " * 32
    body.write_text('{"model":"mock-model","messages":[{"role":"user","content":"' + msg + '"}]}')
    out = subprocess.run(
        ["h2load", *([] if H2 else ["--h1"]), "-n", str(n), "-c", "4", "-m", "1", "-d", str(body),
         "-H", "content-type: application/json", "-H", f"authorization: Bearer {run.AGENT_KEY}",
         f"https://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, timeout=1800,
    )
    codes = next((l for l in out.stdout.splitlines() if l.startswith("status codes:")), "")
    if f"{n} 2xx" not in codes:
        raise SystemExit(f"load failed: {codes or out.stdout[-500:]}")


def group(dump: str) -> str:
    """A thread by what it runs: its dump names the functions it spent instructions in."""
    if "record::writer::Writer" in dump:
        return "recorder"
    if "session_log::start_writer" in dump:
        return "session log"
    if "checkpointer" in dump:
        return "checkpoints"
    return "proxy"


def wrapper(work: pathlib.Path, name: str, tool: list[str], target: pathlib.Path) -> pathlib.Path:
    w = work / f"{name}-under-tool.sh"
    w.write_text("#!/bin/sh\nexec " + " ".join(tool) + f" {target} \"$@\"\n")
    w.chmod(0o755)
    return w


def callgrind(b: run.Bench, system: str, upstream: int, n: int, binary: pathlib.Path | None) -> dict[str, float]:
    out = b.work / f"cg-{system}"
    out.mkdir()
    tool = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/cg.out"]
    if system == "vanilla-pingora":
        target = b.bin / "examples" / "vanilla_pingora"
        w = wrapper(b.work, system, tool, target)
        port = run.free_port()
        p = b.spawn([str(w), "--listen", f"127.0.0.1:{port}", "--cert", str(b.chain), "--key", str(b.key),
                     "--upstream", f"127.0.0.1:{upstream}", "--ca", str(b.ca_file), "--threads", "1"], system)
        run.wait_port(port, p, system, timeout=120)
    else:
        w = wrapper(b.work, system, tool, binary or b.bin / "agentgate")
        s = b.start_agentgate(upstream, VARIANTS[system], name=system, binary=w)
        p, port = s.proc, s.port
    h1load(port, max(200, n // 10), b.work)
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
    h1load(port, n, b.work)
    time.sleep(1.0)  # the recorder and the session log drain what the requests left them
    subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    totals: dict[str, float] = collections.defaultdict(float)
    # One dump file per thread: cg.out.<dump>-<thread>; dump 1 is the one `-d` took.
    for f in out.glob("cg.out.1-*"):
        text = f.read_text(errors="replace")
        s = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
        if s:
            totals[group(text)] += int(s.group(1)) / n
    p.send_signal(2)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
    return dict(totals)


def straced(b: run.Bench, system: str, upstream: int, n: int, binary: pathlib.Path | None) -> dict[str, float]:
    out = b.work / f"strace-{system}.txt"
    if system == "vanilla-pingora":
        raise SystemExit("--strace: agentgate's variants only")
    # -c counts per syscall; started after the warm-up by attaching to the running gateway.
    s = b.start_agentgate(upstream, VARIANTS[system], name=system, binary=binary)
    h1load(s.port, max(200, n // 10), b.work)
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(s.pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    h1load(s.port, n, b.work)
    time.sleep(0.5)
    tracer.send_signal(2)
    tracer.wait(timeout=60)
    counts = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3]) / n
    return counts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--only", default="vanilla-pingora,agentgate,agentgate-recorded,agentgate-full")
    ap.add_argument("--strace", action="store_true", help="syscalls per request instead of instructions")
    ap.add_argument("--profile", default="release")
    ap.add_argument("--binary", type=pathlib.Path, help="another agentgate binary (the mock and vanilla Pingora stay this build's)")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 from the load generator (the upstream leg stays HTTP/1.1)")
    args = ap.parse_args()
    global H2
    H2 = args.h2
    bargs = argparse.Namespace(profile=args.profile, keep_work=False)
    b = run.Bench(bargs)
    try:
        mock = b.start_mock()
        rows = {}
        for system in args.only.split(","):
            rows[system] = (straced if args.strace else callgrind)(b, system, mock.port, args.requests, args.binary)
            print(system, {k: round(v, 1) for k, v in sorted(rows[system].items())}, flush=True)
        print()
        if args.strace:
            names = sorted({k for r in rows.values() for k in r})
            print("| syscall | " + " | ".join(rows) + " |")
            print("| --- |" + " ---: |" * len(rows))
            for k in names:
                print(f"| `{k}` | " + " | ".join(f"{r.get(k, 0):.2f}" for r in rows.values()) + " |")
        else:
            groups = ["proxy", "recorder", "session log", "checkpoints"]
            print("| system | " + " | ".join(f"{g} (k instr./req)" for g in groups) + " | all |")
            print("| --- |" + " ---: |" * (len(groups) + 1))
            for system, r in rows.items():
                print(f"| {system} | " + " | ".join(f"{r.get(g, 0) / 1000:.1f}" for g in groups)
                      + f" | {sum(r.values()) / 1000:.1f} |")
    finally:
        b.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
