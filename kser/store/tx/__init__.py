"""One transaction on the store, its queries split by table group: each group a class of
its own over :class:`~kser.store.tx.base.TxBase`, :class:`Tx` all of them."""

from kser.store.tx.attempts import AttemptQueries
from kser.store.tx.operations import OperationQueries
from kser.store.tx.outbox import OutboxQueries
from kser.store.tx.schedules import ScheduleQueries
from kser.store.tx.tasks import TaskQueries


class Tx(OperationQueries, TaskQueries, AttemptQueries, OutboxQueries, ScheduleQueries):
    """One transaction on the store: reads return typed rows (:mod:`kser.store.rows`)."""


__all__ = ["Tx"]
