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
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole run, set-up included: no case is started after it")
    parser.add_argument("--out", default=None, help="folder for results (default benchmarks/results/<device>-<date>)")
    parser.add_argument("--json", default=None,
                        help="where results.json is rewritten after every case (default: in the --out folder)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    run_stamp = stamp(device)
    slug = re.sub(r"[^a-z0-9]+", "-", run_stamp["device"].lower()).strip("-")
    folder = args.out or os.path.join(os.path.dirname(__file__), "results",
                                      f"{slug}-{run_stamp['date'][:10]}{'-quick' if args.quick else ''}")
    json_path = args.json or os.path.join(folder, "results.json")
    results = run(args.suite, device, args.quick, args.budget_s,
                  save=lambda partial: report.save_json({"stamp": run_stamp, **partial}, json_path))
    report.write({"stamp": run_stamp, **results}, folder, json_path)
    print(f"results written to {folder}" + (f" and {json_path}" if args.json else ""))

if __name__ == "__main__":
    main()
