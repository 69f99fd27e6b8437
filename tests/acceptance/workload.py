"""The operations the acceptance tests run in real `kser worker` processes."""

import asyncio
import json
import os
import time

from cdumay_result import Result

from kser.sequencing import Branch, Parallel, Sensor
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()


def ran(task_id):
    """Append ``task_id`` to the side-effect log (KSER_TEST_SIDE_EFFECTS), if one is set:
    what proves that a task body ran once, whatever the store says."""
    path = os.environ.get("KSER_TEST_SIDE_EFFECTS")
    if path:
        with open(path, "a") as log:
            log.write(f"{task_id}\n")


def held(params, most=120.0):
    """With ``params["release"]``, wait until that file exists (at most ``most`` s): a
    test kills a worker mid-task without racing the task's end, however slow the machine,
    and then releases every held task by creating the file."""
    release = params.get("release")
    deadline = time.monotonic() + most
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)


@registry.subscribe
class Hop(Task):
    """Checks it saw every hop before it in ``retval["hops"]``, then adds its own index.

    With ``fail_at == index`` it fails until the file ``fixed`` names exists.
    """

    REQUIRED_FIELDS = ("index",)

    def run(self):
        ran(self.uuid)
        index = self.params["index"]
        seen = list(self.result.retval.get("hops", []))
        if seen != list(range(index)):
            return Result(uuid=self.uuid, retcode=500, stderr=f"hop {index} saw {seen}")
        hold = self.params.get("hold_until")  # the first hop waits for this file
        while index == 0 and hold and not os.path.exists(hold):
            time.sleep(0.1)
        if self.params.get("fail_at") == index and not os.path.exists(self.params["fixed"]):
            return Result(uuid=self.uuid, retcode=500, stderr=f"hop {index} fails on purpose")
        held(self.params)
        time.sleep(float(self.params.get("sleep", 0.02)))
        self.log(f"hop {index} after {seen}")
        return Result(uuid=self.uuid, stdout=f"hop {index}", retval={"hops": [*seen, index]},
                      retcode=self.params.get("retcode", 0) if index == 0 else 0)


@registry.subscribe
class Lone(Task):
    """A task sent alone; with ``hang_unless`` it never returns unless that file exists."""

    def run(self):
        ran(self.uuid)
        marker = self.params.get("hang_unless")
        while marker and not os.path.exists(marker):
            time.sleep(0.1)
        return Result(uuid=self.uuid, stdout="lone")


@registry.subscribe
class Chain(Operation):
    """``hops`` Hop tasks in a row."""

    def build_tasks(self, hops=5, **kwargs):
        return [Hop(params={"index": i}) for i in range(int(hops))]


@registry.subscribe
class Fan(Task):
    """A task of a shaped operation: checks that the results it received (merged, and
    ``upstream_results`` by name) are those of ``params["expects"]``, then returns
    ``retval {its name: True}``; sleeps ``params["sleep"]`` first."""

    def run(self):
        ran(self.uuid)
        held(self.params)
        time.sleep(float(self.params.get("sleep", 0.02)))
        expects = sorted(self.params.get("expects", []))
        upstream = self.upstream_results
        if sorted(upstream) != expects or any(r.retcode for r in upstream.values()):
            return Result(uuid=self.uuid, retcode=500,
                          stderr=f"{self.name} expected {expects}, got {sorted(upstream)}")
        received = sorted(self.result.retval or {})
        if received != sorted(self.params.get("received", [])):
            return Result(uuid=self.uuid, retcode=500,
                          stderr=f"{self.name} received {received}")
        return Result(uuid=self.uuid, stdout=self.name, retval={self.name: True})


@registry.subscribe
class Fanned(Operation):
    """``a >> Parallel(b1, b2, b3) >> c >> Parallel(d1, d2) >> e``; with ``params["slow"]``
    the tasks of the parallel groups take that many seconds, with ``params["hold"]`` they
    first wait for that file (tasks inherit their operation's params, so the operation's
    param has another name than the ``release`` of the tasks it holds)."""

    def build_tasks(self, slow=0.0, hold=None, **kwargs):
        def fan(name, expects, received, sleep=0.02, slow=False):
            params = {"expects": expects, "received": received, "sleep": sleep}
            if slow and hold:
                params["release"] = hold
            return Fan(name=name, params=params)

        bs, ds = ["b1", "b2", "b3"], ["d1", "d2"]
        return [fan("a", [], []),
                Parallel(*(fan(b, ["a"], ["a"], slow or 0.02, bool(slow)) for b in bs)),
                fan("c", bs, ["a", *bs]),
                Parallel(*(fan(d, ["c"], ["a", *bs, "c"], slow or 0.02, bool(slow))
                           for d in ds)),
                fan("e", ds, ["a", *bs, "c", *ds])]


@registry.subscribe
class Step(Task):
    """Records that it ran (KSER_TEST_SIDE_EFFECTS); sleeps ``params["sleep"]``; fails when
    ``params["fail"]``; returns ``retval {its name: [start, end]}``."""

    def run(self):
        ran(self.uuid)
        started = time.time()
        held(self.params)
        time.sleep(float(self.params.get("sleep", 0.02)))
        if self.params.get("fail"):
            return Result(uuid=self.uuid, retcode=500, stderr=f"{self.name} fails on purpose")
        return Result(uuid=self.uuid, stdout=self.name, retval={self.name: [started, time.time()]})


@registry.subscribe
class Diamond(Operation):
    def build_tasks(self, **kwargs):
        a, b, c, d = (Step(name=n) for n in "abcd")
        a >> [b, c] >> d
        return [a, b, c, d]


@registry.subscribe
class Choose(Branch):
    def choose(self):
        return self.params["pick"]


@registry.subscribe
class Branchy(Operation):
    def build_tasks(self, pick="left", **kwargs):
        choose = Choose(name="choose", params={"pick": pick})
        left, right = Step(name="left"), Step(name="right")
        join = Step(name="join", trigger_rule="none_failed_min_one_success")
        choose >> [left, right] >> join
        return [choose, left, right, join]


@registry.subscribe
class CleanUpAfterFailure(Operation):
    """x fails; cleanup (all_done) runs anyway; the operation's failure was handled."""

    def build_tasks(self, **kwargs):
        x = Step(name="x", params={"fail": True})
        after = Step(name="after")
        cleanup = Step(name="cleanup", trigger_rule="all_done")
        x >> after
        [x, after] >> cleanup
        return [x, after, cleanup]


@registry.subscribe
class ReadyAt(Sensor):
    """True once the file ``params["ready_file"]`` exists."""

    POKE_INTERVAL = 0.5
    TIMEOUT = 300  # (the test makes the file: only a hang should time it out)

    def poke(self):
        ran(self.uuid)
        return os.path.exists(self.params["ready_file"])


@registry.subscribe
class WaitThenStep(Operation):
    def build_tasks(self, ready_file, **kwargs):
        return [ReadyAt(name="wait", params={"ready_file": ready_file}), Step(name="then")]


@registry.subscribe
class SlowChild(Operation):
    """``x >> y``; x takes ``slow`` seconds, and first waits for the file ``hold``."""

    def build_tasks(self, slow=2.0, hold=None, **kwargs):
        x = {"sleep": slow, **({"release": hold} if hold else {})}
        return [Step(name="x", params=x), Step(name="y")]


@registry.subscribe
class WithChild(Operation):
    def build_tasks(self, slow=2.0, hold=None, **kwargs):
        child = {"slow": slow, **({"hold": hold} if hold else {})}
        return [Step(name="a"), SlowChild(name="child", params=child), Step(name="b")]


# -- issue 26: the wire is untrusted --

@registry.subscribe
class Announced(Operation):
    """One Hop; its end is announced to KSER_TEST_NOTIFY_TOPIC with a 3,000-character
    payload (a test gives that topic a smaller ``max.message.bytes``: the broker refuses
    the announcement for good)."""

    ON_EXIT_NOTIFY = {"topic": os.environ.get("KSER_TEST_NOTIFY_TOPIC", "kser-test-announced"),
                      "payload": "x" * 3000}

    def build_tasks(self, **kwargs):
        return [Hop(params={"index": 0})]


# -- issue 26: untrusted runs --

@registry.subscribe
class FailsOnce(Task):
    """Raises on its first attempt; its second returns a fresh result of its own: stdout
    "ok", retval ``{its name: its attempt}`` (retried at once: a 0.1 s backoff)."""

    MAX_RETRIES = 1
    RETRY_MIN_BACKOFF = 0.1
    RETRY_MAX_BACKOFF = 0.1

    def run(self):
        ran(self.uuid)
        if self.attempt == 1:
            raise RuntimeError(f"{self.name} fails on its first attempt")
        return Result(uuid=self.uuid, stdout="ok", retval={self.name: self.attempt})


@registry.subscribe
class Receives(Task):
    """Returns what it received (the forwarded result: retcode, stdout, stderr and a copy
    of retval) as ``retval {"received": ...}``."""

    def run(self):
        ran(self.uuid)
        got = self.result
        return Result(uuid=self.uuid, stdout=self.name, retval={"received": json.loads(
            json.dumps(dict(retcode=got.retcode, stdout=got.stdout, stderr=got.stderr,
                            retval=got.retval)))})


@registry.subscribe
class RetriedInParallel(Operation):
    """``first >> Parallel(flaky, ok1, ok2) >> join``: flaky fails once, then succeeds."""

    def build_tasks(self, **kwargs):
        return [Step(name="first"),
                Parallel(FailsOnce(name="flaky"), Step(name="ok1"), Step(name="ok2")),
                Receives(name="join")]


@registry.subscribe
class FailsAfterFirst(Operation):
    """``first >> second``: first prints "first", second fails (a result of its own,
    stderr only)."""

    def build_tasks(self, **kwargs):
        return [Step(name="first"), Step(name="second", params={"fail": True})]


# -- issue 29: async task bodies --

#: the release file each worker process's bodies wait for: one event per file, set by
#: one watcher (thousands of bodies each polling the file would be the load measured)
_released: dict[str, asyncio.Event] = {}
_watchers: set[asyncio.Task] = set()


async def released(path):
    event = _released.get(path)
    if event is None:
        event = _released[path] = asyncio.Event()

        async def watch():
            while not os.path.exists(path):
                await asyncio.sleep(0.2)
            event.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        _watchers.add(watcher)  # (a task nobody holds may be collected mid-wait)
        watcher.add_done_callback(_watchers.discard)
    await event.wait()


@registry.subscribe
class AsyncWait(Task):
    """``async def``: records that it ran, awaits the file ``params["release"]`` (no
    thread held), then returns what the task before it left, and its own name."""

    async def run(self):
        ran(self.uuid)
        await released(self.params["release"])
        return Result(uuid=self.uuid, stdout=self.name, retval={self.name: "released"})


@registry.subscribe
class AsyncThenStep(Operation):
    """``wait`` (async, until the release file exists) >> ``after`` (a thread's body)."""

    def build_tasks(self, release, **kwargs):
        return [AsyncWait(name="wait", params={"release": release}), Step(name="after")]
