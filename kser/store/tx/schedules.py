"""Cron schedules: what each handled, launched and fires next."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kser.store import schema
from kser.store.rows import (
    ScheduleRow,
)
from kser.store.tx.base import (
    TxBase,
)

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)


class ScheduleQueries(TxBase):
    """Cron schedules: what each handled, launched and fires next."""

    def schedule_states(self, names: Iterable[str]) -> dict[str, ScheduleRow]:
        """The rows of the schedules named ``names`` that exist, by name."""
        names = list(names)
        if not names:
            return {}
        rows = self._read_as(ScheduleRow, select(schema.schedules)
                             .where(schema.schedules.c.name.in_(names)))
        return {row.name: row for row in rows}

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule a scheduler wrote, by name."""
        return self._read_as(ScheduleRow, select(schema.schedules)
                             .order_by(schema.schedules.c.name))

    def save_schedule(self, row: dict[str, Any], handled_until: float,
                      launched: tuple[float, str] | None = None, reset: bool = False) -> None:
        """Write a schedule's definition and next fire, what it handled (never moved
        back, two schedulers writing in turn, unless ``reset``: it was ahead of the
        clock), and its last launch (fire, operation id)."""
        c = schema.schedules.c
        values = dict(row)
        if launched is not None:
            values.update(last_fire_at=launched[0], last_operation_id=launched[1])
        moved = dict(values, handled_until=handled_until if reset else case(
            (c.handled_until > handled_until, c.handled_until), else_=handled_until))
        if launched is not None:  # (nor the last launch)
            moved.update(
                last_fire_at=case((c.last_fire_at > launched[0], c.last_fire_at),
                                  else_=launched[0]),
                last_operation_id=case((c.last_fire_at > launched[0], c.last_operation_id),
                                       else_=launched[1]))
        statement = update(schema.schedules).where(c.name == row["name"]).values(**moved)
        if self.connection.execute(statement).rowcount:
            return
        insert = (sqlite_insert if self.connection.dialect.name == "sqlite"
                  else postgresql_insert)(schema.schedules)
        inserted = self.connection.execute(insert.values(
            **values, handled_until=handled_until).on_conflict_do_nothing())
        if not inserted.rowcount:  # (another scheduler's row came first)
            self.connection.execute(statement)
