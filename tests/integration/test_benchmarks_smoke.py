"""The benchmark harness keeps working: a tiny run in CI (figures are not checked)."""

import json
import os
import subprocess
import sys

import pytest

from tests.infra import ROOT

pytestmark = pytest.mark.integration


def test_every_benchmark_runs_with_tiny_sizes(kafka, tmp_path):
    """benchmarks/run_all.py --smoke: dispatch (kser 0.8.27 and the bare loop included),
    memory on both clients, sequencing on SQLite and PostgreSQL against Celery on Redis
    (no-op tasks, and sleeping tasks on threads), scaling, plots and the tables of
    docs/benchmarks.md. (Temporal is left out: its CLI takes minutes to build.)"""
    done = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    dispatch = json.loads((tmp_path / "dispatch.json").read_text())
    assert set(dispatch["results"]) == {"kser (kafka-python)", "kser (confluent-kafka)",
                                        "kser 0.8.27", "bare kafka-python loop"}
    assert all(data["median"] > 0 for data in dispatch["results"].values())
    for transport in ("kafka", "confluent"):
        memory = json.loads((tmp_path / f"memory-{transport}.json").read_text())
        assert memory["samples"][-1][1] == 600  # every message committed
    sequencing = json.loads((tmp_path / "sequencing.json").read_text())["results"]
    fanouts = {"fanout (sqlite, 1 worker, concurrency 3)",
               "fanout (postgresql, 1 worker, concurrency 3)"}
    floors = {"physical floor (sqlite)", "physical floor (postgresql)"}
    names = set(sequencing)
    io = ", 1 worker, 2 threads each, 10 ms tasks"
    assert {"kser (confluent), sqlite, 1 worker", "kser (confluent), postgresql, 1 worker",
            "Celery 5.7.0 chain, Redis, 1 worker", f"kser (confluent), sqlite{io}",
            f"kser (confluent), postgresql{io}", f"Celery 5.7.0 chain, Redis{io}",
            "scaling (kser, sqlite, 1 worker)", *fanouts, *floors,
            *(f"kser (confluent), {store}, 1 worker, async def tasks awaiting 10 ms"
              for store in ("sqlite", "postgresql"))} == names
    for name in floors:  # a durable commit, then a Kafka round trip
        floor = sequencing[name]["hop"]
        assert 0 < floor["commit_p50_ms"] < floor["floor_p50_ms"], floor
        assert 0 < floor["kafka_round_trip_p50_ms"] < floor["floor_p50_ms"], floor
    names -= floors
    for name in fanouts:  # a 3-wide group and a chain of the same three sleeping tasks
        group, chain = sequencing[name]["3-wide group"], sequencing[name]["3 tasks in a chain"]
        assert group["operations"] == chain["operations"] == 10
        assert group["wall_p50_s"] > 0.2 and chain["wall_p50_s"] > 0.6
    for name in names - {"scaling (kser, sqlite, 1 worker)", *fanouts}:  # (floors left)
        assert sequencing[name]["bulk"]["task_runs"] == 10 * 10  # every task ran once
        assert sequencing[name]["unloaded"]["task_runs"] == 2 * 10
        assert sequencing[name]["bulk"]["worker_cpu_ms_per_task_run"] > 0
    for name in {n for n in names if n.startswith("kser (confluent), postgresql")}:
        for kind in ("bulk", "unloaded"):  # kser's statements, counted by the server
            figures = sequencing[name][kind]
            assert 1 < figures["pg_statements_per_task_run"] < figures[
                "pg_calls_per_task_run"], (name, kind)
            assert figures["pg_exec_ms_per_task_run"] > 0
            assert any("kser_tasks" in top["query"] for top in figures["pg_top_statements"])
    assert set(sequencing["scaling (kser, sqlite, 1 worker)"]) == {"10", "20"}
    for image in ("hop-latency.png", "throughput.png", "scaling.png"):
        assert (tmp_path / "img" / image).stat().st_size > 1000
    tables = (tmp_path / "benchmarks.md").read_text()
    assert "### Sequencing" in tables and "### Dispatch" in tables
    assert "### The physical floor of a hop" in tables
    assert "### Parallel group" in tables


def test_the_replication_benchmark_runs_with_tiny_sizes(tmp_path):
    """benchmarks/replication.py: one broker against three, one round (its own brokers)."""
    done = subprocess.run(
        [sys.executable, "benchmarks/replication.py", "--operations", "5", "--hops", "3",
         "--unloaded", "2", "--rounds", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    runs = json.loads((tmp_path / "replication.json").read_text())["runs"]
    assert [len(results) for results in runs.values()] == [1, 1]
    assert all(r["task_runs_per_second"] > 0 for results in runs.values() for r in results)
