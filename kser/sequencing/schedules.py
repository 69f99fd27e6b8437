"""Operations launched on cron schedules: what ``@registry.schedule(...)`` and a schedules
file declare, and the :class:`Scheduler` ``kser scheduler`` runs.

A schedule names an operation, its params, a cron expression (5 fields, or 6 with
seconds first: cronsim's syntax, ``L``, ``W`` and ``#`` included) read in a time zone
(DST as Debian's cron: a time skipped by the change runs at its end, a time repeated
runs once; a wildcard hour runs in both), and a catch-up policy for fires missed while
no scheduler ran: ``skip`` (none of them: the next one runs) or ``run_once`` (one launch,
for the latest of them).

Each fire is launched as ``Operation.launch(key=...)`` with the idempotency key
``schedule:<name>:<fire time, UTC, ISO 8601>``: any number of schedulers running at
once (for availability) launch each fire once, the store's unique key deciding. What
each schedule handled, launched last and fires next is kept in ``kser_schedules``
(``GET /api/v1/schedules``, ``kser ops ls``).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdumay_error.types import ValidationError
from cronsim import CronSim, CronSimError

from kser.errors import safe_text
from kser.schemas import KserKey
from kser.topics import topic_problem

if TYPE_CHECKING:
    from kser.entry import Entrypoint
    from kser.sequencing.operation import Operation
    from kser.store import ScheduleRow, Store

logger = logging.getLogger(__name__)

__all__ = ["CATCHUPS", "Schedule", "Scheduler", "load_schedules"]

#: what a schedule does with the fires missed while no scheduler ran
CATCHUPS = ("skip", "run_once")
#: a fire is on time (launched whatever the policy) up to this many seconds after it
MISFIRE_GRACE = 60.0
#: longest a scheduler sleeps between two passes, seconds (it also refreshes the
#: schedules' next runs in the store then)
MAX_SLEEP = 30.0
#: first and longest wait after a pass failed (the store unreachable), seconds
RETRY_MIN, RETRY_MAX = 1.0, 30.0
#: most on-time fires of one schedule launched in one pass (a cron every second with a
#: long grace)
MOST_FIRES = 100
#: longest schedule name (its key must fit the store's 255 characters)
MAX_NAME = 150
#: the span searched forward for the latest fire before a time, seconds. Fire times are
#: only ever taken from cronsim's forward search: its reverse one disagrees with it at
#: DST changes (the first of a repeated time, or a time forward never gives), so it only
#: says where to search forward next
LATEST_WINDOW = 3 * 3600.0
#: most spans :meth:`Schedule.latest` searches before giving up (each goes back further)
LATEST_SPANS = 1000
#: a schedule handled further ahead than this (a scheduler whose clock was ahead) is
#: handled from now, seconds
MAX_AHEAD = 300.0
#: the keys a schedule of a schedules file may have
FILE_KEYS = frozenset({"name", "cron", "entrypoint", "params", "timezone", "catchup", "topic"})


@dataclass(frozen=True)
class Schedule:
    """An operation launched on a cron schedule.

    :param name: unique among the schedules (it makes the launches' keys)
    :param cron: 5 fields (minute hour day month weekday), or 6 with seconds first
    :param entrypoint: the operation's path, registered in the scheduler's registry
    :param params: the params of each launch
    :param timezone: the IANA zone the expression is read in (``Europe/Paris``)
    :param catchup: ``skip`` or ``run_once`` (see the module)
    :param topic: where its tasks go (default: the registry's topic)
    :raises ValueError: a field is not what it must be (the message names it)
    """

    name: str
    cron: str
    entrypoint: str
    params: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    catchup: str = "skip"
    topic: str | None = None

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME or any(
                not c.isprintable() for c in self.name):
            raise ValueError(f"schedule name {safe_text(self.name, 200)!r}: 1 to {MAX_NAME} "
                             "printable characters")
        for name in ("cron", "entrypoint", "timezone", "catchup"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: {name} must be a non-empty string, not "
                                 f"{safe_text(value, 100)!r}")
        problem = None if self.topic is None else topic_problem(self.topic)
        if problem is not None:
            raise ValueError(f"{where}: topic {problem}")
        if self.catchup not in CATCHUPS:
            raise ValueError(f"{where}: catchup {self.catchup!r} is not one of "
                             f"{', '.join(CATCHUPS)}")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"{where}: unknown time zone {self.timezone!r} (an IANA name "
                             "such as UTC or Europe/Paris)") from None
        try:
            CronSim(self.cron, datetime.now(zone))
        except (CronSimError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: {self.cron!r} is not a cron expression ({exc}): 5 "
                             "fields (minute hour day month weekday), or 6 with seconds "
                             "first") from None
        fields = self.cron.split()
        if (len(fields) == 6 and not fields[1].startswith("*")
                and not fields[2].startswith("*") and _has_dst(zone)):
            # (cronsim reads such a 6-field expression without Debian's DST rules: a
            # fire in the repeated hour would run twice, one in the skipped hour never)
            raise ValueError(f"{where}: a 6-field expression at set hours and minutes is "
                             f"not DST-safe in {self.timezone}, which changes its clocks: "
                             "use 5 fields (no seconds), or a zone without DST such as UTC")
        if not isinstance(self.params, dict):
            raise ValueError(f"{where}: params must be a table (a dict), not "
                             f"{type(self.params).__name__}")
        try:
            json.dumps(self.params, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"{where}: params cannot be sent as JSON: {exc}") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def fires(self, after: float, until: float, most: int | None = MOST_FIRES) -> list[float]:
        """The fire times in (``after``, ``until``], at most ``most`` of them (the first)."""
        found: list[float] = []
        for fire in CronSim(self.cron, datetime.fromtimestamp(after, self.zone)):
            at = fire.timestamp()
            if at > until or (most is not None and len(found) >= most):
                break
            if at > after:
                found.append(at)
        return found

    def latest(self, at_or_before: float, after: float | None = None) -> float | None:
        """The last fire time at or before ``at_or_before`` (and after ``after``); None:
        none.

        Only forward searches give fire times (the same as :meth:`fires` gives): over
        the last :data:`LATEST_WINDOW`, then over spans further back, each starting
        where cronsim's reverse search puts the fire before the span.
        """
        lower = float("-inf") if after is None else after
        end, start = at_or_before, max(at_or_before - LATEST_WINDOW, lower)
        for _ in range(LATEST_SPANS):
            found = self.fires(start, end, most=None)
            if found:
                return found[-1]
            if start <= lower:
                return None
            # (a hint at or before ``lower`` ends the search, but only once the span down
            # to ``lower`` was searched forward: the hint may have skipped a fire)
            hint = self._reverse(start)
            if hint is None:
                if lower == float("-inf"):
                    return None
                hint = lower
            end, start = start, max(min(hint, start) - LATEST_WINDOW, lower)
        return None

    def _reverse(self, before: float) -> float | None:
        """cronsim's reverse search: about where the last fire before ``before`` is."""
        moment = datetime.fromtimestamp(before, self.zone)
        if moment.microsecond == 0:  # (cronsim's reverse counts a time with microseconds)
            moment += timedelta(microseconds=1)
        for fire in CronSim(self.cron, moment, reverse=True):
            return fire.timestamp()
        return None

    def next_fire(self, after: float) -> float | None:
        """The first fire time after ``after`` (strictly: started inside an hour a DST
        change repeats, cronsim gives the earlier occurrence first)."""
        for fire in CronSim(self.cron, datetime.fromtimestamp(after, self.zone)):
            at = fire.timestamp()
            if at > after:
                return at
        return None

    def key(self, fire: float) -> str:
        """The idempotency key of the launch for ``fire``."""
        return KserKey(f"schedule:{self.name}:{_iso(fire)}")


def _has_dst(zone: ZoneInfo) -> bool:
    """Whether ``zone`` changes its UTC offset within a year before and three after now."""
    now = time.time()
    offsets = {datetime.fromtimestamp(now + day * 86400.0, zone).utcoffset()
               for day in range(-366, 3 * 366, 7)}
    return len(offsets) > 1


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def load_schedules(path: str | Path) -> list[Schedule]:
    """The schedules of a TOML file: a ``[[schedule]]`` table each (``name``, ``cron``,
    ``entrypoint``; ``params``, ``timezone``, ``catchup``, ``topic`` optional).

    :raises ValueError: the file cannot be read, or a schedule is not valid (the message
        names the file and the schedule)
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    tables = document.get("schedule", [])
    unknown = set(document) - {"schedule"}
    if unknown or not isinstance(tables, list):
        raise ValueError(f"{path}: only [[schedule]] tables are expected (found "
                         f"{', '.join(sorted(unknown)) or 'schedule = ' + type(tables).__name__})")
    schedules = []
    for number, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise ValueError(f"{path}: schedule {number} is a {type(table).__name__}, not a "
                             "[[schedule]] table")
        extra = set(table) - FILE_KEYS
        if extra:
            raise ValueError(f"{path}: schedule {number} has unknown keys "
                             f"{', '.join(sorted(extra))} (known: {', '.join(sorted(FILE_KEYS))})")
        missing = {"name", "cron", "entrypoint"} - set(table)
        if missing:
            raise ValueError(f"{path}: schedule {number} lacks {', '.join(sorted(missing))}")
        try:
            schedules.append(Schedule(**table))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return schedules


class Host(Protocol):
    """What a :class:`Scheduler` launches from: an ``OperationRegistry`` (its entrypoints
    and its store; each launch is the operation's own ``launch()``)."""

    @property
    def entrypoints(self) -> Mapping[str, type[Entrypoint]]: ...

    @property
    def store(self) -> Store: ...


@dataclass
class _Pass:
    """What one pass did with one schedule: the fires it launched (with their
    operations' ids), how many missed ones it skipped."""

    launched: list[tuple[float, str]] = field(default_factory=list)
    skipped: int = 0


class Scheduler:
    """Launches the operations of ``schedules`` at their fire times, from ``registry``
    (its store, producer and entrypoints).

    Each pass reads, per schedule, the time up to which its fires were handled
    (``kser_schedules.handled_until``), launches those due since (on time: within
    :data:`MISFIRE_GRACE`; missed ones as its catch-up policy says), and writes what it
    handled and the next fire. A launch that failed (the store or the broker away) is
    tried again at the next pass, and once its grace passed, as a missed fire.

    :param name: who launches (logged and kept in ``kser_schedules``)
    :param clock: the time, seconds since the epoch (tests drive it)
    :raises ValueError: two schedules share a name, or one names an entrypoint the
        registry does not have or that is not an Operation, or lacks a param its
        operation requires
    """

    def __init__(self, registry: Host, schedules: Sequence[Schedule], *,
                 name: str = "scheduler", grace: float = MISFIRE_GRACE,
                 clock: Callable[[], float] = time.time) -> None:
        from kser.sequencing.operation import Operation

        names = [schedule.name for schedule in schedules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"schedule names must be unique: {', '.join(twice)} given twice")
        operations = sorted(path for path, entrypoint in registry.entrypoints.items()
                            if issubclass(entrypoint, Operation))
        for schedule in schedules:
            if schedule.entrypoint not in operations:
                why = ("not an Operation" if schedule.entrypoint in
                       registry.entrypoints else "not registered in this registry")
                raise ValueError(f"schedule {schedule.name!r}: {schedule.entrypoint!r} is "
                                 f"{why} (its operations: {', '.join(operations) or 'none'})")
        self.registry, self.schedules = registry, list(schedules)
        self.name, self.grace, self.clock = name, grace, clock
        for schedule in schedules:
            try:  # (made as a launch makes it: its postinit may give a param a default)
                self._operation(schedule).check_required_params()
            except ValidationError as exc:
                raise ValueError(f"schedule {schedule.name!r}: {exc.message}: every launch "
                                 "would be refused") from None

    def _operation(self, schedule: Schedule) -> Operation:
        """A new operation of ``schedule``'s entrypoint (an Operation: checked at start)
        with its params."""
        entrypoint = self.registry.entrypoints[schedule.entrypoint]
        return cast("Operation", entrypoint(params=copy.deepcopy(schedule.params)))

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged and tried again
        after a doubling backoff."""
        logger.info("%s: %d schedule(s): %s", self.name, len(self.schedules),
                    "; ".join(f"{s.name} {s.cron!r} {s.timezone} ({s.catchup})"
                              for s in self.schedules) or "none")
        delay = RETRY_MIN
        while not stop.is_set():
            try:
                wait = self.tick()
                delay = RETRY_MIN
            except Exception as exc:
                logger.error("%s: a pass failed (%s: %s); trying again in %.0f s", self.name,
                             type(exc).__name__, safe_text(exc, 500), delay)
                wait, delay = delay, min(delay * 2, RETRY_MAX)
            stop.wait(wait)

    def tick(self) -> float:
        """One pass over every schedule (one failing is logged: the others go on; see
        :attr:`failures`); the seconds until the next fire (at most :data:`MAX_SLEEP`).

        :raises Exception: the store could not be read at all
        """
        now = self.clock()
        store = self.registry.store
        with store.transaction() as tx:
            states = tx.schedule_states([s.name for s in self.schedules])
        soonest = now + MAX_SLEEP
        #: the schedules whose pass failed or left a fire unlaunched, this pass
        self.failures: list[str] = []
        for schedule in self.schedules:
            try:
                upcoming = self._tick_one(schedule, states.get(schedule.name), now)
            except Exception as exc:
                self.failures.append(schedule.name)
                logger.error("%s: schedule %s failed (%s: %s); its fires are tried again at "
                             "the next pass", self.name, schedule.name, type(exc).__name__,
                             safe_text(exc, 500))
                continue
            if upcoming is not None:
                soonest = min(soonest, upcoming)
        return max(0.0, min(soonest - self.clock(), MAX_SLEEP))

    def _tick_one(self, schedule: Schedule, state: ScheduleRow | None,
                  now: float) -> float | None:
        """One schedule's pass, written to the store; its next fire."""
        handled = state.handled_until if state is not None else None
        reset = handled is not None and handled > now + MAX_AHEAD
        if reset:
            logger.warning("%s: schedule %s was handled until %s, ahead of this clock (%s): "
                           "handled from now (is a scheduler's clock wrong?)", self.name,
                           schedule.name, _iso(handled or now), _iso(now))
        if handled is None or reset:  # (new: nothing before now is due)
            handled = now
        done, until = self._pass(schedule, handled, now)
        if until < now:
            self.failures.append(schedule.name)
        upcoming = schedule.next_fire(until)
        with self.registry.store.transaction() as tx:
            tx.save_schedule(dict(
                name=schedule.name, entrypoint=schedule.entrypoint, cron=schedule.cron,
                timezone=schedule.timezone, catchup=schedule.catchup,
                next_fire_at=upcoming, scheduler=self.name, updated_at=now),
                handled_until=until, launched=done.launched[-1] if done.launched else None,
                reset=reset)
        return upcoming

    def _pass(self, schedule: Schedule, handled: float, now: float) -> tuple[_Pass, float]:
        """Launch what of ``schedule`` is due in (``handled``, ``now``]; what was done, and
        the time up to which everything is handled."""
        done = _Pass()
        cutoff = now - self.grace  # (fires at or before it were missed)
        missed = schedule.latest(cutoff, after=handled) if cutoff > handled else None
        if missed is not None:
            if schedule.catchup == "run_once":
                launched = self._launch(schedule, missed, late=True)
                if launched is None:
                    return done, handled
                done.launched.append((missed, launched))
            else:
                skipped = schedule.fires(handled, cutoff, most=10_000)
                done.skipped = len(skipped)
                logger.warning("%s: schedule %s missed %s fire(s) from %s to %s (no scheduler "
                               "ran, or their launch kept failing): skipped (catchup skip)",
                               self.name, schedule.name,
                               done.skipped if done.skipped < 10_000 else "10000+",
                               _iso(skipped[0] if skipped else missed), _iso(missed))
        if cutoff > handled:
            handled = cutoff
        for fire in schedule.fires(handled, now, most=None):
            launched = self._launch(schedule, fire)
            if launched is None:  # (handled up to just before it: it is due again)
                return done, max(handled, fire - 1e-3)
            done.launched.append((fire, launched))
        return done, now

    def _launch(self, schedule: Schedule, fire: float, late: bool = False) -> str | None:
        """Launch ``schedule``'s operation for ``fire`` (once, whoever else tries: its
        key); its operation's id, or None when it could not be (tried again at the next
        pass)."""
        operation = self._operation(schedule)
        operation.metadata["schedule"] = {"name": schedule.name, "fire": _iso(fire)}
        key = schedule.key(fire)
        result = operation.launch(schedule.topic, key=key)
        if result.retcode >= 300:
            with self.registry.store.transaction() as tx:
                stored = tx.operation_by_key(key)
            if stored is None or stored.entrypoint != schedule.entrypoint:
                why = (safe_text(result.stderr, 500) if stored is None else
                       f"its key {key} names operation {stored.id}, a {stored.entrypoint}")
                logger.error("%s: schedule %s could not launch its fire of %s: %s (tried "
                             "again while it is on time)", self.name, schedule.name,
                             _iso(fire), why)
                return None
            logger.warning("%s: schedule %s launched %s for %s; its first messages wait in "
                           "the outbox: %s", self.name, schedule.name, stored.id, _iso(fire),
                           safe_text(result.stderr, 300))
            return stored.id
        operation_id = str(result.uuid)
        if operation_id != str(operation.uuid):
            logger.info("%s: schedule %s's fire of %s was launched already (%s)", self.name,
                        schedule.name, _iso(fire), operation_id)
        else:
            logger.info("%s: schedule %s launched %s %s for %s%s", self.name, schedule.name,
                        schedule.entrypoint, operation_id, _iso(fire),
                        " (catching up: run once)" if late else "")
        return operation_id
