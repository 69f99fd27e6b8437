"""Consumer of the in-process transport."""

from __future__ import annotations

from typing import Any

from kser.memory.admin import Admin
from kser.memory.broker import get_broker
from kser.memory.producer import Producer
from kser.record import Record, TopicPartition
from kser.worker import BaseConsumer


class Consumer(BaseConsumer):
    """A member of a consumer group of the named in-process broker.

    :param config: ``{"broker": NAME, "group_id": GROUP}`` (defaults ``"default"``, ``"kser"``)
    :param topics: topics to consume
    """

    def __init__(self, config: dict[str, Any] | None, topics: list[str] | str,
                 **kwargs: Any) -> None:
        super().__init__(config or {}, topics, **kwargs)
        self.broker = get_broker(self.config.get("broker", "default"))
        self.group = self.config.get("group_id", "kser")
        self._positions: dict[TopicPartition, int] = {}
        self._generation = -1
        self._fetch_paused = False
        for topic in self.topics:  # (what a worker creates at start, with KSER_PARTITIONS)
            self.broker.create_topic(topic, self.settings.partitions)
        self.broker.join(self.group, self, self.topics)

    def run(self, until_idle: bool = True) -> None:
        """Consume; with ``until_idle`` (default) return once the topics are drained."""
        super().run(until_idle)

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        seen = self.broker.produced
        generation = self.broker.generation(self.group)
        if generation != self._generation:  # a rebalance: restart from committed offsets
            self._generation, self._positions = generation, {}
        records: list[Record] = []
        if self._fetch_paused:
            return records
        for tp in self.broker.assignment(self.group, self, self.topics):
            position = self._positions.setdefault(tp, self.broker.committed(self.group, tp))
            fetched = self.broker.fetch(tp, position, max_records - len(records))
            self._positions[tp] = position + len(fetched)
            records.extend(fetched)
            if len(records) >= max_records:
                break
        if not records and not self.until_idle:
            self.broker.wait_for_records(seen, timeout, self._stopping)
        return records

    def stop(self) -> None:
        super().stop()
        self.broker.wake()  # (a poll waiting for records returns at once)

    def _log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {(topic, partition): self.broker.partition_ends(topic)[partition]
                for topic, partition in partitions}

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.broker.commit(self.group, offsets)

    def _pause(self) -> None:
        self._fetch_paused = True

    def _resume(self) -> None:
        self._fetch_paused = False

    def _close(self) -> None:
        self.broker.leave(self.group, self)

    def _new_admin(self) -> Admin:
        return Admin({"broker": self.broker.name}, **self._admin_options())

    def _new_producer(self) -> Producer:
        return Producer({"broker": self.broker.name, **self._producer_options()})
