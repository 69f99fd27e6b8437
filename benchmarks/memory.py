#!/usr/bin/env python3
"""RSS of one `kser worker` over many messages (issue 4: growth after warm-up < 10%).

    python benchmarks/memory.py [--messages 100000] [--transport kafka|confluent]

Starts a local Kafka broker (scripts/kafka-local) unless KSER_BOOTSTRAP_SERVERS
is set, produces the messages (lone no-op tasks), runs one worker process and
samples its resident memory (VmRSS) every half second until every message is
committed. Writes benchmarks/results/memory-<transport>.json and prints a
summary. A benchmark, not a test: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from kafka import KafkaConsumer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402

from benchmarks import scratch  # noqa: E402
from kser.python_kafka.producer import Producer  # noqa: E402
from kser.schemas import Message  # noqa: E402

#: share of the messages after which the worker counts as warmed up
WARM_UP = 0.1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, count: int,
            entrypoint: str = "benchmarks.tasks.Noop") -> None:
    """Produce ``count`` no-op task messages to ``topic``."""
    producer = Producer({"bootstrap_servers": bootstrap, "linger_ms": 20,
                         "batch_size": 256 * 1024})
    batch = 5000
    for start in range(0, count, batch):
        kmsgs = [Message(str(uuid.uuid4()), entrypoint)
                 for _ in range(min(batch, count - start))]
        result = producer.bulk_send(topic, kmsgs, timeout=120)
        assert result.retcode == 0, result.stderr
    producer.close()


def run(bootstrap: str, messages: int, transport: str, partitions: int = 3) -> dict:
    topic, group = f"bench-mem-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    produce(bootstrap, topic, messages)
    env = {**os.environ, "KSER_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           "KSER_STORE_URL": f"sqlite:///{scratch('kser-bench-')}/unused.db"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "kser.cli", "worker", "benchmarks.tasks:registry",
         "--topic", topic, "--group", group, "--transport", transport,
         "--bootstrap-servers", bootstrap], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples, started = [], time.monotonic()
    try:
        done = 0
        while done < messages:
            time.sleep(0.5)
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {worker.stderr.read().decode()[-2000:]}")
            done = committed(bootstrap, group, topic, partitions)
            samples.append((round(time.monotonic() - started, 2), done, rss_kib(worker.pid)))
    finally:
        worker.terminate()
        worker.wait(60)
    elapsed = time.monotonic() - started
    return dict(transport=transport, messages=messages, seconds=round(elapsed, 1),
                messages_per_second=round(messages / elapsed), **growth(samples, messages),
                samples=samples)


def growth(samples: list, messages: int) -> dict:
    """RSS growth after warm-up: the peak after it against the peak during it.

    A client's fetch buffers make RSS swing by several MiB between samples; a
    peak compared with one sample taken in a trough reported that swing as
    growth (17% on a flat kafka-python run), so peaks are compared with peaks.
    """
    warming = [s[2] for s in samples if s[1] < messages * WARM_UP] or [samples[0][2]]
    warm = [s[2] for s in samples if s[1] >= messages * WARM_UP]
    base, peak = max(warming), max(warm)
    return dict(rss_after_warm_up_kib=warm[0], rss_peak_during_warm_up_kib=base,
                rss_peak_after_warm_up_kib=peak, rss_final_kib=samples[-1][2],
                growth_percent=round(100 * (peak - base) / base, 1))


@contextmanager
def kafka_bootstrap():
    """``KSER_BOOTSTRAP_SERVERS``, or a local broker (scripts/kafka-local) for the block."""
    if os.environ.get("KSER_BOOTSTRAP_SERVERS"):
        yield os.environ["KSER_BOOTSTRAP_SERVERS"]
        return
    from kafka_local import KafkaBroker

    broker = KafkaBroker(scratch("kser-bench-kafka-")).start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--transport", choices=["kafka", "confluent"], default="kafka")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    with kafka_bootstrap() as bootstrap:
        result = run(bootstrap, args.messages, args.transport)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory-{args.transport}.json").write_text(json.dumps(result, indent=1))
    print(f"{result['messages']} messages, {result['transport']}: {result['seconds']} s "
          f"({result['messages_per_second']}/s); RSS peak during warm-up "
          f"{result['rss_peak_during_warm_up_kib'] / 1024:.1f} MiB, peak after "
          f"{result['rss_peak_after_warm_up_kib'] / 1024:.1f} MiB, final "
          f"{result['rss_final_kib'] / 1024:.1f} MiB: growth {result['growth_percent']}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
