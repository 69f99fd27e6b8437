"""The runnable examples of the docs run and say what the docs say."""

import re
import subprocess
import sys

from tests.infra import ROOT, WAIT


def test_operations_controls_example():
    done = subprocess.run([sys.executable, "examples/operations/controls.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Transform failed: __main__.Etl is FAILED" in out
    assert "upstream service unavailable" in out
    assert "Recovered: __main__.Etl is SUCCESS" in out
    assert "__main__.Transform           SUCCESS  attempt 2  sorted [1, 2, 3]" in out
    assert "Load run once more: __main__.Etl is SUCCESS" in out
    assert "Canceled before it ran: __main__.Etl is CANCELED" in out
    assert "purged 1 finished operation(s)" in out
    assert "exit notifications on etl.done: 4" in out


def _run(example):
    done = subprocess.run([sys.executable, example], cwd=ROOT, capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_shapes_parallel_example():
    out = _run("examples/shapes/parallel.py")
    assert "Nightly is SUCCESS in " in out and "NightlyDag is SUCCESS in " in out
    assert out.count("publish  SUCCESS  published ['csv', 'html', 'pdf'] (csv: csv rendered, "
                     "html: html rendered, pdf: pdf rendered)") == 2


def test_shapes_branching_example():
    out = _run("examples/shapes/branching.py")
    assert "500 files: the full road: SUCCESS" in out
    assert "delta    SKIPPED  not chosen by the branch before it (it chose full)" in out
    assert "cleanup  SKIPPED  skipped: nothing arrived, nothing to clean" in out
    assert "a broken full load: FAILED" in out
    assert "page     FAILED   paged someone: ['full', 'publish'] failed" in out
    assert out.count("close    SUCCESS  import closed") == 4


def test_shapes_job_server_example():
    out = _run("examples/shapes/job_server.py")
    assert "a job that succeeds: the operation is SUCCESS (job 1 done: report sent)" in out
    assert "a job that fails: the operation is FAILED (RuntimeError: job 2 failed on the " \
           "job server)" in out
    assert "report  FAILED" in out and "upstream failed" in out
    assert "wait    SUCCESS after " in out


def test_shapes_sub_operations_example():
    out = _run("examples/shapes/sub_operations.py")
    assert "Nightly is SUCCESS: europe loaded, americas loaded, " in out
    assert out.count("(in child ") == 4
    assert "archive   SUCCESS  archived" in out
    assert "space     SUCCESS  shutil:disk_usage returned" in out


def test_shapes_async_jobs_example():
    out = _run("examples/shapes/async_jobs.py")
    done, took, most = re.search(r"(\d+) of 200 jobs of 3 s done in ([\d.]+) s, on 1 task "
                                 r"thread; at most (\d+) job waits at once", out).groups()
    assert int(done) == 200
    assert int(most) > 50  # waiting together, on one thread
    assert float(took) < 120  # (one after the other: 600 s)
