"""The Temporal side of benchmarks/sequencing.py (runs in its own venv with temporalio).

A workflow of no-op activities run one after the other, each activity recording when
its body started and ended, as benchmarks.tasks.Timed does for kser and
celery_chain.py for Celery. Settings come from the environment: BENCH_TEMPORAL
(host:port of the server), BENCH_TIMES_DIR (one ``<pid>.tsv`` per worker process),
BENCH_SLEEP (seconds each activity sleeps; default 0).

    python temporal_chain.py worker                     # a worker process
    python temporal_chain.py send BULK|ONE COUNT HOPS   # start workflows (ONE: one at a time)
"""

import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "bench"
_times = None


def _log(line: str) -> None:
    global _times
    if _times is None:  # line-buffered: a sender can see the chain's last line at once
        directory = os.environ.get("BENCH_TIMES_DIR", "/tmp")
        _times = open(os.path.join(directory, f"{os.getpid()}.tsv"), "a", buffering=1)
    _times.write(line)


@activity.defn(name="noop")
async def noop(chain_id: str, position: int) -> None:
    started = time.time()
    sleep = float(os.environ.get("BENCH_SLEEP", "0"))
    if sleep:
        await asyncio.sleep(sleep)
    _log(f"{chain_id}\t{position}\t{started}\t{time.time()}\n")


@workflow.defn(name="Chain")
class Chain:
    @workflow.run
    async def run(self, chain_id: str, hops: int) -> None:
        for position in range(hops):
            await workflow.execute_activity(noop, args=[chain_id, position],
                                            start_to_close_timeout=timedelta(seconds=120))


async def connect() -> Client:
    return await Client.connect(os.environ.get("BENCH_TEMPORAL", "127.0.0.1:7233"))


async def work() -> None:
    client = await connect()
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=[Chain], activities=[noop])
    print("worker ready", flush=True)
    await worker.run()


async def send(mode: str, count: int, hops: int) -> None:
    client = await connect()
    if mode == "ONE":
        for _ in range(count):
            chain_id = uuid.uuid4().hex
            print(chain_id, flush=True)
            await client.execute_workflow(Chain.run, args=[chain_id, hops], id=chain_id,
                                          task_queue=TASK_QUEUE,
                                          execution_timeout=timedelta(seconds=600))
        return
    ids = [uuid.uuid4().hex for _ in range(count)]
    for start in range(0, count, 100):  # started at once, 100 requests in flight
        await asyncio.gather(*(client.start_workflow(
            Chain.run, args=[chain_id, hops], id=chain_id, task_queue=TASK_QUEUE)
            for chain_id in ids[start:start + 100]))
    for chain_id in ids:
        print(chain_id, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        asyncio.run(work())
    else:
        asyncio.run(send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
