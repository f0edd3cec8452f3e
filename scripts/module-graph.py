#!/usr/bin/env python3
"""The module graph of src/, read from the code: which file imports which (through `use` and `crate::`/`super::`
paths; `mod` declarations are not imports). Prints the top-level modules as a Mermaid graph (what ARCHITECTURE.md
shows) and, with --check, fails when files import each other in a circle.

Usage: scripts/module-graph.py [--check] [--mermaid] [--write]   (--write puts the graph into ARCHITECTURE.md)
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_of(path: Path) -> tuple:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    # Leave out unit tests: they may use anything of their own module's parents.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: cut.start()] if cut else text


def paths_in(text: str):
    """Every crate::/super::/self:: path, with `use` groups expanded one level."""
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        body = re.sub(r"\s+", "", m.group(1))
        g = re.match(r"^(.*?)::\{(.*)\}$", body)
        if g:
            depth, cur, items = 0, "", []
            for ch in g.group(2):
                if ch == "," and depth == 0:
                    items.append(cur)
                    cur = ""
                    continue
                depth += ch == "{"
                depth -= ch == "}"
                cur += ch
            items.append(cur)
            for it in items:
                it = re.split(r"::\{", it)[0]
                yield g.group(1) + "::" + it if it and it != "self" else g.group(1)
        else:
            yield body
    for m in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        yield m.group(1)


def main() -> int:
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    mods = set(files)
    edges = {m: set() for m in mods}
    for m, p in files.items():
        text = strip(p.read_text())
        # Child modules a file declares: `use child::X` names them without a prefix.
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, flags=re.M))
        for path in paths_in(text):
            segs = path.replace(" ", "").split("::")
            if segs[0] == "crate":
                base, rest = (), segs[1:]
            elif segs[0] == "super":
                # `super` of a module is its parent module, whichever file holds it.
                base, rest = m[:-1], segs[1:]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
            elif segs[0] == "self":
                base, rest = m, segs[1:]
            elif segs[0] in children:
                base, rest = m, segs
            else:
                continue
            target = base
            for s in rest:
                if target + (s,) not in mods:
                    break
                target = target + (s,)
            if target != m and target in mods:
                edges[m].add(target)
    return report(files, edges)


def sccs(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def mermaid(edges) -> str:
    top = {}
    for m, ts in edges.items():
        for t in ts:
            if m and t and m[0] != t[0] and m[0] not in ("main", "lib"):
                top.setdefault(m[0], set()).add(t[0])
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"  {a} --> {b}" for a in sorted(top) for b in sorted(top[a])]
    return "\n".join(lines + ["```"])


def report(files, edges) -> int:
    circles = [c for c in sccs(edges) if len(c) > 1]
    graph = mermaid(edges)
    if "--mermaid" in sys.argv:
        print(graph)
    n_edges = sum(len(v) for v in edges.values())
    print(f"{len(files)} files, {n_edges} imports between them, {len(circles)} import circles", file=sys.stderr)
    for c in circles:
        print("circle: " + " <-> ".join(name(m) for m in sorted(c)), file=sys.stderr)
    doc_path = SRC.parent / "ARCHITECTURE.md"
    doc = doc_path.read_text()
    marked = r"(<!-- module-graph:begin -->\n)(.*?)(\n<!-- module-graph:end -->)"
    if "--write" in sys.argv:
        doc = re.sub(marked, lambda m: m.group(1) + graph + m.group(3), doc, flags=re.S)
        doc_path.write_text(doc)
    if "--check" not in sys.argv:
        return 0
    shown = re.search(r"<!-- module-graph:begin -->\n(.*?)\n<!-- module-graph:end -->", doc, flags=re.S)
    stale = not shown or shown.group(1).strip() != graph
    if stale:
        print("ARCHITECTURE.md's module graph is out of date: run scripts/module-graph.py --write", file=sys.stderr)
    return 1 if circles or stale else 0


if __name__ == "__main__":
    sys.exit(main())
