"""`mbms bench core` and `mbms bench sim` of two installs (e.g. main's wheel and a branch), run
interleaved on the same machine in one run, printed side by side (issue 9: speed must not drop).

    python scripts/bench_side_by_side.py /work/venv-base/bin/python /work/venv-new/bin/python
"""

from __future__ import annotations

import json
import subprocess
import sys


def bench(python: str, target: str, *args: str) -> dict:
    out = subprocess.run([python, "-m", "mbms", "bench", target, "--json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(base: str, new: str, rounds: int = 2) -> None:
    runs: dict[str, list[dict]] = {"core base": [], "core new": [], "sim base": [], "sim new": []}
    for _ in range(rounds):  # interleaved, so a load change hits both alike
        runs["core base"].append(bench(base, "core", "--sizes", "1000", "10000"))
        runs["core new"].append(bench(new, "core", "--sizes", "1000", "10000"))
        runs["sim base"].append(bench(base, "sim"))
        runs["sim new"].append(bench(new, "sim"))
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
