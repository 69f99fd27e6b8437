#!/usr/bin/env python3
"""Every benchmark in one command; the figures go to docs/benchmarks.md.

    python benchmarks/run_all.py            # about 25 minutes (6 more the first time)
    python benchmarks/run_all.py --smoke    # tiny sizes: checks the harness works
    python benchmarks/run_all.py --tables-only   # docs and plots from the last results

Runs dispatch.py, memory.py (both clients), sequencing.py and plots.py, each
on its own local broker (and PostgreSQL, Redis and Temporal's dev server for
sequencing; its CLI is built with Go on the first run), then rewrites the part
of docs/benchmarks.md between the ``results:begin`` and ``results:end``
markers with the machine, the versions, the exact commands and the tables
(``--smoke`` writes to --out instead and leaves the docs alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

FULL = dict(dispatch=["--messages", "20000", "--runs", "5"], memory=["--messages", "100000"],
            sequencing=["--operations", "1000", "--unloaded", "50"])
#: Temporal needs its CLI built with Go (minutes): the smoke run leaves it out
SMOKE = dict(dispatch=["--messages", "300", "--runs", "1"], memory=["--messages", "600"],
             sequencing=["--operations", "10", "--unloaded", "2", "--workers", "1",
                         "--scaling", "10,20", "--parallel", "3x0.2", "--io", "2x0.01",
                         "--no-temporal", "--floor-hops", "20", "--async-io", "0.01"])


def run(script: str, args: list[str], out: Path) -> str:
    command = [sys.executable, f"benchmarks/{script}", *args, "--out", str(out)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return "python " + " ".join(command[1:-2])


def versions() -> list[str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    def output(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "not found"

    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    kafka = pom.split("<kafka.version>")[1].split("<")[0]
    memory = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return [f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"{int(memory) // 1024 ** 2} GiB, {platform.platform()}",
            f"Python {platform.python_version()}; kser {version('kser')}, kafka-python "
            f"{version('kafka-python')}, confluent-kafka {version('confluent-kafka')}, "
            f"SQLAlchemy {version('SQLAlchemy')}, psycopg {version('psycopg')}",
            f"Apache Kafka {kafka} (scripts/kafka-local, one KRaft node, same machine)",
            f"PostgreSQL: {output(['bash', '-c', 'ls -d /usr/lib/postgresql/*/bin | tail -1'])}"
            " (scripts/pg-local); Redis: " + output(["redis-server", "--version"]),
            "Celery: benchmarks/.venv-celery; Temporal: its CLI's dev server "
            "(benchmarks/.temporal) and temporalio (benchmarks/.venv-temporal); versions in "
            "benchmarks/sequencing.py; kser 0.8.27: benchmarks/.venv-kser0827"]


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "n/a"


def tables(out: Path, commands: list[str]) -> str:
    finished = (out / "sequencing.json").stat().st_mtime  # the run's last benchmark
    lines = [f"Run ending {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(finished))}, by "
             "`python benchmarks/run_all.py`:", ""]
    lines += [f"- {line}" for line in versions()]
    lines += ["", "Commands it ran:", "", "```sh", *commands,
              "python benchmarks/plots.py", "```", ""]
    dispatch = json.loads((out / "dispatch.json").read_text())
    legacy = dispatch["results"].get("kser 0.8.27", {}).get("median", 0)
    bare = dispatch["results"].get("bare kafka-python loop", {}).get("median", 0)
    lines += [f"### Dispatch: {dispatch['messages']:,} no-op task messages, one worker", "",
              "| consumer | median messages/s | runs | vs kser 0.8.27 (target >= 3x) "
              "| vs bare loop (target >= 50%) |", "| --- | --- | --- | --- | --- |"]
    for name, data in dispatch["results"].items():
        lines.append(f"| {name} | {data['median']:,.0f} | {', '.join(map(str, data['runs']))} "
                     f"| {_ratio(data['median'], legacy)} | "
                     f"{100 * data['median'] / bare:.0f}% |" if bare else "| n/a |")
    lines += ["", "### Memory: RSS of one worker", "",
              "| transport | messages | messages/s | RSS peak during warm-up (first 10%) "
              "| RSS peak after warm-up | final | growth (target < 10%) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for transport in ("kafka", "confluent"):
        path = out / f"memory-{transport}.json"
        if path.exists():
            data = json.loads(path.read_text())
            lines.append(f"| {transport} | {data['messages']:,} | "
                         f"{data['messages_per_second']:,} | "
                         f"{data['rss_peak_during_warm_up_kib'] / 1024:.1f} MiB | "
                         f"{data['rss_peak_after_warm_up_kib'] / 1024:.1f} MiB | "
                         f"{data['rss_final_kib'] / 1024:.1f} MiB | "
                         f"{data['growth_percent']}% |")
    sequencing = json.loads((out / "sequencing.json").read_text())
    results, meta = sequencing["results"], sequencing.get("meta", {})
    lines += ["", f"### Sequencing: {sequencing['operations']:,} operations x "
              f"{sequencing['hops']} tasks at once; hop latency unloaded over "
              f"{sequencing['unloaded']} operations one at a time", "",
              "CPU per task run, in the run at once: the worker processes' user + system "
              "time (for Temporal, its server's apart); the machine's: every process on "
              "the two cores (broker, store, sender included).", "",
              "PostgreSQL per task run: the statements kser's processes sent (with BEGIN "
              "and COMMIT) and the server's time, from pg_stat_statements.", "",
              "| configuration | task runs/s | vs Celery, same workers and load (target >= "
              "1.5x) | vs Temporal tuned, same workers (target >= 5x) | loaded hop p50 / p99 "
              "| unloaded hop p50 / p99 | CPU per task run | PostgreSQL per task run, "
              "loaded / unloaded |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def peer(system: str, about: dict, **extra) -> dict | None:
        for other, runs in results.items():
            them = meta.get(other, {})
            if (them.get("system") == system and them.get("workers") == about.get("workers")
                    and them.get("sleep") == about.get("sleep")
                    and all(them.get(k) == v for k, v in extra.items()) and "bulk" in runs):
                return runs
        return None

    for name, runs in results.items():
        if "bulk" not in runs:
            continue
        about = meta.get(name, {})
        bulk, unloaded = runs["bulk"], runs["unloaded"]
        rate = bulk["task_runs_per_second"]
        celery = peer("celery", about) if about.get("system") == "kser" else None
        temporal = (peer("temporal", about, tuned=True) if about.get("system") == "kser"
                    else None)
        cpu = bulk.get("worker_cpu_ms_per_task_run")
        server = bulk.get("server_cpu_ms_per_task_run")
        machine = bulk.get("machine_cpu_ms_per_task_run")
        bound = ""
        if (about.get("sleep") and isinstance(about.get("concurrency"), int)
                and about.get("workers")):  # (threads x workers / task time)
            most = about["workers"] * about["concurrency"] / about["sleep"]
            bound = f" ({100 * rate / most:.0f}% of the thread bound, {most:,.0f})"
        lines.append(
            f"| {name} | {rate:,.0f}{bound} | "
            f"{_ratio(rate, celery['bulk']['task_runs_per_second']) if celery else ''} | "
            + (f"{_ratio(rate, temporal['bulk']['task_runs_per_second'])} (unloaded p50 "
               f"{_ratio(unloaded['hop_p50_ms'], temporal['unloaded']['hop_p50_ms'])} of "
               "Temporal's; target <= 0.20x)" if temporal else "")
            + f" | {bulk['hop_p50_ms']:.1f} / {bulk['hop_p99_ms']:.1f} ms | "
            f"{unloaded['hop_p50_ms']:.2f} / {unloaded['hop_p99_ms']:.2f} ms | "
            + (f"{cpu:.2f} ms" if cpu is not None else "")
            + (f" (server {server:.2f} ms)" if server is not None else "")
            + (f"; machine {machine:.2f} ms" if machine is not None else "") + " | "
            + " / ".join(f"{data['pg_statements_per_task_run']:.2f} "
                         f"({data['pg_calls_per_task_run']:.2f}), "
                         f"{data['pg_exec_ms_per_task_run']:.3f} ms"
                         for data in (bulk, unloaded) if "pg_statements_per_task_run" in data)
            + " |")
    floors = {name: runs["hop"] for name, runs in results.items()
              if name.startswith("physical floor")}
    if floors:
        lines += ["", "### The physical floor of a hop: one durable commit, then one Kafka "
                  "round trip", "",
                  "| store | floor p50 / p99 | commit p50 | Kafka round trip p50 |",
                  "| --- | --- | --- | --- |"]
        for name, floor in floors.items():
            lines.append(f"| {name.split('(')[1].rstrip(')')} | {floor['floor_p50_ms']:.2f} / "
                         f"{floor['floor_p99_ms']:.2f} ms | {floor['commit_p50_ms']:.2f} ms | "
                         f"{floor['kafka_round_trip_p50_ms']:.2f} ms |")
    scaling = results.get("scaling (kser, sqlite, 1 worker)")
    if scaling:
        first = scaling[min(scaling, key=int)]["task_runs_per_second"]
        lines += ["", "### Scaling: hops/s with operations already in the store "
                  "(kser, SQLite, 1 worker)", "",
                  "| operations stored | hops/s | vs the smallest store (target: within 10%) |",
                  "| --- | --- | --- |"]
        for stored in sorted(scaling, key=int):
            rate = scaling[stored]["task_runs_per_second"]
            lines.append(f"| {int(stored):,} | {rate:,.0f} | "
                         f"{100 * (rate - first) / first:+.0f}% |")
    fanouts = {name: runs for name, runs in results.items() if name.startswith("fanout")}
    if fanouts:
        lines += ["", "### Parallel group: wall time of one operation (first task's start "
                  "to last task's end), 10 operations one at a time", "",
                  "| configuration | tasks | as a parallel group (target: about one task's "
                  "time) | as a chain |", "| --- | --- | --- | --- |"]
        for name, runs in fanouts.items():
            group, chain = (next(v for k, v in runs.items() if k.endswith(suffix))
                            for suffix in ("group", "chain"))
            lines.append(f"| {name} | {group['width']} x {group['task_seconds']:g} s | "
                         f"{group['wall_p50_s']:.2f} s (max {group['wall_max_s']:.2f}) | "
                         f"{chain['wall_p50_s']:.2f} s |")
    lines += ["", "![hop latency](img/hop-latency.png)", "",
              "![throughput](img/throughput.png)", "", "![scaling](img/scaling.png)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; docs left alone")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite plots and docs from the results already in --out")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    sizes, out = (SMOKE if args.smoke else FULL), Path(args.out)
    scripts = [("dispatch.py", sizes["dispatch"])]
    scripts += [("memory.py", [*sizes["memory"], "--transport", transport])
                for transport in ("kafka", "confluent")]
    scripts.append(("sequencing.py", sizes["sequencing"]))
    if args.tables_only:
        commands = [f"python benchmarks/{script} {' '.join(arguments)}"
                    for script, arguments in scripts]
    else:
        commands = [run(script, arguments, out) for script, arguments in scripts]
    images = out / "img" if args.smoke else ROOT / "docs" / "img"
    subprocess.run([sys.executable, "benchmarks/plots.py", "--results", str(out),
                    "--out", str(images)], cwd=ROOT, check=True)
    section = tables(out, commands)
    if args.smoke:
        (out / "benchmarks.md").write_text(section + "\n")
        return 0
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + section + "\n" + text[end:])
    print(f"{DOC} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
