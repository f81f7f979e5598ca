"""Cancellation per the spec: pending tasks, queued sync calls, running sync calls."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import forkwait
from forkwait import fork, wait

pytestmark = pytest.mark.timeout(20)


@pytest.mark.anyio
async def test_cancelling_a_pending_task_cancels_it() -> None:
    """cancel() on a running task returns True; waiting raises forkwait.CancelledError."""
    started = anyio.Event()
    finished = False

    async def forever() -> None:
        nonlocal finished
        started.set()
        await anyio.sleep(3600)
        finished = True

    fut = fork(forever)
    await started.wait()
    assert fut.cancel() is True
    with pytest.raises(forkwait.CancelledError):
        await fut
    assert fut.cancelled()
    assert fut.done()
    assert not finished


@pytest.mark.anyio
async def test_cancelling_a_task_before_its_first_step_means_it_never_starts() -> None:
    started = False

    async def body() -> None:
        nonlocal started
        started = True

    fut = fork(body)
    assert fut.cancel() is True
    with anyio.fail_after(10), pytest.raises(forkwait.CancelledError):
        await fut
    await anyio.lowlevel.checkpoint()  # its task (a trio system task) has had its step
    assert fut.cancelled()
    assert not started


def test_cancelling_a_task_from_another_thread() -> None:
    """A task on the default runtime is cancelled from the sync caller's thread."""
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    fut = fork(forever)
    assert started.wait(timeout=10)
    assert fut.cancel() is True
    with pytest.raises(forkwait.CancelledError):
        wait(fut)
    assert fut.cancelled()


def test_a_sync_call_that_has_not_started_never_runs(max_threads: Any) -> None:
    """With the only worker busy, a queued call is cancelled and never starts."""
    max_threads(1)
    gate = threading.Event()
    ran: list[str] = []

    def occupy() -> None:
        gate.wait(timeout=10)

    blocker = fork(occupy)
    queued = fork(ran.append, "queued ran")
    assert queued.cancel() is True
    assert queued.cancelled()
    gate.set()
    wait(blocker)
    # The single worker takes jobs in order: once a later one has run, `queued` had
    # its turn and was skipped.
    wait(fork(ran.append, "later ran"))
    assert ran == ["later ran"]
    with pytest.raises(forkwait.CancelledError):
        wait(queued)


def test_a_running_sync_call_cannot_be_cancelled_and_its_result_arrives() -> None:
    """cancel() on a running thread call returns False; the value still comes."""
    started = threading.Event()
    gate = threading.Event()

    def working() -> str:
        started.set()
        gate.wait(timeout=10)
        return "finished"

    fut = fork(working)
    assert started.wait(timeout=10)
    assert fut.cancel() is False
    assert not fut.cancelled()
    gate.set()
    assert wait(fut) == "finished"


def test_cancel_after_completion_returns_false() -> None:
    """A finished call cannot be cancelled; its value stays."""
    fut = fork(abs, -1)
    assert wait(fut) == 1
    assert fut.cancel() is False
    assert fut.result() == 1


@pytest.mark.anyio
async def test_a_coroutine_queued_for_another_loop_is_cancelled_before_it_starts() -> None:
    """A coroutine forked from a worker thread and cancelled at once never runs."""
    ran = False

    async def never() -> None:
        nonlocal ran
        ran = True

    forked_and_cancelled = threading.Event()

    def fork_and_cancel() -> bool:
        cancelled = fork(never).cancel()  # to this loop, which the test holds up
        forked_and_cancelled.set()
        return cancelled

    fut = fork(fork_and_cancel)
    # Hold this loop's thread on purpose, so that it cannot start the task before
    # cancel() runs in the worker.
    assert forked_and_cancelled.wait(timeout=10)
    assert await fut is True
    for _ in range(3):
        await anyio.lowlevel.checkpoint()  # let the loop run whatever was scheduled
    assert ran is False


@pytest.mark.anyio
async def test_cancelling_the_awaiter_leaves_the_forked_call_running() -> None:
    """Outside a scope, cancelling the code that awaits a future does not cancel the call."""
    gate = anyio.Event()
    cancelled: list[BaseException] = []

    async def slow() -> str:
        await gate.wait()
        return "survived"

    async def awaiter(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await fut
        except anyio.get_cancelled_exc_class() as exc:
            cancelled.append(exc)
            raise

    fut = fork(slow)
    async with anyio.create_task_group() as tg:
        await tg.start(awaiter)  # which is suspended in `await fut` once this returns
        tg.cancel_scope.cancel()
    assert len(cancelled) == 1
    assert not fut.done()
    gate.set()
    assert await fut == "survived"


def test_waiting_on_a_cancelled_sync_future_from_another_thread(max_threads: Any) -> None:
    """A thread blocked in wait wakes with CancelledError when the call is cancelled."""
    max_threads(1)
    gate = threading.Event()
    blocker = fork(gate.wait, 10)
    queued = fork(abs, -1)
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            queued.result(timeout=10)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 10
    while not queued._waiters and time.monotonic() < deadline:
        time.sleep(0.001)  # until the waiter thread is registered, i.e. blocked
    assert queued.cancel() is True
    thread.join(timeout=10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], forkwait.CancelledError)
    gate.set()
    wait(blocker)


@pytest.mark.anyio
async def test_cancel_reaches_a_coroutine_on_its_way_to_the_callers_loop() -> None:
    """then(async_fn) of a call finished in a worker: the coroutine is handed to this
    loop (or trio run), which is busy; cancel() meanwhile stops it before it starts."""
    release, handed = threading.Event(), threading.Event()
    started = False

    async def after(_: forkwait.Future[bool]) -> None:
        nonlocal started
        started = True
        await anyio.sleep(3600)

    source = fork(release.wait, 10)
    child = source.then(after)
    source.add_done_callback(lambda _: handed.set())  # runs after then()'s hand-over
    release.set()
    assert handed.wait(10)  # blocking this thread: the child's task cannot start yet
    assert child.cancel() is True
    with anyio.fail_after(10), pytest.raises(forkwait.CancelledError):
        await child
    assert not started


@pytest.mark.asyncio
async def test_cancel_reaches_a_task_that_a_loops_task_factory_made() -> None:
    """A factory that makes asyncio.Task subclasses (as instrumentation does)."""

    class Instrumented(asyncio.Task[Any]):
        pass

    loop = asyncio.get_running_loop()
    loop.set_task_factory(lambda loop, coro, **kw: Instrumented(coro, loop=loop, **kw))
    try:
        fut = fork(asyncio.sleep, 3600)
        await asyncio.sleep(0)
        assert fut.cancel() is True
        async with asyncio.timeout(10):
            with pytest.raises(forkwait.CancelledError):
                await fut
        async with asyncio.timeout(10), forkwait.scope() as s:  # hung for good before
            fork(asyncio.sleep, 3600)
            await asyncio.sleep(0)
            s.cancel()
    finally:
        loop.set_task_factory(None)
