"""Producer of the in-process transport."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kser.memory.admin import Admin
from kser.memory.broker import get_broker
from kser.producer import BaseProducer


class Producer(BaseProducer):
    """Appends records to the named in-process broker; acknowledged at once.

    :param config: ``{"broker": NAME}`` (default ``"default"``), and kser's own
        producer options (``Settings.producer_options()``)
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        super().__init__(**self.take_options(config))
        self.broker = get_broker(config.get("broker", "default"))

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        self.broker.produce(topic, value, key, headers)
        if on_delivery is not None:
            on_delivery(None)

    def _new_admin(self) -> Admin:
        return Admin({"broker": self.broker.name}, **self._admin_options())

    def _flush(self, timeout: float) -> None:
        """Nothing to wait for: a record is stored as soon as it is produced."""
