#!/usr/bin/env python3
"""Plots of benchmarks/results/*.json for docs/benchmarks.md (PNG, matplotlib).

    python benchmarks/plots.py [--results benchmarks/results] [--out docs/img]

- ``hop-latency.png``: the hop latency distribution (CDF) of each sequencing
  configuration, unloaded and loaded;
- ``throughput.png``: task runs/s of each sequencing configuration, and
  messages/s of each dispatch configuration;
- ``scaling.png``: hops/s against operations already in the store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]


def _cdf(axis, quantiles: list[float], label: str) -> None:
    """Plot a distribution given by its evenly spaced quantiles (p0 ... p100)."""
    last = len(quantiles) - 1
    axis.plot(quantiles, [i / last for i in range(len(quantiles))], label=label)


def hop_latency(sequencing: dict, out: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for axis, kind in zip(axes, ("unloaded", "bulk"), strict=True):
        for name, runs in sequencing["results"].items():
            if kind in runs and runs[kind].get("hops_ms_quantiles"):
                _cdf(axis, runs[kind]["hops_ms_quantiles"], name)
        axis.set_xscale("log")
        axis.set_xlabel("hop latency, ms (task n ended -> task n+1 started; log scale)")
        axis.set_ylabel("share of hops")
        axis.set_title("unloaded: one operation at a time" if kind == "unloaded"
                       else f"loaded: {sequencing['operations']} operations at once")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path = out / "hop-latency.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def throughput(sequencing: dict | None, dispatch: dict | None, out: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    if sequencing:
        names = [n for n, r in sequencing["results"].items() if "bulk" in r]
        rates = [sequencing["results"][n]["bulk"]["task_runs_per_second"] for n in names]
        axes[0].barh(names, rates, color=["#4c72b0" if n.startswith("kser") else "#dd8452"
                                          for n in names])
        axes[0].set_xlabel("task runs/s (higher is better)")
        axes[0].set_title(f"sequencing: {sequencing['operations']} operations x "
                          f"{sequencing['hops']} tasks")
        axes[0].tick_params(axis="y", labelsize=7)
    if dispatch:
        names = list(dispatch["results"])
        rates = [dispatch["results"][n]["median"] for n in names]
        axes[1].barh(names, rates, color=["#4c72b0" if n.startswith("kser (") else "#8c8c8c"
                                          for n in names])
        axes[1].set_xlabel("messages/s, median (higher is better)")
        axes[1].set_title(f"dispatch: {dispatch['messages']} no-op task messages, one worker")
        axes[1].tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    path = out / "throughput.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def scaling(sequencing: dict, out: Path) -> Path | None:
    runs = sequencing["results"].get("scaling (kser, sqlite, 1 worker)")
    if not runs:
        return None
    stored = sorted(runs, key=int)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.plot([int(n) for n in stored], [runs[n]["task_runs_per_second"] for n in stored],
              marker="o")
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("operations already in the store (log scale)")
    axis.set_ylabel("hops/s")
    axis.set_title("hops/s as the store grows (kser, SQLite, 1 worker)")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = out / "scaling.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args()
    results, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sequencing, dispatch = load(results / "sequencing.json"), load(results / "dispatch.json")
    written = []
    if sequencing:
        written += [hop_latency(sequencing, out), scaling(sequencing, out)]
    if sequencing or dispatch:
        written.append(throughput(sequencing, dispatch, out))
    for path in filter(None, written):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
