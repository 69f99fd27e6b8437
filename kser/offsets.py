"""What a worker may commit: per partition, up to the lowest record still in flight, and
only the partitions it owns (at-least-once: see :mod:`kser.worker`)."""

from __future__ import annotations

from collections.abc import Iterable

from kser.record import Record, TopicPartition


class OffsetTracker:
    """Which offsets of each partition are in flight and done, and what may be committed."""

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest done offset
        self._committed: dict[TopicPartition, int] = {}
        #: the partitions the group gives this consumer now (None: not told, e.g. the
        #: in-process transport): only theirs are committed
        self._owned: set[TopicPartition] | None = None

    def started(self, record: Record) -> None:
        self._in_flight.setdefault((record.topic, record.partition), set()).add(record.offset)

    def done(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        self._in_flight.setdefault(tp, set()).discard(record.offset)
        self._next[tp] = max(self._next.get(tp, 0), record.offset + 1)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition: the lowest offset in flight, else one past the highest done,
        where that is beyond what was committed."""
        offsets = {}
        for tp, next_offset in self._next.items():
            if self._owned is not None and tp not in self._owned:
                continue  # another member's now: its commit would be refused
            in_flight = self._in_flight.get(tp)
            offset = min(in_flight) if in_flight else next_offset
            if offset > self._committed.get(tp, -1):
                offsets[tp] = offset
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The group's committed offset of each partition this consumer owns, as far as it
        knows (what it committed, or found committed when given the partition)."""
        return {tp: offset for tp, offset in self._committed.items()
                if self._owned is None or tp in self._owned}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """A commit of these partitions failed (a rebalance, a blip): it is tried again at
        the next checkpoint if they are still this consumer's. What was done stays done
        (a client keeps the position of a partition it keeps through a rebalance, so those
        records are never delivered again: forgetting them left the group's offset behind
        for good), and a record still running bounds the commit until it ends."""
        for tp in tps:
            self._committed.pop(tp, None)

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        """The group gave these partitions to this consumer (added to what it has)."""
        self._owned = (self._owned or set()) | set(tps)

    def floor(self, offsets: dict[TopicPartition, int | None]) -> None:
        """The group's committed offsets of partitions just assigned: never commit at or
        below them (what was done here before another member had them is older than what
        it committed: committing it would move the group back)."""
        for tp, offset in offsets.items():
            if offset is not None:
                self._committed[tp] = max(offset, self._committed.get(tp, -1))

    def revoked(self, tps: Iterable[TopicPartition]) -> None:
        """The group took these partitions away: not committed until given back (then
        committed again, from what was done here)."""
        self._owned = (self._owned or set()) - set(tps)
        for tp in tps:
            self._committed.pop(tp, None)
