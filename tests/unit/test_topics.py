"""The replicas and min.insync.replicas kser creates its topics with (no cluster needed:
a TopicAdmin whose cluster has as many brokers as the test says)."""

import pytest
from cdumay_error.types import ConfigurationError

from kser.config import Settings
from kser.topics import PartitionInfo, TopicAdmin, TopicInfo


class Cluster(TopicAdmin):
    def __init__(self, brokers, **options):
        super().__init__(**options)
        self.brokers, self.created = brokers, []

    def _brokers(self):
        return self.brokers

    def _existing(self, topics):
        return {topic for topic, *_ in self.created if topic in topics}

    def _create(self, topics, partitions, replication_factor, configs):
        self.created += [(topic, partitions, replication_factor, configs) for topic in topics]


@pytest.mark.parametrize("brokers, expected", [
    (1, (1, {})),
    (2, (2, {})),  # min.insync.replicas 2 of 2 would stop writes at any broker's loss
    (3, (3, {"min.insync.replicas": "2"})),
    (5, (3, {"min.insync.replicas": "2"})),
])
def test_auto_is_three_replicas_two_in_sync_where_the_cluster_has_three_brokers(
        brokers, expected):
    assert Cluster(brokers).replication() == expected


def test_ensure_creates_missing_topics_with_them():
    admin = Cluster(3, partitions=6)
    assert admin.ensure(["a", "a.dlq"]) == ["a", "a.dlq"]
    assert admin.created == [("a", 6, 3, {"min.insync.replicas": "2"}),
                             ("a.dlq", 6, 3, {"min.insync.replicas": "2"})]
    assert admin.ensure(["a"]) == []


@pytest.mark.parametrize("factor, least, brokers, expected", [
    (-1, None, 3, (-1, {})),  # the broker's default.replication.factor, and its min.insync
    (-1, 2, 3, (-1, {"min.insync.replicas": "2"})),
    (2, None, 3, (2, {})),
    (3, 3, 3, (3, {"min.insync.replicas": "3"})),
    (None, 1, 3, (3, {"min.insync.replicas": "1"})),
])
def test_explicit_settings_are_taken_as_given(factor, least, brokers, expected):
    assert Cluster(brokers, replication_factor=factor,
                   min_insync_replicas=least).replication() == expected


def test_what_the_cluster_cannot_give_is_one_clear_error():
    with pytest.raises(ConfigurationError, match=r"KSER_REPLICATION_FACTOR=3 but the cluster "
                                                 r"has 2 broker\(s\) up"):
        Cluster(2, replication_factor=3).replication()
    with pytest.raises(ConfigurationError, match=r"KSER_MIN_INSYNC_REPLICAS=3 is above the "
                                                 r"replication factor 2: the topic would "
                                                 r"refuse every record"):
        Cluster(2, min_insync_replicas=3).replication()


def test_the_settings_read_auto_numbers_and_refuse_the_rest(monkeypatch):
    assert Settings().replication_factor is None
    assert Settings().min_insync_replicas is None
    monkeypatch.setenv("KSER_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KSER_MIN_INSYNC_REPLICAS", "auto")
    assert (Settings().replication_factor, Settings().min_insync_replicas) == (3, None)
    assert Settings().admin_options()["replication_factor"] == 3
    assert Settings().producer_options()["delivery_timeout"] == Settings().send_timeout
    monkeypatch.setenv("KSER_MIN_INSYNC_REPLICAS", "0")
    with pytest.raises(ConfigurationError, match="KSER_MIN_INSYNC_REPLICAS=0 is below 1"):
        Settings()
    monkeypatch.setenv("KSER_MIN_INSYNC_REPLICAS", "two")
    with pytest.raises(ConfigurationError, match="KSER_MIN_INSYNC_REPLICAS='two' is not an "
                                                 "integer"):
        Settings()


def test_a_partition_with_a_replica_out_of_sync_is_under_replicated():
    info = TopicInfo("a", [PartitionInfo(0, 1, [1, 2, 3], isr=[1, 2, 3]),
                           PartitionInfo(1, 2, [2, 3, 1], isr=[2, 3]),
                           PartitionInfo(2, 3, [3, 1, 2])])  # (isr not asked)
    assert info.under_replicated == [1]
    assert info.replication_factor == 3


def test_a_replication_factor_of_0_is_refused():
    with pytest.raises(ConfigurationError, match="KSER_REPLICATION_FACTOR=0 is no replication"):
        Cluster(3, replication_factor=0).replication()


def test_auto_on_two_brokers_warns_that_a_broker_may_be_down(caplog):
    assert Cluster(2).replication() == (2, {})
    assert "set KSER_REPLICATION_FACTOR=3" in caplog.text
    caplog.clear()
    Cluster(3).replication()
    Cluster(1).replication()
    assert caplog.text == ""


class Described(Cluster):
    def __init__(self, refusal):
        super().__init__(3, timeout=0.3)
        self.refusal, self.created = refusal, [("a", 1, 3, {})]

    def _describe(self, topics, group):
        return [TopicInfo(topic, [PartitionInfo(0, 1, [1, 2, 3], isr=[1, 2, 3])], group)
                for topic in topics]

    def _min_insync(self, topics):
        raise self.refusal


def test_min_insync_replicas_is_unknown_where_the_cluster_will_not_show_topic_configs():
    info, = Described(PermissionError("TOPIC_AUTHORIZATION_FAILED")).describe(["a"])
    assert info.min_insync_replicas is None and info.replication_factor == 3
    with pytest.raises(ConnectionError):  # a transient failure is retried, then raised
        Described(ConnectionError("gone")).describe(["a"])


class Existing(Cluster):
    """A cluster of ``brokers`` where topic "old" has one replica and "new" three."""

    def __init__(self, brokers, **options):
        super().__init__(brokers, **options)
        self.created = [("old", 1, 1, {}), ("new", 1, 3, {"min.insync.replicas": "2"})]

    def _describe(self, topics, group):
        replicas = {"old": [1], "new": [1, 2, 3]}
        return [TopicInfo(topic, [PartitionInfo(0, 1, replicas[topic])], group)
                for topic in topics]

    def _min_insync(self, topics):
        return {"old": 1, "new": 2}


def test_a_topic_less_durable_than_kser_would_create_it_is_named():
    old, = Existing(3).short_of(["old", "new"])
    assert old.startswith("topic old has 1 replica(s) and min.insync.replicas 1, below the 3 "
                          "and 2 kser creates topics with on this cluster")
    assert "kafka-reassign-partitions.sh" in old
    assert Existing(1).short_of(["old", "new"]) == []  # one broker: nothing to say
    assert Existing(3, replication_factor=1).short_of(["old"]) == []  # as asked


def test_end_offsets_wait_for_a_topic_the_consumer_metadata_does_not_list_yet():
    """CI once crashed on kafka-python's bare KeyError: the admin client had described a
    just-created topic before the broker the offsets consumer asked knew it."""
    from kafka.structs import TopicPartition

    from kser.python_kafka.admin import Admin as KafkaPythonAdmin

    class Consumer:
        refreshes = 0

        def end_offsets(self, tps):
            if self.refreshes < 2:
                raise KeyError(tps[-1])
            return {tp: 7 for tp in tps}

        def topics(self):
            self.refreshes += 1

    admin = object.__new__(KafkaPythonAdmin)
    admin.timeout = 5
    consumer = Consumer()
    tps = [TopicPartition("ops", 0), TopicPartition("ops.dlq", 0)]
    assert admin._end_offsets(consumer, tps) == {tps[0]: 7, tps[1]: 7}
    assert consumer.refreshes == 2


def test_end_offsets_name_the_topic_the_brokers_never_list():
    from kafka.errors import KafkaTimeoutError
    from kafka.structs import TopicPartition

    from kser.python_kafka.admin import Admin as KafkaPythonAdmin

    class Consumer:
        def end_offsets(self, tps):
            raise KeyError(tps[0])

        def topics(self):
            pass

    admin = object.__new__(KafkaPythonAdmin)
    admin.timeout = 0.3
    with pytest.raises(KafkaTimeoutError, match=r"does not list topic ops\.dlq"):
        admin._end_offsets(Consumer(), [TopicPartition("ops.dlq", 0)])
