"""Start a job on a job server, wait for it, then go on or fail: the shapes of a job
control flow, on the embedded default (no broker).

    python examples/shapes/job_server.py

A small Flask app stands in for a job server (a KNIME server, a cluster's
scheduler): ``POST /jobs`` starts a job, ``GET /jobs/<id>`` says whether it is
running, done or failed. The operation starts a job with an ``HttpTask``,
waits for it with a ``Sensor`` (a poke every half second, holding nothing in
between), then reports; a job that fails fails the operation, and the report
never runs.
"""

import logging
import sys
import tempfile
import threading
import time

import requests
from cdumay_result import Result
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from kser import HttpTask, Operation, OperationRegistry, Sensor, Store, Task
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()

# -- the job server ------------------------------------------------------------------

jobs: dict[int, dict] = {}
server_app = Flask("job-server")


@server_app.post("/jobs")
def start_job():
    job_id = len(jobs) + 1
    jobs[job_id] = dict(done_at=time.time() + 1.5, fail=bool(request.json.get("fail")))
    return jsonify(id=job_id), 201


@server_app.get("/jobs/<int:job_id>")
def job_state(job_id):
    job = jobs[job_id]
    if time.time() < job["done_at"]:
        return jsonify(state="running")
    return jsonify(state="failed" if job["fail"] else "done")


# -- the operation --------------------------------------------------------------------


@registry.subscribe
class JobDone(Sensor):
    """Waits for the job the task before it started."""

    POKE_INTERVAL = 0.5
    TIMEOUT = 30

    def poke(self):
        job_id = self.result.retval["json"]["id"]  # what the HttpTask before it returned
        state = requests.get(f"{self.params['server']}/jobs/{job_id}", timeout=5).json()["state"]
        if state == "failed":
            raise RuntimeError(f"job {job_id} failed on the job server")
        return state == "done"


@registry.subscribe
class Report(Task):
    def run(self):
        job_id = self.result.retval["json"]["id"]
        return Result(uuid=self.uuid, stdout=f"job {job_id} done: report sent")


@registry.subscribe
class RunJob(Operation):
    REQUIRED_FIELDS = ("server",)

    def build_tasks(self, server, fail=False, **kwargs):
        return [HttpTask("POST", f"{server}/jobs", json={"fail": fail}, name="start"),
                JobDone(name="wait", params={"server": server}),
                Report(name="report")]


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
            for fail in (False, True):
                operation = RunJob(params={"server": server, "fail": fail}).send()
                result = registry.wait(operation.uuid, timeout=60)
                with registry.store.transaction() as tx:
                    op, tasks = tx.operation(operation.uuid), tx.get_tasks(operation.uuid)
                said = result.stderr if result.retcode >= 300 else result.stdout
                print(f"\na job that {'fails' if fail else 'succeeds'}: the operation is "
                      f"{op.status} ({said.splitlines()[-1]})")
                for task in tasks:
                    said = (task.result or {}).get(
                        "stderr" if task.status == "FAILED" else "stdout") or ""
                    state = task.status + (f" after {task.pokes} unmet poke(s)"
                                           if task.pokes else "")
                    print(f"  {task.name:<7} {state:<32} {said.splitlines()[0]}")
        finally:
            worker.stop()
            thread.join(30)
            store.close()
            http.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
