"""Producer of the in-process transport."""

from __future__ import annotations

from kser.controller import DEFAULT_MAX_MESSAGE_BYTES, BaseProducer
from kser.memory.broker import get_broker


class Producer(BaseProducer):
    """Appends records to the named in-process broker; acknowledged at once.

    :param config: ``{"broker": NAME}`` (default ``"default"``), optional
        ``"max_message_bytes"``
    """

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        super().__init__(config.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        self.broker = get_broker(config.get("broker", "default"))

    def _produce(self, topic, value, key, headers=None, on_delivery=None) -> None:
        self.broker.produce(topic, value, key, headers)
        if on_delivery is not None:
            on_delivery(None)

    def _flush(self, timeout: float) -> None:
        """Nothing to wait for: a record is stored as soon as it is produced."""
