"""A transport written from kser/transport.py's protocols alone runs kser's whole loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cdumay_result import Result

from kser.controller import BaseProducer
from kser.record import Record, TopicPartition
from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.topics import PartitionInfo, TopicAdmin, TopicInfo
from kser.transport import AdminTransport, ConsumerTransport, ProducerTransport
from kser.worker import BaseConsumer

registry = OperationRegistry()
RUNS: list[int] = []


@registry.subscribe
class Count(Task):
    def run(self) -> Result:
        RUNS.append(self.params["n"])
        return Result(uuid=self.uuid, stdout="counted")


class Log:
    """A one-partition log per topic, and one group's committed offsets."""

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes | None, bytes | None, list[Any]]]] = {}
        self.committed: dict[TopicPartition, int] = {}


class ListAdmin(TopicAdmin):
    def __init__(self, log: Log, **options: Any) -> None:
        super().__init__(**options)
        self.log = log

    def _existing(self, topics: list[str]) -> set[str]:
        return {topic for topic in topics if topic in self.log.topics}

    def _brokers(self) -> int:
        return 1

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        for topic in topics:
            self.log.topics.setdefault(topic, [])

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        return {}

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        return [TopicInfo(topic, [PartitionInfo(0, 0, [0])], group) for topic in topics]

    def close(self) -> None:
        pass


class ListProducer(BaseProducer):
    def __init__(self, log: Log, **options: Any) -> None:
        super().__init__(**options)
        self.log = log

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        self.log.topics.setdefault(topic, []).append((key, value, list(headers or [])))
        if on_delivery is not None:
            on_delivery(None)

    def _flush(self, timeout: float) -> None:
        pass

    def _new_admin(self) -> TopicAdmin:
        return ListAdmin(self.log)

    def close(self) -> None:
        pass


class ListConsumer(BaseConsumer):
    def __init__(self, log: Log, topics: list[str], **options: Any) -> None:
        super().__init__({}, topics, **options)
        self.log = log
        self.position: dict[TopicPartition, int] = {}
        self.paused_fetch = False

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        if not self.position:  # joining the group: every partition is ours
            self.position = {(t, 0): self.log.committed.get((t, 0), 0) for t in self.topics}
            self._assigned(list(self.position))
        if self.paused_fetch:
            return []
        records = []
        for (topic, partition), offset in self.position.items():
            for key, value, headers in self.log.topics.get(topic, [])[offset:][:max_records]:
                records.append(Record(topic, partition, offset, value, key, headers))
                offset += 1
            self.position[topic, partition] = offset
        return records

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.committed.update(offsets)

    def _pause(self) -> None:
        self.paused_fetch = True

    def _resume(self) -> None:
        self.paused_fetch = False

    def _close(self) -> None:
        pass

    def _new_producer(self) -> BaseProducer:
        return ListProducer(self.log, **self._producer_options())

    def _new_admin(self) -> TopicAdmin:
        return ListAdmin(self.log, **self._admin_options())

    def _group_offsets(self, partitions: list[TopicPartition]
                       ) -> dict[TopicPartition, int | None]:
        return {tp: self.log.committed.get(tp) for tp in partitions}


# what the type checker holds kser's own transports to (kser/transport.py)
_TRANSPORT: tuple[type[ConsumerTransport], type[ProducerTransport], type[AdminTransport]] = (
    ListConsumer, ListProducer, ListAdmin)


def test_a_transport_of_the_protocols_alone_runs_commits_and_dead_letters() -> None:
    RUNS.clear()
    log = Log()
    producer = ListProducer(log)
    for n in range(3):
        assert producer.send("jobs", Message(uuid=f"m{n}", entrypoint=Count.path,
                                             params={"n": n})).retcode == 0
    producer.send_raw("jobs", b"\xff not a message")
    consumer = ListConsumer(log, ["jobs"])
    consumer.controller = registry.controller
    consumer.run(until_idle=True)

    assert RUNS == [0, 1, 2]
    assert consumer.processed == 4
    # everything done is committed, the bad record included (it is dead-lettered)
    assert log.committed == {("jobs", 0): 4}
    ((_key, value, headers),) = log.topics["jobs.dlq"]
    assert value == b"\xff not a message"
    assert "not valid UTF-8" in dict(headers)["kser-error"].decode()
    # the worker created its topics' dead-letter topic through the admin
    assert "jobs.dlq" in log.topics
