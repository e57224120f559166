"""Rank the cuda and triton backends per op and GPU architecture from committed benchmark results.

  python scripts/update_preferences.py benchmarks/results/*/results.json

For every op measured with both "neva-cuda" and "neva-triton" on an architecture, the backend with the smaller
total time over the measured shapes comes first. Writes neva_kernels/measured_preferences.json, which the
dispatcher reads: a cuda kernel is chosen automatically only where it appears there.
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "neva_kernels",
                     "measured_preferences.json")
BACKENDS = {"neva-cuda": "cuda", "neva-triton": "triton"}


def rank(result_files: list[str]) -> dict:
    totals = defaultdict(lambda: defaultdict(float))  # (arch, op) -> backend -> total ms
    for path in result_files:
        with open(path) as f:
            data = json.load(f)
        arch = data["stamp"].get("architecture", "cpu")
        if arch == "cpu" or data.get("quick"):
            continue
        for case in data["cases"]:
            if case["backward"] or not all(name in case["results"] for name in BACKENDS):
                continue
            for name, backend in BACKENDS.items():
                totals[(arch, case["op"])][backend] += case["results"][name]["ms"]
    table = defaultdict(dict)
    for (arch, op), by_backend in sorted(totals.items()):
        table[arch][op] = sorted(by_backend, key=by_backend.get)
    return dict(table)


def main(paths: list[str]) -> None:
    with open(TABLE) as f:
        current = json.load(f)
    current["sources"] = sorted(os.path.relpath(p, os.path.dirname(os.path.dirname(TABLE))) for p in paths)
    current["architectures"] = rank(paths)
    with open(TABLE, "w") as f:
        json.dump(current, f, indent=2)
        f.write("\n")
    print(json.dumps(current["architectures"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
