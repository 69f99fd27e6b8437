"""``async def`` task bodies: started on the worker's event loop (:mod:`kser.aio`) by the
thread that claimed their tasks, which goes on; each one's end handed, from an end
thread, to the group commit; its hooks called and its message's outcome set once stored.
Their leases are renewed until then."""

from __future__ import annotations

from concurrent.futures import Future
from functools import partial
from typing import cast

from kser.aio import Later
from kser.entry import Entrypoint
from kser.errors import WorkerFatalError
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
              claimed_at: float) -> Later | Exception:
        """An ``async def`` body started on the worker's event loop: a future of its
        message's outcome, once its end is stored (by the group commit) and its hooks
        called; its lease renewed until then. The thread that claimed it goes on."""
        task_id = claim.task.id
        try:
            ready = self.bodies.prepare(entrypoint, kmsg, claim.task, claim.attempt,
                                        claimed_at)
        except Exception as exc:
            return failure(exc, kmsg)
        self.leases.hold(task_id, claim.attempt)
        outcome: Later = Future()
        aio = self.ctx.aio

        def ran(body: Future[End]) -> None:  # (on the loop: what blocks goes to a thread)
            if body.cancelled():  # (the worker stops: nothing stored, its record redone)
                self.leases.release(task_id)
            else:
                aio.then(partial(self._ended, kmsg, body, outcome))

        aio.submit(self.bodies.run_async(ready)).add_done_callback(ran)
        return outcome

    def _ended(self, kmsg: Message, body: Future[End],
               outcome: Later) -> None:
        """(an end thread) An async body's end handed to the group commit."""
        try:
            end = body.result()
        except BaseException as exc:  # (the chain itself failed: a bug, a hook)
            self.leases.release(kmsg.kser_metadata["task_id"])
            outcome.set_result(exc if isinstance(exc, WorkerFatalError)
                               else failure(cast(Exception, exc), kmsg))
            return
        self.ends.group.submit([end]).add_done_callback(
            lambda stored: self.ctx.aio.then(partial(self._stored, kmsg, end, stored,
                                                     outcome)))

    def _stored(self, kmsg: Message, end: End, stored: Future[list[Stored]],
                outcome: Later) -> None:
        """(an end thread) An async body's end stored: its hooks called and its outcome
        set; if the group's transaction failed, stored alone (tried again for a lease)."""
        try:
            try:
                ((transitions, error),) = stored.result()
            except WorkerFatalError as exc:
                outcome.set_result(exc)
                return
            except Exception:  # (the group commit logged why)
                result = settled(kmsg, partial(self.ends.store, end))
            else:
                result = settled(kmsg, partial(self.ends.after_stored, end, transitions,
                                               error))
            outcome.set_result(result)
        except WorkerFatalError as exc:
            outcome.set_result(exc)
        finally:
            self.leases.release(end.task.id)
