"""Write what was measured: a printed table, results.json, results.md and one PNG plot per op."""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _throughput(entry: dict) -> str:
    if "tflops" in entry:
        return f"{entry['tflops']:.1f} TFLOP/s"
    if "gbps" in entry:
        return f"{entry['gbps']:.0f} GB/s"
    return ""


def _cell(entry: dict) -> str:
    parts = [f"{entry['ms']:.3f} ms"]
    if _throughput(entry):
        parts.append(_throughput(entry) + (f" ({entry['roofline_pct']:.0f}%)" if "roofline_pct" in entry else ""))
    if "tokens_per_s" in entry:
        parts.append(f"{entry['tokens_per_s']:.0f} tok/s")
    if "requests_per_s" in entry:
        parts.append(f"{entry['requests_per_s']:.2f} req/s")
    for name in ("ttft", "itl"):  # latency percentiles of a load test
        if f"{name}_p50_ms" in entry:
            parts.append(f"{name.upper()} p50 {entry[f'{name}_p50_ms']:.1f} / p99 {entry[f'{name}_p99_ms']:.1f} ms")
    return ", ".join(parts)


def markdown(data: dict) -> str:
    s, c = data["stamp"], data["ceilings"]
    lines = [f"# neva benchmarks{' (--quick smoke run: tiny sizes, not performance)' if data['quick'] else ''}", "",
             f"{s['device']}, driver {s['driver']}, torch {s['torch']} (CUDA {s['cuda']}), triton {s['triton']}, "
             f"Python {s['python']}, commit `{s['commit'][:12]}`, {s['date']}.", "",
             f"Ceilings measured in this run: device copy {c['copy_gbps']:.0f} GB/s (read + write), matmul "
             f"{c['matmul_tflops']:.1f} TFLOP/s. Percentages are of these.", ""]
    by_op = defaultdict(list)
    for case in data["cases"]:
        by_op[(case["op"], case["backward"])].append(case)
    for (op, backward), cases in by_op.items():
        names = list(dict.fromkeys(n for case in cases for n in case["results"]))
        lines += [f"## {op}{' backward' if backward else ''}", "",
                  "| shape | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for case in cases:
            cells = [_cell(case["results"][n]) if n in case["results"] else "-" for n in names]
            lines.append(f"| {case['label']} | " + " | ".join(cells) + " |")
        speedups = [f"- {case['label']}: " + ", ".join(f"{n} is {x:.2f}x {other}" for n, e in case["results"].items()
                                                      for other, x in e.get("speedup", {}).items())
                    for case in cases if any(e.get("speedup") for e in case["results"].values())]
        missing = sorted({f"{n}: {why}" for case in cases for n, why in case["missing"].items()})
        lines += [""] + (["Speedups (anchor time / neva time):", *speedups, ""] if speedups else [])
        lines += (["Not measured:", *[f"- {m}" for m in missing], ""] if missing else [])
    for suite, why in data["missing_suites"].items():
        lines.append(f"- suite `{suite}` not run: {why}")
    if data["skipped_for_time"]:
        lines.append(f"- time budget spent: {', '.join(data['skipped_for_time'])}")
    return "\n".join(lines) + "\n"


def plot(data: dict, folder: str) -> list[str]:
    """One PNG per op: throughput against size, a line per implementation, the roofline dashed."""
    by_op = defaultdict(list)
    for case in data["cases"]:
        by_op[(case["op"], case["backward"], case["label"].split(" ")[-1])].append(case)
    paths = []
    for (op, backward, variant), cases in by_op.items():
        compute = any("tflops" in e for case in cases for e in case["results"].values())
        key, unit = ("tflops", "TFLOP/s") if compute else ("gbps", "GB/s")
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in dict.fromkeys(n for case in cases for n in case["results"]):
            points = sorted((case["size"], case["results"][name][key]) for case in cases
                            if key in case["results"].get(name, {}))
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ceiling = data["ceilings"]["matmul_tflops" if compute else "copy_gbps"]
        ax.axhline(ceiling, linestyle="--", color="gray", label="roofline (measured)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size")
        ax.set_ylabel(unit)
        ax.set_title(f"{op}{' backward' if backward else ''} ({variant}) — {data['stamp']['device']}")
        ax.legend(fontsize=7)
        name = re.sub(r"[^a-z0-9]+", "_", f"{op}{' backward' if backward else ''} {len(paths)}".lower()) + ".png"
        fig.savefig(os.path.join(folder, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(name)
    return paths


def save_json(data: dict, path: str) -> None:
    """Replace `path` in one step: a reader (or a kill) never meets a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(partial, path)


def write(data: dict, folder: str, json_path: str | None = None) -> None:
    """results.md and the plots into `folder`; results.json to `json_path` (default: into `folder`)."""
    os.makedirs(folder, exist_ok=True)
    data["plots"] = plot(data, folder)
    save_json(data, json_path or os.path.join(folder, "results.json"))
    text = markdown(data)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(text + "".join(f"\n![{p}]({p})\n" for p in data["plots"]))
    print(text)
