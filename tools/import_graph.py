#!/usr/bin/env python3
"""The import graph between agentgate's top-level modules, and its cycles.

Reads src/ as text: a file belongs to the top-level module named by its first path part
(src/proxy/mod.rs and src/proxy.rs are both `proxy`), and it imports every `crate::NAME` it
mentions, including inside `use crate::{a, b::c}` groups. Prints one line per module with what
it imports, then the cycles (strongly connected components of more than one module), and checks
the layering rule of ARCHITECTURE.md: engines import no glue.

Usage: tools/import_graph.py [--check]   (--check: exit 1 on a cycle or a layering breach)
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
# ARCHITECTURE.md's layers, lowest first. A module not listed is reported.
LAYERS = [
    ("leaves", {"util", "tls", "metrics", "shutdown"}),
    ("engines", {"canonical", "mask", "mcp", "policy", "identity", "config", "upstream", "usage"}),
    ("state", {"db", "approval", "record", "session_log", "limits", "telemetry"}),
    ("glue", {"proxy", "server", "admin", "cli", "props"}),
]
LEVEL = {m: (i, name) for i, (name, mods) in enumerate(LAYERS) for m in mods}


def module_of(rel):
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def imports_of(text):
    out = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", text, re.S):
        out.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
    return out


def graph():
    g = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, SRC)
            m = module_of(rel)
            if m in ("lib", "main"):
                continue
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            # Test modules may reach anywhere; only the code that ships counts.
            text = text.split("#[cfg(test)]\nmod tests")[0]
            deps = g.setdefault(m, set())
            deps.update(d for d in imports_of(text) if d != m)
    known = set(g)
    return {m: {d for d in deps if d in known} for m, deps in g.items()}


def sccs(g):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    g = graph()
    for m in sorted(g):
        print(f"{m:14} -> {', '.join(sorted(g[m])) or '(nothing)'}")
    cycles = sccs(g)
    print()
    if cycles:
        for c in cycles:
            print(f"cycle ({len(c)} modules): {' <-> '.join(c)}")
    else:
        print("no import cycles between top-level modules")
    unknown = [m for m in sorted(g) if m not in LEVEL]
    for m in unknown:
        print(f"layering: `{m}` is in no layer (add it to LAYERS and ARCHITECTURE.md)")
    breaches = [(m, d) for m in sorted(g) if m in LEVEL for d in sorted(g[m]) if d in LEVEL and LEVEL[d][0] > LEVEL[m][0]]
    for m, d in breaches:
        print(f"layering: {LEVEL[m][1]} `{m}` imports {LEVEL[d][1]} `{d}`")
    if not breaches and not unknown:
        print("every module imports only its own layer or those below")
    breaches += [(m, "") for m in unknown]
    if "--check" in sys.argv and (cycles or breaches):
        sys.exit(1)


if __name__ == "__main__":
    main()
