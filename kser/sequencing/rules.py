"""Trigger rules: when a task with upstream tasks runs, with Airflow's meanings.

A task's rule is checked each time one of its upstream tasks ends (and when its
operation starts or is recovered), from how many upstream tasks there are and how
many ended SUCCESS, FAILED (having run, or because their own upstream failed) and
SKIPPED. The answer is one of :class:`Decision`: run it now, wait for more upstream
tasks to end, or end it without running, SKIPPED or FAILED ("upstream failed"),
which is checked in turn against the tasks downstream of it.

=============================== ====================================================
rule                            runs when ... (else, once it never can)
=============================== ====================================================
``all_success`` (default)       every upstream task succeeded (FAILED if one
                                failed, SKIPPED if one was skipped)
``all_failed``                  every upstream task failed (SKIPPED if one
                                succeeded or was skipped)
``all_done``                    every upstream task ended, however
``one_success``                 one upstream task succeeded, without waiting for
                                the others (SKIPPED if all were skipped, else FAILED)
``one_failed``                  one upstream task failed, without waiting (SKIPPED)
``one_done``                    one upstream task succeeded or failed (SKIPPED)
``none_failed``                 every upstream task ended and none failed (skipped
                                ones are fine; FAILED if one failed)
``none_failed_min_one_success`` as ``none_failed``, with at least one success
                                (SKIPPED if all were skipped)
``none_skipped``                every upstream task ended and none was skipped
                                (SKIPPED if one was)
``always``                      at once, when the operation starts: it waits for
                                nothing
=============================== ====================================================

A task without upstream tasks runs when its operation starts, whatever its rule.
"""

from __future__ import annotations

from enum import StrEnum

from cdumay_error.types import ValidationError


class TriggerRule(StrEnum):
    """When a task runs, from the states of its upstream tasks (see the module's table)."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"

    @classmethod
    def of(cls, value: str | TriggerRule | None, owner: str = "a task") -> TriggerRule:
        """``value`` as a rule (None: ``all_success``); a clear error for an unknown one."""
        if value is None:
            return cls.ALL_SUCCESS
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(
                f"Unknown trigger rule {value!r} for {owner}: use one of "
                f"{', '.join(rule.value for rule in cls)}",
                extra=dict(trigger_rule=str(value))) from None


class Decision(StrEnum):
    """What a task's rule says, given its upstream tasks' states."""

    RUN = "run"
    WAIT = "wait"
    SKIP = "skip"
    #: it never runs, because tasks it needed failed (Airflow's "upstream_failed")
    FAIL = "fail"


def decide(rule: TriggerRule | str | None, upstream: int, succeeded: int, failed: int,
           skipped: int) -> Decision:
    """What ``rule`` says for a task with ``upstream`` upstream tasks, of which so many
    ``succeeded``, ``failed`` (ran and failed, or did not run because theirs failed) and
    were ``skipped`` (the others have not ended yet)."""
    rule = TriggerRule.of(rule)
    if upstream == 0 or rule is TriggerRule.ALWAYS:
        return Decision.RUN
    done = succeeded + failed + skipped
    all_done = done >= upstream
    if rule is TriggerRule.ALL_SUCCESS:
        if failed:
            return Decision.FAIL
        if skipped:
            return Decision.SKIP
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.ALL_FAILED:
        if succeeded or skipped:
            return Decision.SKIP
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.ALL_DONE:
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.ONE_SUCCESS:
        if succeeded:
            return Decision.RUN
        if not all_done:
            return Decision.WAIT
        return Decision.SKIP if skipped == upstream else Decision.FAIL
    if rule is TriggerRule.ONE_FAILED:
        if failed:
            return Decision.RUN
        return Decision.SKIP if all_done else Decision.WAIT
    if rule is TriggerRule.ONE_DONE:
        if succeeded or failed:
            return Decision.RUN
        return Decision.SKIP if all_done else Decision.WAIT
    if rule is TriggerRule.NONE_FAILED:
        if failed:
            return Decision.FAIL
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS:
        if failed:
            return Decision.FAIL
        if not all_done:
            return Decision.WAIT
        return Decision.SKIP if skipped == upstream else Decision.RUN
    # NONE_SKIPPED
    if skipped:
        return Decision.SKIP
    return Decision.RUN if all_done else Decision.WAIT

