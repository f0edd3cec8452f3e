#!/usr/bin/env python3
"""Keeps files and functions readable: fails when a file under src/ or tests/ passes 600 lines or a function 80
(declarative tables, marked `// size-check: table` on the line above the fn, are let through).

Usage: scripts/size-check.py
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE, MAX_FN = 600, 80


def functions(lines):
    """(name, first line, length) of each fn whose body closes at the fn line's own indentation."""
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:(?:async|const|unsafe|extern \"C\")\s+)*fn\s+(\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i, min(len(lines), i + 2000)):
            if lines[j].startswith(indent + "}") and (j > i or lines[j].rstrip().endswith("}")):
                yield m.group(2), i, j - i + 1, i > 0 and "size-check: table" in lines[i - 1]
                break
            if j == i and lines[j].rstrip().endswith(";"):
                break


def main() -> int:
    bad = []
    for p in sorted(list((ROOT / "src").rglob("*.rs")) + list((ROOT / "tests").rglob("*.rs"))):
        lines = p.read_text().splitlines()
        rel = p.relative_to(ROOT)
        if len(lines) > MAX_FILE:
            bad.append(f"{rel}: {len(lines)} lines (at most {MAX_FILE})")
        for name, start, n, table in functions(lines):
            if n > MAX_FN and not table:
                bad.append(f"{rel}:{start + 1}: fn {name} is {n} lines (at most {MAX_FN})")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
