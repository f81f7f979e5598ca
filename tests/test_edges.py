"""Edges: an exception asyncio refuses, loops that close under a fork, waits that stop
early, and failures that must be reported exactly when nobody raised them."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from typing import Any

import pytest

import forkwait
from forkwait import Future, collect_all, fork, wait

pytestmark = pytest.mark.timeout(60)


def _collect(fut_box: list[Any]) -> None:
    fut_box.clear()
    gc.collect()


def _until(predicate: Any) -> None:
    """Spin until ``predicate()``: for internal states no event reports (a waiter that
    registered), with a bound so that a broken test fails instead of hanging."""
    for _ in range(10_000_000):
        if predicate():
            return
    raise AssertionError("the state never came")


# -- StopIteration --------------------------------------------------------------------


def test_a_call_raising_stopiteration_fails_its_awaiter_instead_of_hanging() -> None:
    release = threading.Event()

    def exhausted() -> int:
        release.wait(10)
        return next(iter([]))

    async def main() -> None:
        fut = fork(exhausted)
        awaiting = asyncio.ensure_future(asyncio.wait_for(fut, 10))
        await asyncio.sleep(0)  # the awaiting task registers its waiter
        release.set()
        with pytest.raises(RuntimeError, match="raised StopIteration") as info:
            await awaiting
        assert isinstance(info.value.__cause__, StopIteration)

    asyncio.run(main())


def test_sync_code_gets_the_stopiteration_itself() -> None:
    with pytest.raises(StopIteration):
        wait(fork(next, iter([])))


# -- loops that close under a fork ------------------------------------------------------


async def _one() -> int:
    return 1


def test_a_coroutine_forked_into_a_loop_that_closes_before_starting_it_fails_its_wait() -> None:
    """A forked sync call forks for the loop it works for (spec rule 2); that loop stops
    and closes before it runs the callback that would make the task."""
    go = threading.Event()
    inner: list[Future[int]] = []

    def forks_later() -> None:
        go.wait(10)
        inner.append(fork(_one))

    async def main() -> Future[None]:
        return fork(forks_later)

    loop = asyncio.new_event_loop()
    outer = loop.run_until_complete(main())  # the loop stops with forks_later running
    go.set()
    wait(outer, timeout=10)
    loop.close()
    with pytest.raises(RuntimeError, match="closed before it started"):
        wait(inner[0], timeout=10)


# -- failures reported exactly when nobody raised them -----------------------------------


def test_a_failure_handed_to_a_task_cancelled_before_it_raised_it_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The awaiting task waits across threads (a sync call): the failure reaches its
    waiter, then the task is cancelled before it runs again."""
    release = threading.Event()
    box: list[Any] = []

    def boom() -> None:
        release.wait(10)
        raise ValueError("handed over, never raised")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = fork(boom)
        box.append(fut)

        async def awaits() -> None:
            await fut

        task = asyncio.ensure_future(awaits())
        await asyncio.sleep(0)  # its waiter is registered first...
        drained = threading.Event()

        def cancel_the_task(_: Future[None]) -> None:  # ...this next
            loop.call_soon_threadsafe(task.cancel)
            drained.set()

        fut.add_done_callback(cancel_the_task)

        def hold_the_loop() -> None:
            # Until both wake-ups are queued: the hand-over, then the cancellation, in
            # this order, before the task can run again.
            release.set()
            assert drained.wait(10)

        loop.call_soon(hold_the_loop)
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="forkwait"):
        # asyncio's own loop: it runs callbacks from other threads in the order they
        # came, behind the task's wake-up (uvloop may run the cancel first).
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(main())
        _collect(box)
    assert "never retrieved" in caplog.text
    assert "handed over, never raised" in caplog.text


def test_a_failure_on_its_way_to_a_loop_closed_before_taking_it_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task awaits the failing call from a loop that stops, and is closed, before it
    runs the hand-off queued for it: nobody raised the failure, so it is reported."""
    box: list[Any] = []
    go = threading.Event()

    def boom() -> None:
        assert go.wait(10)
        raise ValueError("handed to a loop that closed")

    box.append(fork(boom))
    loop = asyncio.new_event_loop()

    async def awaits() -> None:
        await box[0]

    task = loop.create_task(awaits())
    loop.run_until_complete(asyncio.sleep(0))  # one turn: the task now awaits; the loop stops
    handed = threading.Event()
    box[0].add_done_callback(lambda _: handed.set())  # after the task's hand-off is queued
    go.set()
    assert handed.wait(10)
    with caplog.at_level(logging.WARNING, logger="forkwait"):
        loop.close()  # with the hand-off still queued
        del task, loop
        _collect(box)
    assert "never retrieved" in caplog.text
    assert "handed to a loop that closed" in caplog.text


def test_a_failure_one_awaiter_raised_is_not_reported_when_another_gives_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box: list[Any] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def boom() -> None:
            await gate.wait()
            raise ValueError("raised by the first awaiter")

        fut = fork(boom)
        box.append(fut)

        async def raises_it() -> str:
            with pytest.raises(ValueError, match="raised by the first awaiter"):
                await fut
            return "raised"

        async def gives_it_back() -> None:
            await fut

        first = asyncio.ensure_future(raises_it())
        second = asyncio.ensure_future(gives_it_back())
        # Both register their waiters first: no event says so.
        while len(fut._waiters or ()) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0)
        fut.add_done_callback(lambda _: second.cancel())  # then this cancels the second
        gate.set()
        assert await first == "raised"
        with pytest.raises(asyncio.CancelledError):
            await second

    with caplog.at_level(logging.WARNING, logger="forkwait"):
        asyncio.run(main())
        _collect(box)
    assert "never retrieved" not in caplog.text


def test_a_failure_after_ctrl_c_ended_the_wait_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()
    release = threading.Event()

    def boom() -> None:
        started.set()
        release.wait(10)
        raise ValueError("failed after the wait was interrupted")

    fut = fork(boom)
    box = [fut]
    assert started.wait(10)  # a worker has it: wait() cannot run it inline

    assert threading.current_thread() is threading.main_thread()  # where Python handles signals
    main = threading.get_ident()

    def interrupt_once_blocked() -> None:
        _until(lambda: bool(box[0]._waiters))
        signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C, to the thread blocked in wait

    # Ctrl-C raises KeyboardInterrupt even if the runner was started with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_once_blocked, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            wait(fut)
    finally:
        signal.signal(signal.SIGINT, previous)
    with caplog.at_level(logging.WARNING, logger="forkwait"):
        release.set()
        _until(fut.done)
        del fut
        _collect(box)
    assert "failed after the wait was interrupted" in caplog.text


# -- waits that end as soon as they can ---------------------------------------------------


def test_a_sync_wait_on_a_cancelled_collect_all_ends_before_its_members() -> None:
    started = threading.Event()
    release = threading.Event()
    box: list[Future[list[Future[None]]]] = []

    def member() -> None:
        started.set()
        release.wait(10)

    member_fut = fork(member)
    assert started.wait(10)
    collected = collect_all([member_fut])
    box.append(collected)

    def cancel_once_blocked() -> None:
        _until(lambda: bool(collected._waiters))  # the waiter blocks on both futures
        collected.cancel()

    threading.Thread(target=cancel_once_blocked, daemon=True).start()
    try:
        with pytest.raises(forkwait.CancelledError):
            wait(collected)
        assert not member_fut.done(), "the wait outlasted the cancellation"
    finally:
        release.set()
    wait(member_fut, timeout=10)


def test_cancel_reaches_a_coroutine_on_its_way_to_the_loop() -> None:
    """``then(fn)`` where ``fn`` returns a coroutine: the loop has not made its task yet
    (the loop is busy), yet ``cancel()`` stops it."""
    hogging = threading.Event()
    hold = threading.Event()
    ran: list[bool] = []

    async def hog() -> None:
        hogging.set()
        hold.wait(10)  # blocks the default runtime's loop thread on purpose

    async def follow() -> str:
        ran.append(True)
        return "ran"

    busy = fork(hog)
    try:
        assert hogging.wait(10)
        parent = fork(lambda: 1)
        assert wait(parent) == 1
        child = parent.then(lambda _: follow())
        assert child.cancel()
    finally:
        hold.set()
    wait(busy, timeout=10)
    with pytest.raises(forkwait.CancelledError):
        wait(child, timeout=10)
    assert not ran


def test_cancel_in_the_loops_own_thread_reaches_a_coroutine_on_its_way() -> None:
    """A sync call returned a coroutine: its loop has been handed it, and the task is not
    made yet when the loop's own thread cancels it."""
    from forkwait._hosts import OnItsWay

    ran: list[bool] = []

    async def follow() -> None:
        ran.append(True)

    async def main() -> None:
        fut = fork(lambda: follow())
        _until(lambda: isinstance(fut._handle, OnItsWay))  # holds the loop meanwhile
        assert fut.cancel()
        with pytest.raises(forkwait.CancelledError):
            await fut

    asyncio.run(main())
    assert not ran


# -- asyncio.wait ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_asyncio_wait_on_a_fork_is_refused_at_once_rather_than_hanging() -> None:
    """asyncio.wait() adds its callback to the future itself, and it would run in the
    worker thread, which cannot wake the loop; wrapped in tasks, the forks work."""
    futs = [fork(sum, range(10)), fork(sum, range(100))]
    with pytest.raises(TypeError, match=r"asyncio\.wait\(\) takes asyncio futures.*ensure_future"):
        await asyncio.wait(futs)
    done, pending = await asyncio.wait([asyncio.ensure_future(fut) for fut in futs])
    assert sorted(task.result() for task in done) == [45, 4950]
    assert not pending
