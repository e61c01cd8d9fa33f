#!/usr/bin/env python3
"""Fails when two top-level modules of a crate import each other, directly or through others.

A module is a file `src/x.rs` or a folder `src/x/`; an import is a `crate::y` path in code
(comments, doc links and test modules are left out). Layers must point one way: a cycle means
two concerns were not separated, which is what issue 11 removed."""
import pathlib
import re
import sys

CRATES = ["lb", "config-sync", "table"]
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def module_of(src: pathlib.Path, f: pathlib.Path):
    rel = f.relative_to(src)
    if rel.name in ("lib.rs", "main.rs") and len(rel.parts) == 1:
        return None
    if rel.name == "tests.rs" or "tests" in rel.parts[1:-1] or rel.parent.name == "tests":
        return None
    return rel.parts[0].removesuffix(".rs")


def code(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.strip().startswith("#[cfg(test)]"):
            break  # unit tests sit at the bottom
        out.append(line.split("//", 1)[0])
    return "\n".join(out)


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    bad = False
    for crate in CRATES:
        src = root / crate / "src"
        graph = {}
        for f in src.rglob("*.rs"):
            m = module_of(src, f)
            if m is None:
                continue
            text = code(f.read_text())
            deps = set(PATH.findall(text))
            for group in GROUP.findall(text):
                deps.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
            deps.discard(m)
            graph.setdefault(m, set()).update(deps)
        for comp in cycles(graph):
            bad = True
            edges = [f"{a} → {b}" for a in comp for b in sorted(graph.get(a, ())) if b in comp]
            print(f"{crate}: import cycle between {', '.join(comp)}: {'; '.join(edges)}")
    if not bad:
        print("no import cycles between modules in " + ", ".join(CRATES))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
