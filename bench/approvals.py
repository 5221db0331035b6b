"""Holds N concurrent requests pending approval in agentgate and reports the gateway's extra
memory, and whether unrelated traffic (same route, requests that match no rule) keeps its
latency meanwhile. Target (issue 5): under 50 MB extra for 1,000 pending approvals.

    .venv/bin/python bench/approvals.py [--pending 1000] [--profile release]

Writes bench/results/<date>-approvals.md (or --out)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import ssl
import sys
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import APPROVER_KEY, REQUESTER_KEYS, ROOT, Bench, machine, rss_kb  # noqa: E402

HELD = json.dumps({"model": "mock-model", "tools": [{"type": "function", "function": {"name": "delete_records"}}],
                   "messages": [{"role": "user", "content": "clean up the users table " * 20}]}).encode()


TICKET = HELD.replace(b"delete_records", b"transfer_funds")


def tickets(port: int, ctx: ssl.SSLContext, n: int) -> int:
    """`n` requests in ticket mode over 8 keep-alive connections: each answered 202 at once,
    leaving a pending approval and no open request."""
    import concurrent.futures

    def some(job: tuple[int, int]) -> int:
        first, k = job
        got = 0
        with httpx.Client(verify=ctx, timeout=30) as c:
            for j in range(first, first + k):
                key = REQUESTER_KEYS[j % len(REQUESTER_KEYS)]
                r = c.post(f"https://127.0.0.1:{port}/v1/chat/completions", content=TICKET,
                           headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
                got += r.status_code == 202
        return got

    sizes = [n // 8 + (i < n % 8) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        return sum(ex.map(some, [(sum(sizes[:i]), k) for i, k in enumerate(sizes)]))


def pending(admin: int) -> int:
    r = httpx.get(f"http://127.0.0.1:{admin}/v1/approvals?state=pending&limit=100000",
                  headers={"authorization": f"Bearer {APPROVER_KEY}"}, timeout=30)
    r.raise_for_status()
    return len(r.json())


async def hold(port: int, ctx: ssl.SSLContext, n: int, admin: int, measure) -> dict:
    """Opens `n` TLS connections, each sending one request that waits for approval; calls
    `measure()` while all are pending; then closes them (the approvals become abandoned)."""
    conns = []
    heads = [(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(HELD)}\r\n\r\n").encode() for key in REQUESTER_KEYS]
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            w.write(heads[i % len(heads)] + HELD)
            await w.drain()
            conns.append((r, w))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    deadline = time.monotonic() + 120
    while (p := await asyncio.to_thread(pending, admin)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {p} of {n} approvals pending after 120 s")
        await asyncio.sleep(0.2)
    opened_s = time.monotonic() - t0
    result = await asyncio.to_thread(measure)
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    result["opened_s"] = opened_s
    return result


async def idle(port: int, ctx: ssl.SSLContext, n: int, rss) -> int:
    """RSS while `n` TLS connections are open and idle: what holding any request costs."""
    conns = []
    sem = asyncio.Semaphore(64)

    async def one() -> None:
        async with sem:
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(1)
    value = rss()
    for w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in conns), return_exceptions=True)
    await asyncio.sleep(0.5)
    return value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, default=1000)
    ap.add_argument("--profile", default="release")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--smoke", action="store_true", help="50 pending, 1 s loads: checks the harness works")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.smoke:
        args.pending, args.duration = 50, 1
    b = Bench(args)
    try:
        mock = b.start_mock()
        gw = b.start_agentgate(mock.port, "approvals")
        b.wrk(gw, 4, 1)  # warm up
        before = b.wrk(gw, 16, args.duration)
        rss_before = rss_first = rss_kb(gw.pid)
        print(f"unrelated traffic before: {before['rps']:.0f} req/s, p50 {before['p50'] / 1000:.3f} ms, p99 {before['p99'] / 1000:.3f} ms; RSS {rss_before / 1024:.1f} MiB", flush=True)

        def measure() -> dict:
            rss = rss_kb(gw.pid)
            during = b.wrk(gw, 16, args.duration)
            return {"rss": rss, "during": during, "pending": pending(gw.admin)}

        rss_idle = asyncio.run(idle(gw.port, b.client_ctx, args.pending, lambda: rss_kb(gw.pid)))
        time.sleep(1)
        rss_before = rss_kb(gw.pid)  # after the idle connections closed
        # Wait mode: each request holds its agent's connection until a decision.
        held = asyncio.run(hold(gw.port, b.client_ctx, args.pending, gw.admin, measure))
        during = held["during"]
        time.sleep(1)
        left = pending(gw.admin)
        rss_after = rss_kb(gw.pid)
        # Ticket mode, on a fresh gateway (the first one's allocator would reuse the pages the
        # agents left): the agent is answered 202 at once, so only the approval is kept.
        fresh = b.start_agentgate(mock.port, "approvals", name="agentgate-tickets")
        b.wrk(fresh, 4, 1)
        time.sleep(1)
        rss_fresh = rss_kb(fresh.pid)
        issued = tickets(fresh.port, b.client_ctx, args.pending)
        time.sleep(1)
        rss_tickets = rss_kb(fresh.pid)
        pending_tickets = pending(fresh.admin)
        # The floor: the same idle TLS connections on a vanilla Pingora proxy (same crates).
        vanilla = b.start_vanilla(mock.port)
        b.wrk(vanilla, 4, 1)
        rss_vanilla0 = rss_kb(vanilla.pid)
        rss_vanilla = asyncio.run(idle(vanilla.port, b.client_ctx, args.pending, lambda: rss_kb(vanilla.pid)))
    finally:
        b.stop_all()
    wait_mib = (held["rss"] - rss_first) / 1024
    ticket_mib = (rss_tickets - rss_fresh) / 1024
    idle_mib = (rss_idle - rss_first) / 1024
    lines = [
        f"# agentgate: {args.pending} pending approvals ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Build: {args.profile}. Gateway: 1 thread; unrelated traffic is wrk "
        f"-c16 for {args.duration:.0f} s on the same route (requests no rule matches), HTTP/1.1 keep-alive over TLS.",
        "",
        "| | value |",
        "| --- | --- |",
        f"| approvals pending at once | {held['pending']} (opened in {held['opened_s']:.1f} s) |",
        f"| gateway RSS after warm-up | {rss_first / 1024:.1f} MiB |",
        f"| {args.pending} idle TLS connections (no request) | {rss_idle / 1024:.1f} MiB: **{idle_mib:.1f} MiB** for the connections alone ({idle_mib * 1024 / args.pending:.1f} KiB each) |",
        f"| the same {args.pending} idle TLS connections on vanilla Pingora (the framework's floor) | **{(rss_vanilla - rss_vanilla0) / 1024:.1f} MiB** ({(rss_vanilla - rss_vanilla0) / args.pending:.1f} KiB each) |",
        f"| RSS once those connections closed | {rss_before / 1024:.1f} MiB |",
        f"| gateway RSS with all pending | {held['rss'] / 1024:.1f} MiB |",
        f"| **wait mode: extra memory for {args.pending} pending approvals** | **{wait_mib:.1f} MiB = {wait_mib * 1.048576:.1f} MB** over the warm-up RSS ({wait_mib * 1024 / args.pending:.1f} KiB per pending request, its TLS connection included); target < 50 MB: {'met' if wait_mib * 1.048576 < 50 else 'MISSED'} |",
        f"| of which beyond vanilla Pingora's idle connections | {wait_mib - (rss_vanilla - rss_vanilla0) / 1024:.1f} MiB ({wait_mib * 1024 / args.pending - (rss_vanilla - rss_vanilla0) / args.pending:.1f} KiB per pending request: the request held in Pingora and the approval) |",
        f"| RSS after the agents went away | {rss_after / 1024:.1f} MiB ({left} still pending) |",
        f"| **ticket mode** (a fresh gateway): {pending_tickets} approvals pending ({issued} answered 202), no request held | {rss_tickets / 1024:.1f} MiB: **{ticket_mib:.1f} MiB** more than after its warm-up ({ticket_mib * 1024 / max(pending_tickets, 1):.1f} KiB each); target < 50 MB: {'met' if ticket_mib * 1.048576 < 50 else 'MISSED'} |",
        "",
        "| unrelated traffic | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in (("before", before), (f"with {args.pending} pending", during)):
        lines.append(f"| {name} | {r['rps']:.0f} | {r['p50'] / 1000:.3f} | {r['p90'] / 1000:.3f} | {r['p99'] / 1000:.3f} | {r['errors'] + r['status_errors']} |")
    lines += ["", f"p99 ratio (with pending / before): {during['p99'] / max(before['p99'], 1):.2f}; "
              f"throughput ratio: {during['rps'] / max(before['rps'], 1):.2f}.", ""]
    report = "\n".join(lines)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (datetime.date.today().isoformat() + ("-approvals-smoke" if args.smoke else "-approvals") + ".md")
    path.write_text(report)
    print(report)
    print(f"report: {path}")
    ok = (held["pending"] == args.pending and left == 0 and pending_tickets == args.pending
          and before["status_errors"] + during["status_errors"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
