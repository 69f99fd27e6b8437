"""Topics of the in-process broker."""

from __future__ import annotations

from typing import Any

from kser.memory.broker import get_broker
from kser.topics import PartitionInfo, TopicAdmin, TopicInfo


class Admin(TopicAdmin):
    """:param config: ``{"broker": NAME}`` (default ``"default"``)"""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.broker = get_broker((config or {}).get("broker", "default"))

    def _existing(self, topics: list[str]) -> set[str]:
        return {topic for topic in topics if self.broker.has_topic(topic)}

    def _brokers(self) -> int:
        return 1

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        return {}  # one process: nothing to replicate

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        for topic in topics:
            self.broker.create_topic(topic, partitions)

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        return [TopicInfo(topic, [
            PartitionInfo(partition, None, [], end, self.broker.committed(group, (topic, partition))
                          if group else None)
            for partition, end in enumerate(self.broker.partition_ends(topic))], group)
            for topic in topics]
