"""Regressions for races found in review: each once hung, ran twice or lost something."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import pytest

import forkwait
from forkwait import Future, fork, wait, wait_all
from tests.conftest import run_script

pytestmark = pytest.mark.timeout(30)


@pytest.mark.anyio
async def test_cancel_before_the_tasks_first_step_settles_the_future() -> None:
    """A task cancelled before it ever ran is cancelled, and its coroutine is closed
    (no "never awaited" warning: warnings are errors here)."""
    ran = False

    async def work() -> int:
        nonlocal ran
        ran = True
        return 1

    fut = fork(work)
    assert fut.cancel() is True
    with pytest.raises(forkwait.CancelledError):
        await fut
    assert fut.cancelled()
    assert not ran
    gc.collect()


def test_cancel_racing_the_loop_that_starts_a_queued_coroutine() -> None:
    """From a plain thread: cancel() right after fork either wins (never runs) or loses
    (runs to the end); never both, never neither."""
    outcomes: set[str] = set()
    for _ in range(200):
        ran: list[int] = []

        async def work(ran: list[int] = ran) -> int:
            ran.append(1)
            return 1

        fut = fork(work)
        cancelled = fut.cancel()
        try:
            value = wait(fut, timeout=10)
        except forkwait.CancelledError:
            assert cancelled
            assert ran == []
            outcomes.add("cancelled")
        else:
            assert value == 1
            assert ran == [1]
            outcomes.add("ran")
    assert outcomes  # at least one outcome was seen; each was consistent


def test_a_base_exception_in_a_callback_kills_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """SystemExit from a done callback is logged; later callbacks, waiters and calls go on."""
    gate = threading.Event()
    fut = fork(gate.wait, 10)
    seen: list[str] = []

    def exits(_: Future[bool]) -> None:
        raise SystemExit(3)

    fut.add_done_callback(exits)
    fut.add_done_callback(lambda _: seen.append("second"))
    blocked: list[bool] = []
    waiter = threading.Thread(target=lambda: blocked.append(fut.result(timeout=10)))
    waiter.start()
    with caplog.at_level(logging.ERROR, logger="forkwait"):
        gate.set()
        waiter.join(timeout=10)
    assert seen == ["second"]
    assert blocked == [True]
    assert "SystemExit" in caplog.text
    assert wait(fork(abs, -2), timeout=10) == 2  # the pool still serves calls


def test_a_then_child_cancelled_before_its_parent_ends_never_runs_fn() -> None:
    """then()'s future is queued until the parent is done, so cancel() stops fn."""
    gate = threading.Event()
    parent = fork(gate.wait, 10)
    ran: list[str] = []
    child = parent.then(lambda _: ran.append("fn"))
    assert child.cancel() is True
    gate.set()
    wait(parent)
    assert wait(parent.then(lambda _: "after")) == "after"  # callbacks run in order
    assert ran == []
    with pytest.raises(forkwait.CancelledError):
        wait(child)


@pytest.mark.asyncio
async def test_then_with_an_async_fn_runs_on_the_callers_loop() -> None:
    """An awaitable returned by then's fn goes to the loop that called then()."""

    async def which_loop(_: Future[int]) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert await fork(abs, -1).then(which_loop) is asyncio.get_running_loop()


def test_raising_the_limit_starts_workers_for_every_queued_call(max_threads: Any) -> None:
    """With 8 calls queued behind a limit of 1, raising the limit to 8 runs all at once
    (each waits at a barrier that only 8 concurrent calls can pass)."""
    max_threads(1)
    barrier = threading.Barrier(8, timeout=20)
    futs = [fork(barrier.wait) for _ in range(8)]
    max_threads(8)
    assert sorted(wait_all(futs, timeout=25)) == list(range(8))


@pytest.mark.asyncio
async def test_polling_with_timeouts_does_not_pile_up_waiters() -> None:
    """Each timed-out await leaves a cancelled waiter behind; they are pruned, not kept."""
    gate = asyncio.Event()
    fut = fork(gate.wait)
    for _ in range(100):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait(fut), 0.001)  # type: ignore[arg-type]
    assert fut._waiters is not None
    assert len(fut._waiters) <= 32  # pruned each time the list doubles
    gate.set()
    assert await fut is True


def _add_callbacks_as_it_finishes(threads: int, each: int) -> tuple[int, bool]:
    """Add callbacks from several threads while the call completes; count the runs."""
    gate = threading.Event()
    fut = fork(gate.wait, 10)
    start = threading.Barrier(threads + 1, timeout=10)
    calls: list[int] = []
    lock = threading.Lock()
    all_ran = threading.Event()

    def count(_: Future[bool]) -> None:
        with lock:
            calls.append(1)
            if len(calls) == threads * each:
                all_ran.set()

    def add_many() -> None:
        start.wait()
        for _ in range(each):
            fut.add_done_callback(count)

    adders = [threading.Thread(target=add_many) for _ in range(threads)]
    for thread in adders:
        thread.start()
    start.wait()
    gate.set()
    for thread in adders:
        thread.join(timeout=10)
    value = wait(fut)
    # The call may finish after the adders do; its completer then runs what they added.
    all_ran.wait(timeout=10)
    return len(calls), value


def test_callbacks_added_while_the_call_finishes_run_exactly_once() -> None:
    """Eight threads add callbacks as the call completes: none is lost or run twice."""
    for _ in range(20):
        assert _add_callbacks_as_it_finishes(8, 200) == (8 * 200, True)


@pytest.mark.asyncio
async def test_a_task_cancelled_by_someone_else_before_its_first_step_is_cancelled() -> None:
    """A sweep over all_tasks() (as asyncio.run's teardown does) cancels the task before
    it ever ran: the future still settles, and the coroutine is closed (no "never
    awaited" warning: warnings are errors here)."""

    async def work() -> int:
        return 1

    fut = fork(work)
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    with pytest.raises(forkwait.CancelledError):
        await fut
    gc.collect()


def test_cancel_from_another_thread_as_the_loop_starts_the_task() -> None:
    """cancel() of a coroutine fork made from plain code returns False only once the
    call has finished; True otherwise (a request, as for asyncio tasks)."""
    for _ in range(2000):

        async def work() -> int:
            return 1

        fut = fork(work)
        if not fut.cancel():
            assert fut.done()
        try:
            assert wait(fut, timeout=10) == 1
        except forkwait.CancelledError:
            assert fut.cancelled()


def test_a_worker_that_forks_the_process_does_not_serve_the_parents_queue() -> None:
    """os.fork() inside a forked call: in the child, the parent's queued calls do not
    run a second time (the worker's thread ends there instead)."""
    result = run_script(
        """
        import os, signal, threading, time
        import forkwait
        from forkwait import fork, wait

        forkwait.configure(max_threads=1)
        gate = threading.Event()

        def job(n):
            os.write(1, f"job {n} ran in {os.getpid()}\\n".encode())

        def forks_the_process():
            gate.wait(10)
            pid = os.fork()
            if pid == 0:
                return None  # the child: this worker thread is all there is
            deadline = time.monotonic() + 10
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    return "child hung"
                time.sleep(0.01)
            return "child ended"

        first = fork(forks_the_process)
        queued = [fork(job, n) for n in range(2)]
        gate.set()
        os.write(1, f"{wait(first, timeout=20)}\\n".encode())  # one write: no interleaving
        for fut in queued:
            wait(fut, timeout=20)
        os.write(1, f"parent {os.getpid()}\\n".encode())
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    parent = lines[-1].split()[1]
    assert "child ended" in lines, result.stdout
    ran = sorted(line for line in lines if line.startswith("job"))
    assert ran == [f"job 0 ran in {parent}", f"job 1 ran in {parent}"], result.stdout


def test_a_future_whose_waiters_all_timed_out_leaves_no_list_behind() -> None:
    """Timed-out sync waits take their waiter back; the list goes when the call ends."""
    from forkwait._future import _lists

    gate = threading.Event()
    fut = fork(gate.wait, 10)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            wait(fut, timeout=0.01)
    assert fut in _lists
    gate.set()
    assert wait(fut) is True
    assert fut not in _lists


class _HoldsTheHandOff(asyncio.SelectorEventLoop):
    """A real loop that, once ``holding`` is set, holds the hand-off that makes a fork's
    task at the caller until ``proceed`` is set, so that a cancel() can come between."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.arrived = threading.Event()
        self.proceed = threading.Event()

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        if self.holding.is_set() and getattr(callback, "__name__", "") == "_start":
            self.arrived.set()
            assert self.proceed.wait(10)
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_cancel_overtaking_the_hand_off_of_a_returned_coroutine_cancels_it() -> None:
    """A sync call that returns a coroutine hands it to its loop; a cancel() whose own
    hand-off reaches the loop first found no task to cancel, returned True, and the
    coroutine then ran to the end."""
    ran: list[str] = []

    async def would_run() -> str:
        ran.append("ran")
        return "ran to the end"

    def returns_a_coroutine() -> Any:
        return would_run()

    loop = _HoldsTheHandOff()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:

        async def fork_it() -> Future[str]:
            return fork(returns_a_coroutine)

        loop.holding.set()
        fut = asyncio.run_coroutine_threadsafe(fork_it(), loop).result(10)
        assert loop.arrived.wait(10)  # the call ran; its coroutine is on its way
        assert fut.cancel() is True
        loop.proceed.set()
        with pytest.raises(forkwait.CancelledError):
            wait(fut, timeout=10)
        assert fut.cancelled()
        assert ran == []
    finally:
        loop.proceed.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_cancel_overtaking_the_hand_off_to_a_trio_run_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for a trio run: the run's hand-off is held where forkwait queues it."""
    import trio

    import forkwait._trio as trio_host

    ran: list[str] = []
    arrived = threading.Event()
    proceed = threading.Event()
    queue_in_run = trio_host.call_soon

    def holding_the_start(token: Any, fn: Any, *args: Any) -> bool:
        if fn is trio_host.start:
            arrived.set()
            assert proceed.wait(10)
        return queue_in_run(token, fn, *args)

    monkeypatch.setattr(trio_host, "call_soon", holding_the_start)

    async def would_run() -> str:
        ran.append("ran")
        return "ran to the end"

    def returns_a_coroutine() -> Any:
        return would_run()

    async def main() -> None:
        fut = fork(returns_a_coroutine)
        await trio.to_thread.run_sync(arrived.wait, 10)
        assert fut.cancel() is True
        proceed.set()
        with pytest.raises(forkwait.CancelledError):
            await fut
        assert ran == []

    trio.run(main)
