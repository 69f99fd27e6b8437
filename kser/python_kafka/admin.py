"""Topics on kafka-python: a ``KafkaAdminClient``, and a group-less consumer for offsets."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from kser.python_kafka import explained_bootstrap
from kser.topics import PartitionInfo, TopicAdmin, TopicInfo


def _only(config: dict[str, Any], accepted: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items()
            if key in accepted and key != "client_id"}


class Admin(TopicAdmin):
    """:param config: kafka-python connection settings (those of any client of kser)"""

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = dict(config)
        timeout_ms = int(self.timeout * 1000)
        with explained_bootstrap():
            self.client = KafkaAdminClient(**{**_only(self.config, KafkaAdminClient.DEFAULT_CONFIG),
                                              "bootstrap_timeout_ms": timeout_ms,
                                              "request_timeout_ms": max(timeout_ms, 1000)})

    def _existing(self, topics: list[str]) -> set[str]:
        return set(self.client.list_topics()) & set(topics)

    def _brokers(self) -> int:
        return len(self.client.describe_cluster()["brokers"])

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        for topic in topics:
            try:
                self.client.create_topics(
                    {topic: {"num_partitions": partitions,
                             "replication_factor": replication_factor, "configs": configs}},
                    timeout_ms=int(self.timeout * 1000))
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another worker

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        infos = []
        for meta in self.client.describe_topics(topics):
            infos.append(TopicInfo(meta["name"], sorted(
                (PartitionInfo(p["partition_index"], p["leader_id"], list(p["replica_nodes"]),
                               isr=list(p["isr_nodes"]))
                 for p in meta["partitions"]), key=lambda p: p.partition), group))
        tps = [TopicPartition(i.name, p.partition) for i in infos for p in i.partitions]
        consumer = KafkaConsumer(**{**_only(self.config, KafkaConsumer.DEFAULT_CONFIG),
                                    "group_id": None, "enable_auto_commit": False,
                                    "bootstrap_timeout_ms": int(self.timeout * 1000)})
        try:
            ends = self._end_offsets(consumer, tps)
        finally:
            consumer.close()
        committed = {}
        if group:
            committed = self.client.list_group_offsets({group: tps}).get(group, {})
            members = self.client.describe_groups([group]).get(group, {}).get("members", [])
        owners = {(assigned["topic"], partition): member.get("client_id")
                  for member in (members if group else [])
                  for assigned in (member.get("member_assignment") or {}).get(
                      "assigned_partitions", [])
                  for partition in assigned["partitions"]}
        for info in infos:
            if group:
                info.members = sum(1 for m in members
                                   if info.name in _subscribed(m))
            for part in info.partitions:
                part.owner = owners.get((info.name, part.partition))
                tp = TopicPartition(info.name, part.partition)
                part.end_offset = ends.get(tp)
                offset = committed.get(tp)
                part.committed = offset.offset if offset is not None and offset.offset >= 0 \
                    else None
        return infos

    def _end_offsets(self, consumer: KafkaConsumer,
                     tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offsets of ``tps``, once the consumer's metadata knows every partition.

        The admin client may describe a topic that was just created before the broker the
        consumer asks has its metadata; kafka-python's ``end_offsets`` then raises a bare
        ``KeyError``. Refresh and ask again until :attr:`timeout` passes.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return dict(consumer.end_offsets(tps))
            except KeyError as missing:
                tp = missing.args[0] if missing.args else None
                unknown = getattr(tp, "topic", str(tp))
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(
                    f"the brokers' metadata does not list topic {unknown} after "
                    f"{self.timeout:g} s although the controller described it: try again, "
                    "or check that every broker is up")
            time.sleep(0.2)
            consumer.topics()  # a full metadata refresh

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        answer = self.client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})
             for topic in topics], config_filter="all")
        return {topic: int(entries["min.insync.replicas"]["value"])
                for topic, entries in answer.get("topic", {}).items()
                if "min.insync.replicas" in entries}

    def close(self) -> None:
        self.client.close()


def _subscribed(member: dict[str, Any]) -> list[str]:
    """The topics a group member subscribed to, from describe_groups' decoded metadata."""
    metadata = member.get("member_metadata") or {}
    if isinstance(metadata, dict):
        return list(metadata.get("topics") or [])
    return list(getattr(metadata, "topics", None) or [])
