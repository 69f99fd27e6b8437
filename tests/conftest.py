"""Shared fixtures. Those of real infrastructure (Kafka, PostgreSQL, processes) are in
tests/infra.py and only start when a test asks for them."""

import itertools
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

#: what tests, examples and benchmarks name their temporary folders and files
_LEFTOVER_PATTERN = "kser-*"
_session: dict = {}


def pytest_configure(config):
    """A store folder for the session (registries made when test modules are imported
    read KSER_STORE_URL: never the working directory), and what the temp folder held."""
    if "folder" in _session:
        return
    _session["folder"] = tempfile.mkdtemp(prefix=f"kser-tests-{os.getpid()}-")
    os.environ["KSER_STORE_URL"] = f"sqlite:///{_session['folder']}/kser.db"
    _session["before"] = {str(p) for p in Path(tempfile.gettempdir()).glob(_LEFTOVER_PATTERN)}


def pytest_unconfigure(config):
    shutil.rmtree(_session.get("folder", ""), ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when it left folders or files in the temp folder (each test, example
    and benchmark removes what it made; pytest's own tmp_path folders are pytest's)."""
    left = sorted(str(p) for p in Path(tempfile.gettempdir()).glob(_LEFTOVER_PATTERN)
                  if str(p) not in _session.get("before", ()) and not _other_session(p))
    if left and exitstatus == 0 and os.environ.get("KSER_CHECK_LEFTOVERS", "1") == "1":
        def holds(path: str) -> str:
            return ", ".join(sorted(os.listdir(path))[:5]) if os.path.isdir(path) else "file"

        print(f"\nthe tests left {len(left)} item(s) in {tempfile.gettempdir()}: "
              + "; ".join(f"{p} ({holds(p)})" for p in left[:10]))
        session.exitstatus = 1


def _other_session(path: Path) -> bool:
    """The store folder of another test session still running (two runs at once)."""
    match = re.fullmatch(r"kser-tests-(\d+)-.*", path.name)
    if match is None or int(match[1]) == os.getpid():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False  # its session died: what it left is a leftover
    except PermissionError:
        pass
    return True


from kser.memory.broker import drop_broker  # noqa: E402

_names = itertools.count()


@pytest.fixture
def memory_broker_name():
    """A fresh in-process broker name, dropped after the test."""
    name = f"test-{next(_names)}"
    yield name
    drop_broker(name)


@pytest.fixture
def spans():
    """The spans finished during the test (the OpenTelemetry SDK's in-memory exporter,
    set as the process's tracer provider at first use: kser's spans are on from then)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    global _exporter
    if _exporter is None:
        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


_exporter = None

from tests.infra import (  # noqa: E402
    kafka,
    kafka_cluster,
    kafka_sasl,
    pg_url,
    postgres,
    processes,
    store_url,
    topic,
)

__all__ = ["kafka", "kafka_cluster", "kafka_sasl", "pg_url", "postgres", "processes",
           "store_url", "topic"]


def pytest_terminal_summary(terminalreporter):
    """The pauses the cluster tests measured (docs/reliability.md's fault table)."""
    import sys

    cluster = sys.modules.get("tests.acceptance.cluster")
    if cluster is None or not cluster.PAUSES:
        return
    terminalreporter.section("Kafka cluster faults: longest time no task ended")
    for fault, transport, pause in cluster.PAUSES:
        terminalreporter.write_line(f"{pause:6.1f} s  {transport:9}  {fault}")
