"""trio: forks from a trio run, futures shared with asyncio and sync code, and the run's end."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel

import forkwait
from forkwait import Future, fork, wait
from forkwait._hosts import thread_host

pytestmark = pytest.mark.timeout(30)


async def current_token() -> trio.lowlevel.TrioToken:
    await trio.lowlevel.checkpoint()
    return trio.lowlevel.current_trio_token()


def nested_fork_from_a_worker() -> tuple[trio.lowlevel.TrioToken, bool]:
    """A sync call forks a coroutine function: it goes back to the run the call works for."""
    token = wait(fork(current_token))
    return token, threading.current_thread() is threading.main_thread()


def test_forks_run_on_the_callers_trio_run() -> None:
    async def main() -> None:
        mine = trio.lowlevel.current_trio_token()
        assert await fork(current_token) is mine
        token, in_main_thread = await fork(nested_fork_from_a_worker)
        assert token is mine
        assert not in_main_thread  # the sync call itself ran in a worker thread

    trio.run(main)


def test_wait_in_trio_is_awaitable_and_result_refuses_to_block() -> None:
    async def main() -> None:
        fut = fork(current_token)
        assert await wait(fut) is trio.lowlevel.current_trio_token()
        assert await forkwait.wait_all([fork(int, "3"), fork(current_token)]) == [
            3,
            trio.lowlevel.current_trio_token(),
        ]
        with pytest.raises(RuntimeError, match=r"would block the event loop"):
            fork(trio.sleep_forever).result()

    trio.run(main)


def test_a_trio_future_awaited_from_asyncio_and_waited_from_sync_code() -> None:
    """A fork running on a trio run, in the main thread, finishes into an asyncio loop in
    another thread and into a plain blocked thread."""
    release = threading.Event()
    results: dict[str, Any] = {}

    async def slow() -> str:
        await trio.to_thread.run_sync(release.wait, 10)
        return "from trio"

    def from_asyncio(fut: forkwait.Future[str]) -> None:
        async def await_it() -> str:
            return await fut

        results["asyncio"] = asyncio.run(await_it())

    def from_sync(fut: forkwait.Future[str]) -> None:
        results["sync"] = wait(fut)

    async def main() -> None:
        fut = fork(slow)
        threads = [
            threading.Thread(target=from_asyncio, args=(fut,)),
            threading.Thread(target=from_sync, args=(fut,)),
        ]
        for thread in threads:
            thread.start()
        release.set()
        assert await fut == "from trio"
        await trio.to_thread.run_sync(lambda: [thread.join(10) for thread in threads])

    trio.run(main)
    assert results == {"asyncio": "from trio", "sync": "from trio"}


def test_an_asyncio_future_awaited_from_trio() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:

        async def on_asyncio() -> str:
            await asyncio.sleep(0.01)
            return type(asyncio.get_running_loop()).__name__

        fut = asyncio.run_coroutine_threadsafe(_fork_on_running_loop(on_asyncio), loop).result(10)

        async def main() -> str:
            return await fut

        assert "EventLoop" in trio.run(main)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _fork_on_running_loop(func: Any) -> forkwait.Future[Any]:
    return fork(func)


def test_forks_still_running_when_the_run_ends_are_cancelled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> forkwait.Future[None]:
        return fork(trio.sleep_forever)

    with caplog.at_level(logging.WARNING, logger="forkwait"):
        left = trio.run(main)
    assert left.cancelled()
    assert "fork(sleep_forever) was still running when its trio run ended" in caplog.text


def test_a_failing_fork_never_crashes_the_run() -> None:
    """Its exception goes to its future, not to trio (which would end the run with
    TrioInternalError), even when nobody awaits it before the run ends."""

    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt  # the worst a system task could raise

    async def main() -> forkwait.Future[None]:
        fut = fork(fails)
        await trio.sleep(0.05)
        return fut

    fut = trio.run(main)
    with pytest.raises(KeyboardInterrupt):
        wait(fut)


def test_cancel_from_another_thread_and_awaiting_code_cancelled() -> None:
    async def main() -> None:
        fut = fork(trio.sleep_forever)
        with trio.move_on_after(0.01):
            await fut  # the awaiting code is cancelled: the fork goes on
        assert not fut.done()
        assert await trio.to_thread.run_sync(fut.cancel)
        with pytest.raises(forkwait.CancelledError):
            await fut

    trio.run(main)


def test_a_cancel_from_another_thread_is_marked_on_the_task_as_its_scope_is() -> None:
    # The task's first step reads the mark, not the scope (whose cancel_called reads
    # the clock): a cancel that reached the scope alone would let the call start.
    import trio.testing

    async def main() -> None:
        fut = fork(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        task = fut._handle
        assert await trio.to_thread.run_sync(fut.cancel)
        with pytest.raises(forkwait.CancelledError):
            await fut
        assert task.scope.cancel_called
        assert task.cancelled

    trio.run(main)


def test_a_fork_that_awaits_its_own_future_is_told_so() -> None:
    async def main() -> None:
        box: list[Future[Any]] = []

        async def awaits_itself() -> Any:
            await trio.lowlevel.checkpoint()
            return await box[0]

        box.append(fork(awaits_itself))
        with trio.fail_after(10), pytest.raises(RuntimeError, match="awaits its own future"):
            await box[0]

    trio.run(main)


def test_a_call_outliving_its_trio_run_cannot_fork_back_into_it() -> None:
    """A sync call forked from a run that has since ended gets a clear error when it
    forks a coroutine function for that run, instead of a hang."""
    release = threading.Event()

    def outlives_the_run() -> trio.lowlevel.TrioToken:
        release.wait(10)
        return wait(fork(current_token))

    async def main() -> forkwait.Future[trio.lowlevel.TrioToken]:
        return fork(outlives_the_run)

    fut = trio.run(main)
    release.set()
    with pytest.raises(RuntimeError, match=r"its trio run .* has ended"):
        wait(fut)


def test_an_anyio_worker_thread_forks_back_onto_its_trio_run() -> None:
    """A thread of anyio.to_thread.run_sync works for the run that started it (rule 2)."""
    import anyio

    async def main() -> None:
        mine = trio.lowlevel.current_trio_token()
        token = await anyio.to_thread.run_sync(lambda: wait(fork(current_token)))
        assert token is mine

    anyio.run(main, backend="trio")


def test_a_trio_worker_thread_forks_back_onto_its_trio_run() -> None:
    """So does a thread of trio.to_thread.run_sync; and, the call over, it works for no
    run (trio reuses the thread)."""

    async def main() -> None:
        mine = trio.lowlevel.current_trio_token()
        token = await trio.to_thread.run_sync(lambda: wait(fork(current_token)))
        assert token is mine
        assert await trio.to_thread.run_sync(thread_host) is mine

    trio.run(main)
    assert thread_host() is None


def test_a_fork_with_a_nursery_cancelled_at_the_end_of_the_run_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """trio cancels the nursery inside too: a group of cancellations, not a failure."""

    async def with_a_nursery() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)

    async def main() -> forkwait.Future[None]:
        fut = fork(with_a_nursery)
        await trio.sleep(0.01)
        return fut

    with caplog.at_level(logging.WARNING, logger="forkwait"):
        left = trio.run(main)
    assert left.cancelled()
    assert "fork(test_a_fork_with_a_nursery" in caplog.text
    assert "never retrieved" not in caplog.text


async def _fails_at_once() -> None:
    raise ValueError("f1")


def test_a_failure_awaited_in_a_scope_is_raised_once_whatever_order_trio_runs_tasks() -> None:
    """A task awaiting the fork has retrieved its failure before anyone else judges it:
    trio runs each batch in either order, so try it many times."""

    async def attached() -> str:
        caught: list[Future[None]] = []
        box: list[Future[None]] = []

        async def awaiter() -> None:
            try:
                await box[0]
            except ValueError:
                caught.append(box[0])

        async with anyio.create_task_group() as tg:
            with forkwait.scope(task_group=tg):
                tg.start_soon(awaiter)  # runnable before the fork's task and its keeper
                box.append(fork(_fails_at_once))
        return "caught" if caught else "lost"

    async def plain() -> str:
        caught: list[bool] = []

        async def consumer(fut: Future[None]) -> None:
            try:
                await fut
            except ValueError:
                caught.append(True)

        async with trio.open_nursery() as nursery, forkwait.scope():
            nursery.start_soon(consumer, fork(_fails_at_once))
        return "caught" if caught else "lost"

    for _ in range(100):
        assert trio.run(attached) == "caught"  # no ExceptionGroup from the task group
        assert trio.run(plain) == "caught"  # nor from the scope


class _AsyncModel:
    """An async callable object whose repr fails: instances have no __qualname__."""

    async def __call__(self, x: int) -> int:
        return 2 * x

    def __repr__(self) -> str:
        raise AttributeError("not set up yet")


def test_a_callable_object_whose_repr_fails_still_forks() -> None:
    async def main() -> int:
        return await fork(_AsyncModel(), 21)

    assert trio.run(main) == 42


def test_a_then_callback_of_a_trio_app_forks_anyio_coroutines_onto_asyncio() -> None:
    """The callback runs in a worker thread with a copy of the trio task's context, which
    tells sniffio (and so anyio) "trio": the coroutine it forks runs on the default
    runtime, where that must not hold."""

    async def uses_anyio() -> str:
        await anyio.lowlevel.checkpoint()  # anyio asks sniffio which library runs it
        return "ran"

    def callback(_: Future[None]) -> str:
        return wait(fork(uses_anyio), timeout=10)

    async def main() -> str:
        return await fork(time.sleep, 0.01).then(callback)

    assert anyio.run(main, backend="trio") == "ran"
