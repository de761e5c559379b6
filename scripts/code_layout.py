"""Print the code layout of a git revision: Rust crates and Python packages with their modules
and line counts (issue 9's note: the layout before and after, side by side).

    python scripts/code_layout.py 7ce107b 28956eb HEAD
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict


def files(rev: str) -> list[str]:
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if f.endswith((".rs", ".py"))]


def lines(rev: str, path: str) -> int:
    out = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True)
    return out.stdout.count("\n")


def group(path: str) -> str | None:
    """A crate (folder with src/) or a Python package folder; tests and scripts grouped alone."""
    parts = path.split("/")
    if path.endswith(".rs") and "src" in parts:
        return "crate " + "/".join(parts[: parts.index("src")]) or "crate ."
    if path.startswith("python/"):
        return "py " + "/".join(parts[1:-1])
    if path.startswith("tests/"):
        return "tests"
    return None


def layout(rev: str) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for f in files(rev):
        g = group(f)
        if g is not None:
            out[g].append((f, lines(rev, f)))
    return out


def main(revs: list[str]) -> None:
    for rev in revs:
        sha = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()
        lay = layout(rev)
        print(f"\n=== {rev} ({sha}) ===")
        for g in sorted(lay):
            if g == "tests":
                continue
            mods = sorted(lay[g])
            print(f"{g:<40} {sum(n for _, n in mods):>7} lines, {len(mods)} modules")
            if g.startswith("crate"):
                for f, n in mods:
                    print(f"    {f:<52} {n:>6}")
        t = lay.get("tests", [])
        print(f"{'tests':<40} {sum(n for _, n in t):>7} lines, {len(t)} files")
        rust = sum(n for g, m in lay.items() if g.startswith("crate") for _, n in m)
        py = sum(n for g, m in lay.items() if g.startswith("py") for _, n in m)
        print(f"total: Rust {rust} lines, Python package {py} lines")


if __name__ == "__main__":
    main(sys.argv[1:] or ["HEAD"])
