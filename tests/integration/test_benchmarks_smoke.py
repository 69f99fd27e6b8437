"""The benchmark harness keeps working: a tiny run in CI (figures are not checked)."""

import json
import os
import subprocess
import sys

import pytest

from tests.infra import ROOT

pytestmark = pytest.mark.integration


def test_memory_benchmark_smoke(kafka, tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--messages", "600", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "memory-kafka.json").read_text())
    assert result["messages"] == 600 and result["samples"]
    assert result["samples"][-1][1] == 600  # every message committed
    assert "600 messages, kafka" in done.stdout


def test_dispatch_benchmark_smoke(kafka, tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/dispatch.py", "--messages", "500", "--runs", "1",
         "--only", "kser (kafka-python)", "--only", "bare kafka-python loop",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "dispatch.json").read_text())
    assert set(result["results"]) == {"kser (kafka-python)", "bare kafka-python loop"}
    assert all(data["median"] > 0 for data in result["results"].values())
