"""Shared fixtures. Those of real infrastructure (Kafka, PostgreSQL, processes) are in
tests/infra.py and only start when a test asks for them."""

import itertools
import os
import tempfile
from pathlib import Path

import pytest

# registries created at import time read KSER_STORE_URL then: never the working directory
_STORE_FOLDER = tempfile.TemporaryDirectory(prefix="kser-tests-")
os.environ["KSER_STORE_URL"] = f"sqlite:///{_STORE_FOLDER.name}/kser.db"

#: what tests, examples and benchmarks name their temporary folders and files
_LEFTOVER_PATTERN = "kser-*"
_before: set[str] = set()


def pytest_sessionstart(session):
    _before.update(str(p) for p in Path(tempfile.gettempdir()).glob(_LEFTOVER_PATTERN))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when it left folders or files in the temp folder (each test, example
    and benchmark removes what it made; pytest's own tmp_path folders are pytest's)."""
    # (the session's own store folder is removed at exit, once every thread of the
    # session is gone: one still running may open the store again until then)
    left = sorted(str(p) for p in Path(tempfile.gettempdir()).glob(_LEFTOVER_PATTERN)
                  if str(p) not in _before and str(p) != _STORE_FOLDER.name)
    if left and exitstatus == 0 and os.environ.get("KSER_CHECK_LEFTOVERS", "1") == "1":
        print(f"\nthe tests left {len(left)} item(s) in {tempfile.gettempdir()}: "
              + ", ".join(left[:10]))
        session.exitstatus = 1

from kser.memory.broker import drop_broker  # noqa: E402

_names = itertools.count()


@pytest.fixture
def memory_broker_name():
    """A fresh in-process broker name, dropped after the test."""
    name = f"test-{next(_names)}"
    yield name
    drop_broker(name)


from tests.infra import (  # noqa: E402
    kafka,
    kafka_sasl,
    pg_url,
    postgres,
    processes,
    store_url,
    topic,
)

__all__ = ["kafka", "kafka_sasl", "pg_url", "postgres", "processes", "store_url", "topic"]
