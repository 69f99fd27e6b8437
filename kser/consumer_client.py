"""What a transport adapts of a consumer's client: poll, commit, pause, resume, close,
produce (its producer), administer (its topics), and the partitions its group gives and
takes. :class:`kser.worker.BaseConsumer` runs the consume loop over it; a transport
subclasses that and implements the methods that raise ``NotImplementedError`` here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from kser import metrics
from kser.config import Settings
from kser.errors import UNACKNOWLEDGED_HINT, WorkerStartError, is_transient, safe_text
from kser.offsets import OffsetTracker
from kser.producer import BaseProducer
from kser.record import Record, TopicPartition
from kser.topics import TopicAdmin

logger = logging.getLogger("kser.worker")  # (the name its lines always had)

#: first and longest wait after a failed poll (or topic check) before the next, seconds
POLL_RETRY_MIN, POLL_RETRY_MAX = 0.5, 10.0


class ConsumerClient:
    """A consumer's client, as the consume loop sees it.

    :param config: the client library's own consumer configuration
    :param topics: topics to subscribe to
    :param settings: kser settings
    :param name: the worker's name (its client id; the store tells workers apart by it)
    """

    def __init__(self, config: dict[str, Any], topics: list[str], settings: Settings,
                 name: str) -> None:
        self.config, self.topics, self.settings, self.name = config, topics, settings, name
        #: the offsets of the running loop (None outside :meth:`BaseConsumer.run`)
        self._tracker: OffsetTracker | None = None
        #: partitions assigned whose committed offsets the tracker has not been told yet
        self._unfloored: set[TopicPartition] = set()
        #: the producer of follow-up messages and dead letters (made on first use)
        self._producer: BaseProducer | None = None

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        raise NotImplementedError

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``: for each partition, the offset of the next record to read."""
        raise NotImplementedError

    def _pause(self) -> None:
        """Stop fetching from every assigned partition (polling keeps the membership)."""
        raise NotImplementedError

    def _resume(self) -> None:
        """Fetch again from every assigned partition."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _new_producer(self) -> BaseProducer:
        raise NotImplementedError

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of this consumer's cluster (see :mod:`kser.topics`)."""
        raise NotImplementedError

    def _log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition, as the client last saw it
        (no request to the broker; those it does not know are left out)."""
        return {}

    def _group_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``partitions`` (None: none committed). Called
        on the main thread outside the client's callbacks."""
        return {}

    def _ensure_topics(self, topics: list[str]) -> list[str]:
        """Create those of ``topics`` that do not exist (``settings.partitions``
        partitions, ``settings.replication_factor`` replicas, see :mod:`kser.topics`); return
        the created ones. Those that existed and are less durable than kser would create
        them are named in a warning."""
        with self._new_admin() as admin:
            created = admin.ensure(topics)
            try:
                for line in admin.short_of([t for t in topics if t not in created]):
                    logger.warning("%s: %s", self.name, line)
            except Exception as exc:  # (a check: it never stops a start)
                logger.info("%s: replicas of %s not checked: %s", self.name, topics, exc)
            return created

    def _producer_options(self) -> dict[str, Any]:
        """kser's own producer options, from this consumer's settings."""
        return self.settings.producer_options()

    def _admin_options(self) -> dict[str, Any]:
        return self.settings.admin_options()

    def _revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The group took ``partitions`` from this worker (called by the transport's client
        in a poll of the main thread). Their records fetched and not started stay in the
        backlog and run (duplicates are harmless; dropping them would skip them when the
        partition comes back, as the client keeps its position)."""
        if self._tracker is not None:
            self._tracker.revoked(partitions)
        metrics.set_lag({}, gone=partitions)

    def _assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Log the partitions the group gave this worker (called by the transport's
        client at each rebalance, in a poll of the main thread): which worker works on
        what, and since when; only those are committed, never below the group's committed
        offsets (read after the poll: see :meth:`_group_offsets`)."""
        if self._tracker is not None:
            self._tracker.assigned(partitions)
            self._unfloored.update(partitions)
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        logger.info("%s: assigned %d partition(s): %s", self.name, len(partitions),
                    "; ".join(f"{topic}[{','.join(map(str, sorted(parts)))}]"
                              for topic, parts in sorted(by_topic.items())) or "none")

    @staticmethod
    def _force_manual_commit(config: dict[str, Any], key: str) -> dict[str, Any]:
        """Turn the client's auto-commit off: it would commit before processing."""
        if str(config.get(key, "")).lower() in ("true", "1"):
            logger.warning("%s=True ignored: kser commits an offset only after its message "
                           "is processed and its follow-ups are acknowledged", key)
        config[key] = False
        return config

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        """Poll the client once (no processing, no commit)."""
        return self._poll(timeout, max_records)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (per partition, the offset of the next record to read)."""
        self._commit(offsets)

    def close(self) -> None:
        """Close the client (:meth:`run` does it itself when it returns)."""
        self._close()

    @property
    def producer(self) -> BaseProducer:
        """The producer of follow-up messages and dead letters."""
        if self._producer is None:
            # built with KSER_MAX_MESSAGE_BYTES: the same limit for follow-ups as for sends
            self._producer = self._new_producer()
        return self._producer

    def _checkpoint(self, tracker: OffsetTracker) -> None:
        """Commit what may be committed, once everything produced is acknowledged."""
        offsets = tracker.committable()
        if not offsets:
            return
        try:
            self.producer.flush(timeout=self.settings.send_timeout)
        except Exception as exc:  # not committing is always safe
            logger.error("%s: messages not acknowledged within %g s (%s); offsets not "
                         "committed: the records will be done again (%s)", self.name,
                         self.settings.send_timeout, exc, UNACKNOWLEDGED_HINT)
            return
        try:
            self._commit(offsets)
            tracker.committed(offsets)
        except Exception as exc:  # e.g. partitions revoked by a rebalance
            logger.warning("%s: commit of %s failed (%s); the records will be delivered again",
                           self.name, offsets, exc)
            tracker.forget(offsets)

    def _shutdown(self) -> None:
        try:
            self._close()
        except Exception as exc:  # the broker may be gone: nothing left to tell it
            logger.warning("%s: closing the consumer failed: %s", self.name, safe_text(exc))
        finally:
            if self._producer is not None:
                try:
                    self._producer.close()
                except Exception as exc:
                    logger.warning("%s: closing the producer failed: %s", self.name,
                                   safe_text(exc))

    def _call_client(self, action: Callable[[], object], what: str) -> bool:
        """Pause or resume the client's fetching; True if done (a failure is logged: the
        next poll tells whether the client is usable)."""
        try:
            action()
            return True
        except Exception as exc:
            logger.warning("%s: %s failed: %s", self.name, what, safe_text(exc, 500))
            return False

    def _ensure_topics_at_start(self, stopping: threading.Event) -> None:
        """Create the topics and their dead-letter topics that do not exist, before the
        first poll; a blip is tried again, a cluster silent for ``connect_timeout`` (or a
        refusal) stops the start.

        :raises WorkerStartError: the topics cannot be checked or created
        """
        topics = list(dict.fromkeys([*self.topics,
                                     *(self.settings.dlq_for(t) for t in self.topics)]))
        # a blip is tried again; a cluster that stays silent for connect_timeout is an error
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            try:
                created = self._ensure_topics(topics)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise WorkerStartError(
                        f"the topics {', '.join(topics)} cannot be checked or created "
                        f"({safe_text(exc, 500)}): a worker needs its topics and their "
                        "dead-letter topics; create them (kser topics create), or give kser "
                        "the right to, and check the names") from None
                if time.monotonic() >= deadline:
                    raise WorkerStartError(
                        f"the Kafka cluster did not answer within "
                        f"{self.settings.connect_timeout:g} s ({safe_text(exc, 300)}): is "
                        "the broker running and reachable?") from None
                logger.warning("%s: checking the topics failed (%s); trying again",
                               self.name, safe_text(exc, 300))
                if stopping.wait(POLL_RETRY_MIN * 2):
                    raise WorkerStartError("stopped while it checked its topics") from None
        self.producer.topics_exist(topics)
        if created:
            logger.info("%s: created topic(s) %s", self.name, ", ".join(created))
