"""One Settings object, passed down from the registry (or the worker) to every part, and
read from the environment when first needed, not when kser is imported."""

import pytest

from kser.config import Settings
from kser.crypto import MAGIC, new_key
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry


def test_a_registry_made_at_import_reads_the_environment_when_first_used(monkeypatch):
    monkeypatch.delenv("KSER_TOPIC", raising=False)
    registry = OperationRegistry()  # as a module does at import
    monkeypatch.setenv("KSER_TOPIC", "set-after-import")
    monkeypatch.setenv("KSER_TASK_LEASE", "7")
    assert registry.settings.topic == "set-after-import"
    assert registry.sequencer.settings.task_lease == 7


def test_one_settings_object_configures_every_part_of_a_registry():
    settings = Settings(transport="memory", topic="t", task_lease=5)
    registry = OperationRegistry(settings=settings)
    assert registry.settings is settings
    assert registry.sequencer.settings is settings
    assert registry.controller.settings is settings
    assert registry._get_producer().settings is settings
    registry.configure(topic="other")  # a change is seen everywhere
    assert registry.sequencer.settings.topic == "other"


def test_a_producer_seals_with_the_keys_of_the_settings_it_is_given(monkeypatch):
    monkeypatch.delenv("KSER_SECRET_KEYS", raising=False)
    producer = Producer({"broker": "settings-test", "settings": Settings(secret_keys=new_key())})
    _, value = producer.encode(Message("u", "a.B"))
    assert value.startswith(MAGIC)
    plain = Producer({"broker": "settings-test"})  # none given: the environment's (none)
    assert not plain.encode(Message("u", "a.B"))[1].startswith(MAGIC)


def test_a_controller_opens_with_the_keys_of_its_registry():
    key = new_key()
    registry = OperationRegistry(settings=Settings(secret_keys=key))
    sealed = Producer({"settings": Settings(secret_keys=key)}).encode(Message("u", "a.B"))[1]
    result = registry.controller.run(sealed)
    assert "is not registered" in result.stderr  # opened and decoded: only unknown


def test_a_bad_key_in_given_settings_is_refused_when_the_producer_is_made():
    from cdumay_error.types import ConfigurationError

    with pytest.raises(ConfigurationError, match="KSER_SECRET_KEYS key #1 has 3 bytes"):
        Producer({"settings": Settings(secret_keys="AAAA")})


@pytest.mark.parametrize("value, error", [
    ("70000", "KSER_METRICS_PORT=70000 is not a port number (0 to 65535)"),
    ("-1", "KSER_METRICS_PORT=-1 is not a port number (0 to 65535)"),
    ("http", "KSER_METRICS_PORT='http' is not an integer (default 0)"),
])
def test_a_metrics_port_that_is_no_port_is_refused_naming_the_variable(monkeypatch, value,
                                                                       error):
    from cdumay_error.types import ConfigurationError

    monkeypatch.setenv("KSER_METRICS_PORT", value)
    with pytest.raises(ConfigurationError) as raised:
        Settings()
    assert raised.value.message == error
