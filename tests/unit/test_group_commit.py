"""GroupCommit: what several threads hand over while a transaction runs goes in the next
one, together; a failing transaction's exception reaches each of its submitters; a
caller about to wait stores its own items when no transaction runs."""

import threading

import pytest

from kser.sequencing.engine.group import GroupCommit

TIMEOUT = 10


class FirstBlocks:
    """A commit function that records each call and holds the first one until
    :attr:`release` is set (so that what is submitted meanwhile waits for the next)."""

    def __init__(self, outcome=list):
        self.outcome = outcome
        self.calls: list[list] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.started.set()
            assert self.release.wait(TIMEOUT)
        return self.outcome(items)


def test_what_is_handed_over_during_a_commit_is_committed_together():
    commit = FirstBlocks(lambda items: [item * 10 for item in items])
    group = GroupCommit(commit)
    first = group.submit([1])
    assert commit.started.wait(TIMEOUT)
    later = [group.submit([2, 3]), group.submit([4]), group.submit([5, 6])]
    commit.release.set()
    assert first.result(TIMEOUT) == [10]
    assert [f.result(TIMEOUT) for f in later] == [[20, 30], [40], [50, 60]]
    assert commit.calls == [[1], [2, 3, 4, 5, 6]]  # one transaction for the three


def test_a_failing_commit_fails_each_of_its_submissions_and_the_next_one_runs():
    def outcome(items):
        if "bad" in items:
            raise ValueError("a bug in one end")
        return ["ok"] * len(items)

    commit = FirstBlocks(outcome)
    group = GroupCommit(commit)
    first = group.submit(["a"])
    assert commit.started.wait(TIMEOUT)
    shared = [group.submit(["b"]), group.submit(["bad"])]
    commit.release.set()
    assert first.result(TIMEOUT) == ["ok"]
    for future in shared:
        with pytest.raises(ValueError, match="a bug in one end"):
            future.result(TIMEOUT)
    assert group.submit(["c"]).result(TIMEOUT) == ["ok"]  # the thread is still there


def test_a_transaction_takes_at_most_so_many_items():
    commit = FirstBlocks()
    group = GroupCommit(commit, most=4)
    group.submit([0])
    assert commit.started.wait(TIMEOUT)
    futures = [group.submit([1, 2]), group.submit([3, 4]), group.submit([5]),
               group.submit([6, 7, 8, 9, 10])]  # (more than most: a transaction alone)
    commit.release.set()
    assert [f.result(TIMEOUT) for f in futures] == [[1, 2], [3, 4], [5], [6, 7, 8, 9, 10]]
    assert commit.calls == [[0], [1, 2, 3, 4], [5], [6, 7, 8, 9, 10]]


def test_a_caller_about_to_wait_stores_its_items_itself_when_no_transaction_runs():
    threads: list[str] = []

    def commit(items):
        threads.append(threading.current_thread().name)
        return list(items)

    group = GroupCommit(commit, name="committer")
    assert group.submit([1], here=True).result(TIMEOUT) == [1]
    assert threads == [threading.current_thread().name]  # no handoff
    assert group.submit([2]).result(TIMEOUT) == [2]
    assert threads[-1] == "committer"


def test_a_caller_about_to_wait_hands_over_while_a_transaction_runs():
    commit = FirstBlocks()
    group = GroupCommit(commit)
    first = group.submit([1])
    assert commit.started.wait(TIMEOUT)
    # (one transaction at a time: these wait for the running one, then share the next)
    later = [group.submit([2], here=True), group.submit([3], here=True)]
    assert not any(future.done() for future in later)
    commit.release.set()
    assert [f.result(TIMEOUT) for f in [first, *later]] == [[1], [2], [3]]
    assert commit.calls == [[1], [2, 3]]


def test_a_failure_in_the_callers_own_transaction_is_its_futures():
    def commit(items):
        raise ValueError("a bug in one end")

    future = GroupCommit(commit).submit(["a"], here=True)
    with pytest.raises(ValueError, match="a bug in one end"):
        future.result(TIMEOUT)
