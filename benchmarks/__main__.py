"""python -m benchmarks: measure neva's kernels (and model) against their anchors on this machine.

  python -m benchmarks --quick                 # tiny sizes on any machine: proves the benchmark code runs
  python -m benchmarks --suite memory compute  # on a GPU: the real shapes; results under benchmarks/results/
"""
from __future__ import annotations

import argparse
import os
import re

import torch

from . import report
from .environment import stamp
from .run import SUITES, run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, CPU-capable anchors only")
    parser.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    parser.add_argument("--out", default=None, help="folder for results (default benchmarks/results/<device>-<date>)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    data = {"stamp": stamp(device), **run(args.suite, device, args.quick, args.budget_s)}
    slug = re.sub(r"[^a-z0-9]+", "-", data["stamp"]["device"].lower()).strip("-")
    folder = args.out or os.path.join(os.path.dirname(__file__), "results",
                                      f"{slug}-{data['stamp']['date'][:10]}{'-quick' if args.quick else ''}")
    report.write(data, folder)
    print(f"results written to {folder}")


if __name__ == "__main__":
    main()
