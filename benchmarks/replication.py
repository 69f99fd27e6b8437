#!/usr/bin/env python3
"""What replication costs: kser on a three-node Kafka cluster against one broker.

    python benchmarks/replication.py                 # about 6 minutes
    python benchmarks/replication.py --rounds 3 --operations 1000

Starts one broker and a three-node KRaft cluster (scripts/kafka-local) and
PostgreSQL (scripts/pg-local), then runs the same kser workload on each in
alternating pairs (one broker, three brokers, one, three...) for --rounds
rounds: on the cluster kser creates the topic with 3 replicas and
min.insync.replicas 2, so each record is acknowledged once two brokers hold it
(acks=all); on one broker with 1 replica. Each run: --workers workers on a new
PostgreSQL database, --unloaded operations one at a time (hop latency), then
--operations sent at once (task runs per second). Prints each run and, per
setup, the median and the spread (lowest to highest) over the rounds; writes
results/replication.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchmarks import scratch  # noqa: E402
from benchmarks.sequencing import KserRun, new_database, postgres  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=500)
    parser.add_argument("--hops", type=int, default=10)
    parser.add_argument("--unloaded", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--transport", choices=["kafka", "confluent"], default="confluent")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from kafka_local import KafkaBroker, KafkaCluster

    runs: dict[str, list[dict]] = {"1 broker, 1 replica": [],
                                   "3 brokers, 3 replicas, min.insync.replicas 2": []}
    with ExitStack() as stack:
        one = KafkaBroker(scratch("kser-bench-kafka-")).start()
        stack.callback(one.stop)
        three = KafkaCluster(scratch("kser-bench-cluster-"), 3).start()
        stack.callback(three.stop)
        pg = stack.enter_context(postgres())
        for round_ in range(1, args.rounds + 1):
            for (name, results), bootstrap in zip(
                    runs.items(), (one.bootstrap_servers, three.bootstrap_servers), strict=True):
                with KserRun(bootstrap, new_database(pg), args.workers, args.transport) as run:
                    unloaded = run.unloaded(args.unloaded, args.hops)
                    bulk = run.bulk(args.operations, args.hops)
                results.append(dict(
                    round=round_, task_runs_per_second=bulk["task_runs_per_second"],
                    hop_p50_ms=unloaded["hop_p50_ms"], hop_p99_ms=unloaded["hop_p99_ms"],
                    worker_cpu_ms_per_task_run=bulk.get("worker_cpu_ms_per_task_run")))
                print(f"round {round_}  {name:<46} {bulk['task_runs_per_second']:>7.1f} task "
                      f"runs/s  hop p50 {unloaded['hop_p50_ms']:.2f} ms  p99 "
                      f"{unloaded['hop_p99_ms']:.2f} ms", flush=True)
    summary = {}
    for name, results in runs.items():
        summary[name] = {key: dict(median=round(statistics.median(r[key] for r in results), 2),
                                   low=min(r[key] for r in results),
                                   high=max(r[key] for r in results))
                         for key in ("task_runs_per_second", "hop_p50_ms", "hop_p99_ms")}
        figures = summary[name]
        print(f"{name:<46} " + "  ".join(
            f"{key} {f['median']} ({f['low']} to {f['high']})" for key, f in figures.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replication.json").write_text(json.dumps(dict(
        operations=args.operations, hops=args.hops, unloaded=args.unloaded,
        workers=args.workers, transport=args.transport, rounds=args.rounds, runs=runs,
        summary=summary), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
