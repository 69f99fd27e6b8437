"""The Celery side of benchmarks/sequencing.py (runs in its own venv, Celery 5 + Redis).

A chain of no-op tasks, each recording when its body started and ended, as
benchmarks.tasks.Timed does for kser. Settings come from the environment:
BENCH_REDIS_URL, BENCH_TIMES_DIR (one ``<pid>.tsv`` per worker process), BENCH_SLEEP
(seconds each task sleeps; default 0).

    python celery_chain.py send BULK|ONE COUNT HOPS   # send chains (ONE: one at a time)
"""

import os
import sys
import time
import uuid

from celery import Celery, chain

app = Celery("celery_chain", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1/0"))
app.conf.update(
    task_acks_late=True,           # acknowledged after the task ran, as kser commits
    task_ignore_result=True,       # chains need no result backend
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
TIMES_DIR = os.environ.get("BENCH_TIMES_DIR", "/tmp")
_times = None


def _log(line: str) -> None:
    global _times
    if _times is None:  # line-buffered: a sender can see the chain's last line at once
        _times = open(os.path.join(TIMES_DIR, f"{os.getpid()}.tsv"), "a", buffering=1)
    _times.write(line)


SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))


@app.task(name="noop")
def noop(previous, chain_id, position):
    started = time.time()
    if SLEEP:  # an I/O-bound task
        time.sleep(SLEEP)
    result = dict(chain=chain_id, position=position)
    _log(f"{chain_id}\t{position}\t{started}\t{time.time()}\n")
    return result


def finished(chain_id: str, hops: int) -> bool:
    needle = f"{chain_id}\t{hops - 1}\t"
    for name in os.listdir(TIMES_DIR):
        with open(os.path.join(TIMES_DIR, name)) as times:
            if needle in times.read():
                return True
    return False


def send(mode: str, count: int, hops: int) -> None:
    for _ in range(count):
        chain_id = uuid.uuid4().hex
        signatures = [noop.s(None, chain_id, 0)] + [noop.s(chain_id, i) for i in range(1, hops)]
        chain(*signatures).apply_async()
        print(chain_id, flush=True)
        if mode == "ONE":
            deadline = time.monotonic() + 60
            while not finished(chain_id, hops):
                if time.monotonic() > deadline:
                    sys.exit(f"chain {chain_id} did not finish within 60 s")
                time.sleep(0.005)


if __name__ == "__main__":
    send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
