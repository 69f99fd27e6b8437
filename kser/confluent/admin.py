"""Topics on confluent-kafka: an ``AdminClient`` of its own."""

from __future__ import annotations

from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from kser.confluent import CONSUMER_ONLY_KEYS
from kser.topics import PartitionInfo, TopicAdmin, TopicInfo


class Admin(TopicAdmin):
    """:param config: librdkafka connection settings (those of any client of kser)"""

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = AdminClient({key: value for key, value in config.items()
                                   if key not in CONSUMER_ONLY_KEYS})

    def _existing(self, topics: list[str]) -> set[str]:
        return set(self.client.list_topics(timeout=self.timeout).topics) & set(topics)

    def _brokers(self) -> int:
        return len(self.client.list_topics(timeout=self.timeout).brokers)

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        futures = self.client.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor,
                      config=configs)
             for topic in topics], request_timeout=self.timeout)
        for future in futures.values():
            try:
                future.result(timeout=self.timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise  # else: created meanwhile by another worker

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        metadata = self.client.list_topics(timeout=self.timeout).topics
        infos = [TopicInfo(topic, sorted(
            (PartitionInfo(p.id, p.leader, list(p.replicas), isr=list(p.isrs))
             for p in metadata[topic].partitions.values()), key=lambda p: p.partition), group)
            for topic in topics]
        tps = [TopicPartition(i.name, p.partition) for i in infos for p in i.partitions]
        latest = self.client.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                          request_timeout=self.timeout)
        ends = {(tp.topic, tp.partition): future.result(timeout=self.timeout).offset
                for tp, future in latest.items()}
        committed: dict[tuple[str, int], int] = {}
        owners: dict[tuple[str, int], str] = {}
        subscribed: dict[str, set[str]] = {}
        if group:
            request = [ConsumerGroupTopicPartitions(group, tps)]
            answer = self.client.list_consumer_group_offsets(
                request, request_timeout=self.timeout)[group].result(timeout=self.timeout)
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in answer.topic_partitions if tp.offset >= 0}
            described = self.client.describe_consumer_groups(
                [group], request_timeout=self.timeout)[group].result(timeout=self.timeout)
            for member in described.members:
                assigned = member.assignment.topic_partitions if member.assignment else []
                for tp in assigned:
                    owners[(tp.topic, tp.partition)] = member.client_id
                    subscribed.setdefault(tp.topic, set()).add(member.member_id)
        for info in infos:
            if group:
                # librdkafka reports assignments, not subscriptions: members owning some
                info.members = len(subscribed.get(info.name, ()))
            for part in info.partitions:
                key = (info.name, part.partition)
                part.end_offset, part.committed = ends.get(key), committed.get(key)
                part.owner = owners.get(key)
        return infos

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        futures = self.client.describe_configs(
            [ConfigResource(ResourceType.TOPIC, topic) for topic in topics],
            request_timeout=self.timeout)
        found = {}
        for resource, future in futures.items():
            entry = future.result(timeout=self.timeout).get("min.insync.replicas")
            if entry is not None:
                found[resource.name] = int(entry.value)
        return found
