"""Topics: kser creates those it uses, with enough partitions, and describes them.

A topic's partitions are the unit of sharing: each partition belongs to one
worker of a group at a time, so at most as many workers of a group work on a
topic as it has partitions (the others stand by and take over when one
leaves). Every message of an operation is keyed by the operation's id, so an
operation's hops stay on one partition, in order, while different operations
spread over all of them. A topic Kafka creates by itself
(``auto.create.topics.enable``) gets the broker's ``num.partitions``, often 1:
one worker would do all the work. So workers (at start), producers (at their
first message to a topic) and ``kser topics create`` create missing topics with
``KSER_PARTITIONS`` partitions and ``KSER_REPLICATION_FACTOR`` replicas.

Replicas decide what a broker's loss costs. By default (``auto``) kser creates
its topics with ``min(3, brokers)`` replicas and, on a cluster of three brokers
or more, ``min.insync.replicas=2`` (``KSER_MIN_INSYNC_REPLICAS``): with kser's
``acks=all`` a record is acknowledged once two brokers hold it, so one broker can
die at any moment without losing an acknowledged record, and the topic still
takes records while one broker is down. Kafka's own default is one replica.

A transport gives :class:`TopicAdmin` five calls (``_existing``, ``_brokers``,
``_create``, ``_describe``, ``_min_insync``); what is created and how it is
reported is written here once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from cdumay_error.types import ConfigurationError

from kser.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PARTITIONS
from kser.errors import TopicNotFoundError as TopicNotFoundError
from kser.errors import is_transient

logger = logging.getLogger(__name__)

#: replicas ``auto`` gives a topic on a cluster of that many brokers or more
DURABLE_REPLICAS = 3
#: ``min.insync.replicas`` ``auto`` gives a topic of DURABLE_REPLICAS replicas or more
DURABLE_MIN_INSYNC = 2

#: longest topic name Kafka accepts, and the characters it allows
MAX_TOPIC = 249
TOPIC_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def topic_problem(name: object) -> str | None:
    """What makes ``name`` no Kafka topic name (None: it is one): 1 to :data:`MAX_TOPIC`
    of a-z A-Z 0-9 . _ -, and not ``.`` or ``..``."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not 0 < len(name) <= MAX_TOPIC or not set(name) <= TOPIC_CHARACTERS or name in (
            ".", ".."):
        shown = name.encode("unicode_escape").decode()[:100]
        return f"{shown!r} is not a Kafka topic name (1 to {MAX_TOPIC} of a-z A-Z 0-9 . _ -)"
    return None


@dataclass
class PartitionInfo:
    """One partition: where it lives, how far it goes, how far a group has read it."""

    partition: int
    leader: int | None
    replicas: list[int]
    #: offset of the next record to be written (None: not asked)
    end_offset: int | None = None
    #: offset the group committed (None: nothing committed, or no group asked)
    committed: int | None = None
    #: client id of the group member that owns it (kser workers use their name,
    #: ``host:pid``; None: unassigned, or no group asked)
    owner: str | None = None
    #: replicas in sync with the leader (None: not asked)
    isr: list[int] | None = None

    @property
    def lag(self) -> int | None:
        """Records the group has not committed yet (None: unknown)."""
        if self.end_offset is None:
            return None
        return max(0, self.end_offset - (self.committed or 0))


@dataclass
class TopicInfo:
    """A topic as the cluster knows it, and as a consumer group sees it."""

    name: str
    partitions: list[PartitionInfo] = field(default_factory=list)
    #: the consumer group described with it (None: none asked)
    group: str | None = None
    #: members of :attr:`group` subscribed now (None: unknown)
    members: int | None = None
    #: the topic's ``min.insync.replicas`` (None: unknown)
    min_insync_replicas: int | None = None

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].replicas) if self.partitions else 0

    @property
    def under_replicated(self) -> list[int]:
        """Partitions with fewer replicas in sync than they have."""
        return [p.partition for p in self.partitions
                if p.isr is not None and len(p.isr) < len(p.replicas)]

    @property
    def lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if None in lags else sum(lag for lag in lags if lag is not None)


class TopicAdmin:
    """Check, create and describe topics of one cluster.

    :param partitions: partitions of the topics :meth:`ensure` creates
    :param replication_factor: their replicas (None: ``min(3, brokers)``; -1: the
        broker's ``default.replication.factor``)
    :param min_insync_replicas: their ``min.insync.replicas`` (None: 2 when they have 3
        replicas or more, else the broker's default)
    :param timeout: seconds each call to the cluster may take
    """

    def __init__(self, partitions: int = DEFAULT_PARTITIONS,
                 replication_factor: int | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 min_insync_replicas: int | None = None) -> None:
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.timeout = timeout

    # -- what a transport adapts -------------------------------------------------------

    def _existing(self, topics: list[str]) -> set[str]:
        """Those of ``topics`` that exist."""
        raise NotImplementedError

    def _brokers(self) -> int:
        """How many brokers the cluster has (those it lists now)."""
        raise NotImplementedError

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        """Create ``topics`` with the topic ``configs``; one created meanwhile by someone
        else is no error."""
        raise NotImplementedError

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        """``topics`` (which exist) with their partitions (replicas in sync included),
        end offsets and, given a group, its committed offsets and member count."""
        raise NotImplementedError

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        """The ``min.insync.replicas`` of ``topics``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the client."""

    # -- shared behaviour --------------------------------------------------------------

    def replication(self, warn: bool = True) -> tuple[int, dict[str, str]]:
        """The replication factor and topic configs :meth:`ensure` creates topics with
        (``warn``: log when ``auto`` gives fewer than 3 replicas on 2 brokers).

        :raises ConfigurationError: the settings ask for what the cluster cannot give
        """
        wanted, least = self.replication_factor, self.min_insync_replicas
        if wanted == 0 or (wanted is not None and wanted < -1):
            raise ConfigurationError(f"KSER_REPLICATION_FACTOR={wanted} is no replication "
                                     "factor: 1 or more, -1 (the broker's default) or auto")
        brokers = self._brokers() if wanted is None or wanted > 0 else None
        factor = min(DURABLE_REPLICAS, brokers or 1) if wanted is None else wanted
        if warn and wanted is None and brokers is not None and 1 < brokers < DURABLE_REPLICAS:
            # (a cluster of three with a broker down, or a cluster of two: kser cannot tell)
            logger.warning("The cluster lists %d brokers: kser's topics created now get %d "
                           "replicas for good and no min.insync.replicas of their own. On a "
                           "cluster of three or more with a broker down, set "
                           "KSER_REPLICATION_FACTOR=3 (see kser topics describe)",
                           brokers, factor)
        if brokers is not None and factor > brokers:
            raise ConfigurationError(
                f"KSER_REPLICATION_FACTOR={factor} but the cluster has {brokers} broker(s) "
                "up: Kafka cannot place that many replicas; start the missing brokers or "
                "lower it")
        if least is None:
            least = DURABLE_MIN_INSYNC if factor >= DURABLE_REPLICAS else None
        elif factor > 0 and least > factor:
            raise ConfigurationError(
                f"KSER_MIN_INSYNC_REPLICAS={least} is above the replication factor {factor}:"
                " the topic would refuse every record; lower it")
        return factor, ({"min.insync.replicas": str(least)} if least else {})

    def ensure(self, topics: list[str], partitions: int | None = None) -> list[str]:
        """Create those of ``topics`` that do not exist; return them (in order)."""
        topics = list(dict.fromkeys(topics))
        existing = self._existing(topics)
        missing = [topic for topic in topics if topic not in existing]
        if missing:
            factor, configs = self.replication()
            self._create(missing, partitions or self.partitions, factor, configs)
            # created is not yet visible everywhere: wait until the cluster lists them
            deadline = time.monotonic() + self.timeout
            while set(missing) - self._existing(missing) and time.monotonic() < deadline:
                time.sleep(0.1)
        return missing

    def short_of(self, topics: list[str]) -> list[str]:
        """What makes existing ``topics`` less durable than :meth:`ensure` would create
        them on this cluster (fewer replicas, a lower ``min.insync.replicas``), a line
        each; nothing on a single broker."""
        if self._brokers() < 2:
            return []
        factor, configs = self.replication(warn=False)
        least = int(configs.get("min.insync.replicas", 0))
        lines = []
        for info in self.describe(topics):
            fewer = 0 < info.replication_factor < factor
            lower = info.min_insync_replicas is not None and info.min_insync_replicas < least
            if fewer or lower:
                lines.append(
                    f"topic {info.name} has {info.replication_factor} replica(s) and "
                    f"min.insync.replicas {info.min_insync_replicas}, below the {factor} and "
                    f"{least or 'the broker default'} kser creates topics with on this "
                    "cluster: a broker's loss can stop it or lose what it acknowledged. Add "
                    "replicas with kafka-reassign-partitions.sh, raise it with "
                    "kafka-configs.sh --add-config min.insync.replicas=N (docs: Run and "
                    "scale workers, On a Kafka cluster)")
        return lines

    def existing(self, topics: list[str]) -> set[str]:
        """Which of ``topics`` exist (a request to the cluster: it answers or raises)."""
        return self._existing(list(dict.fromkeys(topics)))

    def describe(self, topics: list[str], group: str | None = None,
                 created: Collection[str] = ()) -> list[TopicInfo]:
        """``topics`` as the cluster knows them (and as ``group`` reads them), with their
        ``min.insync.replicas``.

        :param created: topics just created: a broker that does not list them yet is
            asked again (each broker learns of a new topic on its own)
        :raises TopicNotFoundError: one of them does not exist
        """
        topics = list(dict.fromkeys(topics))
        deadline = time.monotonic() + self.timeout
        while True:
            missing = [topic for topic in topics if topic not in self._existing(topics)]
            if not set(missing) & set(created) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if missing:
            raise TopicNotFoundError(f"no topic {', '.join(missing)} in the cluster; create "
                                     "it with: kser topics create TOPIC")
        while True:
            try:
                found = {info.name: info for info in self._describe(topics, group)}
                settings = self._settings_of(topics)
                break
            except Exception as exc:  # a topic just created may have no leader yet
                if not is_transient(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        for info in found.values():
            info.min_insync_replicas = settings.get(info.name)
        return [found[topic] for topic in topics]

    def _settings_of(self, topics: list[str]) -> dict[str, int]:
        """The ``min.insync.replicas`` of ``topics``; none (unknown) where the cluster
        refuses to show topic configs (an ACL without DescribeConfigs)."""
        try:
            return self._min_insync(topics)
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.info("min.insync.replicas of %s unknown: %s", ", ".join(topics), exc)
            return {}

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
