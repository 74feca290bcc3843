#!/usr/bin/env python3
"""Prints which top-level modules of src/ import which (from `crate::<module>` paths outside
`#[cfg(test)]` code) and every import circle among them. Exits 1 when a circle exists that
is not listed in ALLOWED (circles may only shrink): run by .ci/run.

    python3 scripts/import-graph.py [--quiet]
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Circles that exist today and are being removed (issue #15); a new one fails the check.
ALLOWED = [
    {"broker", "cluster", "connection", "listener"},
]


def graph():
    edges = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            top = os.path.relpath(path, SRC).split(os.sep)[0].removesuffix(".rs")
            if top in ("main", "lib"):
                continue
            text = open(path, encoding="utf-8").read()
            cut = text.find("#[cfg(test)]")
            if cut >= 0:
                text = text[:cut]
            for m in re.findall(r"crate::([a-z_]+)", text):
                if m != top:
                    edges.setdefault(top, set()).add(m)
    return edges


def circles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    if "--quiet" not in sys.argv:
        for k in sorted(edges):
            print(f"{k:12} -> {', '.join(sorted(edges[k]))}")
    found = circles(edges)
    bad = [c for c in found if not any(c <= a for a in ALLOWED)]
    for c in found:
        print(("NEW circle: " if c in bad else "known circle (#15): ") + " <-> ".join(sorted(c)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
