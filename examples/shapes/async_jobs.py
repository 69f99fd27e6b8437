"""Wait on many jobs of an HTTP job server at once with ``async def`` task bodies: one
worker, one task thread, on the embedded default (no broker).

    python examples/shapes/async_jobs.py

A small Flask app stands in for a job server: ``POST /jobs`` starts a job that runs
for 3 s, ``GET /jobs/<id>`` says whether it is running or done. Each of 200
operations starts a job and then polls it every 0.5 s until it is done, both tasks
``async def`` (httpx's async client): while they wait, they hold no thread, so the
one task thread of the worker keeps them all going at once: the run takes seconds,
not the ten minutes of 200 jobs one after the other.
"""

import asyncio
import logging
import sys
import tempfile
import threading
import time

import httpx
from cdumay_result import Result
from flask import Flask, jsonify
from werkzeug.serving import make_server

from kser import Operation, OperationRegistry, Store, Task
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()
JOBS, JOB_SECONDS = 200, 3.0

# -- the job server ------------------------------------------------------------------

jobs: dict[int, float] = {}
server_app = Flask("job-server")
lock = threading.Lock()


@server_app.post("/jobs")
def start_job():
    with lock:
        job_id = len(jobs) + 1
        jobs[job_id] = time.time() + JOB_SECONDS
    return jsonify(id=job_id), 201


@server_app.get("/jobs/<int:job_id>")
def job_state(job_id):
    return jsonify(state="running" if time.time() < jobs[job_id] else "done")


# -- the operation --------------------------------------------------------------------

#: job waits going on now, and the most at once
waiting = {"now": 0, "most": 0}


class JobTask(Task):
    MAX_RETRIES = 3  # the job server refused a connection: tried again
    RETRY_ON = (httpx.TransportError,)
    RETRY_MIN_BACKOFF, RETRY_MAX_BACKOFF = 0.2, 1.0


@registry.subscribe
class StartJob(JobTask):
    async def run(self):
        async with httpx.AsyncClient(base_url=self.params["server"]) as http:
            job = (await http.post("/jobs")).json()
        return Result(uuid=self.uuid, retval={"job": job["id"]})


@registry.subscribe
class WaitForJob(JobTask):
    TIME_LIMIT = 60  # seconds: the coroutine is cancelled after that

    async def run(self):
        job = self.result.retval["job"]
        waiting["now"] += 1  # (every body runs on the worker's one event loop)
        waiting["most"] = max(waiting["most"], waiting["now"])
        try:
            async with httpx.AsyncClient(base_url=self.params["server"]) as http:
                while (await http.get(f"/jobs/{job}")).json()["state"] != "done":
                    await asyncio.sleep(0.5)
        finally:
            waiting["now"] -= 1
        return Result(uuid=self.uuid, stdout=f"job {job} done")


@registry.subscribe
class RunJob(Operation):
    REQUIRED_FIELDS = ("server",)

    def build_tasks(self, server, **kwargs):
        return [StartJob(name="start", params={"server": server}),
                WaitForJob(name="wait", params={"server": server})]


def main():
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    http = make_server("127.0.0.1", 0, server_app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{http.server_port}"
    with tempfile.TemporaryDirectory(prefix="kser-example-") as folder:
        store = Store(f"sqlite:///{folder}/kser.db")
        registry.configure(store=store, producer=Producer({"broker": "jobs"}), topic="jobs")
        worker = Consumer({"broker": "jobs", "group_id": "workers"}, ["jobs"])
        worker.controller = registry.controller
        thread = threading.Thread(target=worker.run, kwargs=dict(until_idle=False))
        thread.start()
        try:
            started = time.monotonic()
            operations = [RunJob(params={"server": server}).send() for _ in range(JOBS)]
            results = [registry.wait(op.uuid, timeout=120) for op in operations]
            took = time.monotonic() - started
            done = sum(result.retcode == 0 for result in results)
            print(f"{done} of {JOBS} jobs of {JOB_SECONDS:g} s done in {took:.1f} s, on "
                  f"{worker.settings.concurrency} task thread; at most {waiting['most']} "
                  "job waits at once")
        finally:
            worker.stop()
            thread.join(30)
            store.close()
            http.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
