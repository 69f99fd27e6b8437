"""Shared fixtures. The broker and database fixtures live in tests/integration."""

import itertools

import pytest

from kser.memory.broker import drop_broker

_names = itertools.count()


@pytest.fixture
def memory_broker_name():
    """A fresh in-process broker name, dropped after the test."""
    name = f"test-{next(_names)}"
    yield name
    drop_broker(name)
