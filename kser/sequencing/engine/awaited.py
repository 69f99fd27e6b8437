"""``async def`` task bodies: started on the worker's event loop (:mod:`kser.aio`) by the
thread that claimed their tasks, which goes on; each one's end handed, from an end
thread, to the group commit; its hooks called and its message's outcome set once stored.
Their leases are renewed until then."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import cast

from cdumay_result import Result

from kser.aio import Later
from kser.entry import Entrypoint
from kser.errors import RedoError, WorkerFatalError
from kser.schemas import Message
from kser.sequencing.engine.bodies import Bodies
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import Claim, End
from kser.sequencing.engine.ends import Ends, Stored
from kser.sequencing.engine.leases import Leases
from kser.sequencing.engine.outcomes import failure, settled


class Awaited:
    """Runs the ``async def`` bodies of one engine's runner."""

    def __init__(self, ctx: Context, bodies: Bodies, ends: Ends, leases: Leases) -> None:
        self.ctx, self.bodies, self.ends, self.leases = ctx, bodies, ends, leases

    def start(self, entrypoint: type[Entrypoint], kmsg: Message, claim: Claim,
              claimed_at: float, let_go: Callable[[], None]) -> Later | Exception:
        """An ``async def`` body started on the worker's event loop (its lease held since
        its claim): a future of its message's outcome, once its end is stored (by the
        group commit) and its hooks called. The thread that claimed it goes on;
        ``let_go`` is called once the body is over (till then a copy of its message
        coming to this worker is a duplicate left to it), before the outcome is set."""
        task_id, attempt = claim.task.id, claim.attempt
        try:
            ready = self.bodies.prepare(entrypoint, kmsg, claim.task, attempt, claimed_at)
        except Exception as exc:  # (the runner lets its task go: no future for it)
            self.leases.release(task_id, attempt)
            return failure(exc, kmsg)
        self.leases.hold(task_id, attempt)
        outcome: Later = Future()
        aio = self.ctx.aio

        def ran(body: Future[End]) -> None:  # (on the loop: what blocks goes to a thread)
            if body.cancelled():  # (not by its time limit: that is a failure it returns)
                aio.then(partial(self._over, task_id, attempt, let_go, outcome, RedoError(
                    f"the async body of task {task_id} was cancelled before it ended: its "
                    "message is handled again")))
            else:
                aio.then(partial(self._ended, kmsg, attempt, body, let_go, outcome))

        aio.submit(self.bodies.run_async(ready)).add_done_callback(ran)
        return outcome

    def _ended(self, kmsg: Message, attempt: int, body: Future[End],
               let_go: Callable[[], None], outcome: Later) -> None:
        """(an end thread) An async body's end handed to the group commit."""
        try:
            end = body.result()
        except BaseException as exc:  # (the chain itself failed: a bug, a hook)
            self._over(kmsg.kser_metadata["task_id"], attempt, let_go, outcome,
                       exc if isinstance(exc, WorkerFatalError)
                       else failure(cast(Exception, exc), kmsg))
            return
        self.ends.group.submit([end]).add_done_callback(
            lambda stored: self.ctx.aio.then(partial(self._stored, kmsg, end, stored,
                                                     let_go, outcome)))

    def _stored(self, kmsg: Message, end: End, stored: Future[list[Stored]],
                let_go: Callable[[], None], outcome: Later) -> None:
        """(an end thread) An async body's end stored: its hooks called and its outcome
        set; if the group's transaction failed, stored alone (tried again for a lease)."""
        result: Result | Exception
        try:
            try:
                ((transitions, error),) = stored.result()
            except WorkerFatalError:
                raise
            except Exception:  # (the group commit logged why)
                result = settled(kmsg, partial(self.ends.store, end))
            else:
                result = settled(kmsg, partial(self.ends.after_stored, end, transitions,
                                               error))
        except WorkerFatalError as exc:
            result = exc
        self._over(end.task.id, end.attempt, let_go, outcome, result)

    def _over(self, task_id: str, attempt: int, let_go: Callable[[], None], outcome: Later,
              result: Result | Exception) -> None:
        """The body is over: its lease (this attempt's only: a redo of its message may
        hold the next one) and its task let go, then its outcome set (what it calls may
        handle the message again)."""
        self.leases.release(task_id, attempt)
        let_go()
        outcome.set_result(result)
