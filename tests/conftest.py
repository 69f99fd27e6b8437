"""Shared fixtures. Those of real infrastructure (Kafka, PostgreSQL, processes) are in
tests/infra.py and only start when a test asks for them."""

import itertools
import os
import tempfile

import pytest

# registries created at import time read KSER_STORE_URL then: never the working directory
os.environ["KSER_STORE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='kser-tests-')}/kser.db"

from kser.memory.broker import drop_broker

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
