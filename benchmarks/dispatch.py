#!/usr/bin/env python3
"""Dispatch throughput: pre-produced no-op task messages through one worker process.

    python benchmarks/dispatch.py [--messages 20000] [--runs 5]

Side by side, in one run, on one local broker (scripts/kafka-local):

- kser with kafka-python and with confluent-kafka (`kser worker`, commit after
  processing, concurrency 1);
- kser 0.8.27 from PyPI, installed in its own throwaway virtualenv
  (benchmarks/.venv-kser0827, not committed), its Consumer on the same topic
  layout (it commits *before* processing);
- the bare kafka-python consume loop, no processing, one commit per batch
  (the limit).

Each run produces the messages to a new 1-partition topic, starts the
consumer process and times it from its first committed offset to the last
(so start-up and group join are not counted). Messages/s, median of the runs.
Writes benchmarks/results/dispatch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from kafka import KafkaConsumer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402

from benchmarks import scratch  # noqa: E402
from benchmarks.memory import kafka_bootstrap, produce  # noqa: E402

LEGACY_VENV = ROOT / "benchmarks" / ".venv-kser0827"

#: kser 0.8.27's own consumer, as its documentation writes it (run in its venv)
LEGACY_WORKER = '''
import os, sys
os.environ.setdefault("LOCK_PATH", sys.argv[3])
from cdumay_result import Result
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.python_kafka.consumer import Consumer

class Noop(Task):
    def run(self):
        return Result(uuid=self.uuid)

registry = OperationRegistry()
registry.subscribe(Noop)
cons = Consumer(dict(bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
                     auto_offset_reset="earliest", enable_auto_commit=False), [sys.argv[4]])
cons.REGISTRY = registry.controller
cons.run()
'''

#: the bare client loop: consume, no processing, commit once per batch
BARE_WORKER = '''
import sys
import tempfile
from kafka import KafkaConsumer
consumer = KafkaConsumer(sys.argv[3], bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
                         auto_offset_reset="earliest", enable_auto_commit=False)
while True:
    if consumer.poll(timeout_ms=500, max_records=500):
        consumer.commit()
'''


def legacy_python() -> str:
    """The throwaway venv with kser 0.8.27 from PyPI (created on first use)."""
    python = LEGACY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LEGACY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "kser==0.8.27",
                        "marshmallow<4", "kafka-python"], check=True)
    return str(python)


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0)) or 0
    finally:
        consumer.close()


def timed(command: list[str], bootstrap: str, group: str, topic: str, messages: int,
          env: dict) -> float:
    """Messages/s of ``command`` from its first commit to its last (from its start, when
    its first commit already covers every message, as in tiny smoke runs)."""
    process = subprocess.Popen(command, env=env, cwd=tempfile.gettempdir(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = committed(bootstrap, group, topic)
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done) if done < messages else (started, 0)
            if done >= messages:
                return (messages - first[1]) / max(now - first[0], 1e-6)
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited with {process.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"{command[:4]} did not finish")
    finally:
        process.kill()
        process.wait(30)


def one_run(name: str, bootstrap: str, messages: int) -> float:
    topic, group = f"bench-d-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    entrypoint = "__main__.Noop" if name == "kser 0.8.27" else "benchmarks.tasks.Noop"
    produce(bootstrap, topic, messages, entrypoint)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KSER_LOG_LEVEL": "WARNING",
           "KSER_STORE_URL": f"sqlite:///{scratch('kser-bench-')}/unused.db"}
    if name == "kser 0.8.27":
        script = scratch("kser-bench-legacy-") / "legacy_worker.py"
        script.write_text(LEGACY_WORKER)
        env.pop("PYTHONPATH")
        command = [legacy_python(), str(script), bootstrap, group, str(script.parent), topic]
    elif name == "bare kafka-python loop":
        command = [sys.executable, "-c", BARE_WORKER, bootstrap, group, topic]
    else:
        transport = "confluent" if "confluent" in name else "kafka"
        command = [sys.executable, "-m", "kser.cli", "worker", "benchmarks.tasks:registry",
                   "--topic", topic, "--group", group, "--transport", transport,
                   "--bootstrap-servers", bootstrap]
    return timed(command, bootstrap, group, topic, messages, env)


CONFIGURATIONS = ["kser (kafka-python)", "kser (confluent-kafka)", "kser 0.8.27",
                  "bare kafka-python loop"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=CONFIGURATIONS, action="append")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    results = {}
    with kafka_bootstrap() as bootstrap:
        for run in range(args.runs):
            for name in args.only or CONFIGURATIONS:
                rate = one_run(name, bootstrap, args.messages)
                results.setdefault(name, []).append(round(rate))
                print(f"run {run + 1}: {name}: {rate:.0f} messages/s", flush=True)
    summary = {name: dict(runs=rates, median=statistics.median(rates))
               for name, rates in results.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dispatch.json").write_text(json.dumps(dict(messages=args.messages,
                                                       results=summary), indent=1))
    for name, data in summary.items():
        print(f"{name:<26} median {data['median']:>7.0f} messages/s  runs {data['runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
