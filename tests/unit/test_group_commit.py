"""GroupCommit: what several threads hand over while a transaction runs goes in the next
one, together; a failing transaction's exception reaches each of its submitters."""

import threading

import pytest

from kser.sequencing.group import GroupCommit

TIMEOUT = 10


def test_what_is_handed_over_during_a_commit_is_committed_together():
    started, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def commit(items):
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            assert release.wait(TIMEOUT)
        return [item * 10 for item in items]

    group = GroupCommit(commit)
    first = group.submit([1])
    assert started.wait(TIMEOUT)
    later = [group.submit([2, 3]), group.submit([4]), group.submit([5, 6])]
    release.set()
    assert first.result(TIMEOUT) == [10]
    assert [f.result(TIMEOUT) for f in later] == [[20, 30], [40], [50, 60]]
    assert calls == [[1], [2, 3, 4, 5, 6]]  # one transaction for the three submissions


def test_a_failing_commit_fails_each_of_its_submissions_and_the_next_one_runs():
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def commit(items):
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            assert release.wait(TIMEOUT)
            return ["ok"]
        if "bad" in items:
            raise ValueError("a bug in one end")
        return ["ok"] * len(items)

    group = GroupCommit(commit)
    first = group.submit(["a"])
    assert started.wait(TIMEOUT)
    shared = [group.submit(["b"]), group.submit(["bad"])]
    release.set()
    assert first.result(TIMEOUT) == ["ok"]
    for future in shared:
        with pytest.raises(ValueError, match="a bug in one end"):
            future.result(TIMEOUT)
    assert group.submit(["c"]).result(TIMEOUT) == ["ok"]  # the thread is still there


def test_a_transaction_takes_at_most_so_many_items():
    started, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def commit(items):
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            assert release.wait(TIMEOUT)
        return list(items)

    group = GroupCommit(commit, most=4)
    group.submit([0])
    assert started.wait(TIMEOUT)
    futures = [group.submit([1, 2]), group.submit([3, 4]), group.submit([5]),
               group.submit([6, 7, 8, 9, 10])]  # (more than most: a transaction alone)
    release.set()
    assert [f.result(TIMEOUT) for f in futures] == [[1, 2], [3, 4], [5], [6, 7, 8, 9, 10]]
    assert calls == [[0], [1, 2, 3, 4], [5], [6, 7, 8, 9, 10]]


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
    started, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def commit(items):
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            assert release.wait(TIMEOUT)
        return list(items)

    group = GroupCommit(commit)
    first = group.submit([1])
    assert started.wait(TIMEOUT)
    # (one transaction at a time: these wait for the running one, then share the next)
    later = [group.submit([2], here=True), group.submit([3], here=True)]
    assert not any(future.done() for future in later)
    release.set()
    assert [f.result(TIMEOUT) for f in [first, *later]] == [[1], [2], [3]]
    assert calls == [[1], [2, 3]]


def test_a_failure_in_the_callers_own_transaction_is_its_futures():
    def commit(items):
        raise ValueError("a bug in one end")

    future = GroupCommit(commit).submit(["a"], here=True)
    with pytest.raises(ValueError, match="a bug in one end"):
        future.result(TIMEOUT)
