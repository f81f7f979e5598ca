"""Future: every member of the spec's table, and futures shared across threads and loops."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest

import forkwait
from forkwait import Future, fork, wait

pytestmark = pytest.mark.timeout(20)


def gated(gate: threading.Event, value: Any) -> Any:
    if not gate.wait(timeout=10):
        raise AssertionError("gate never opened")
    return value


def fail(exc: BaseException) -> None:
    raise exc


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


def test_done_and_cancelled_report_state_without_blocking() -> None:
    """done() and cancelled() answer at once, before and after the call finishes."""
    gate = threading.Event()
    fut = fork(gated, gate, 5)
    assert (fut.done(), fut.cancelled()) == (False, False)
    gate.set()
    assert fut.result() == 5
    assert (fut.done(), fut.cancelled()) == (True, False)


def test_result_and_exception_of_a_value() -> None:
    """result() gives the value; exception() gives None for a call that returned."""
    fut = fork(abs, -2)
    assert fut.result(timeout=10) == 2
    assert fut.exception(timeout=10) is None


def test_exception_returns_the_calls_exception_without_raising() -> None:
    """exception() hands back the exception object; result() raises it."""
    error = ValueError("bad")
    fut = fork(fail, error)
    assert fut.exception() is error
    with pytest.raises(ValueError, match="bad") as info:
        fut.result()
    assert info.value is error


def test_exception_waits_with_a_timeout() -> None:
    """exception(timeout) raises TimeoutError while the call runs."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    with pytest.raises(TimeoutError):
        fut.exception(timeout=0.01)
    gate.set()
    assert fut.exception() is None


@pytest.mark.anyio
async def test_await_gives_the_value_or_raises() -> None:
    """`await fut` is the async form of result()."""
    assert await fork(echo, "v") == "v"
    with pytest.raises(KeyError):
        await fork(fail, KeyError("k"))


@pytest.mark.anyio
async def test_awaiting_a_done_future_does_not_suspend() -> None:
    """A finished future's value is available at once, even awaited many times."""
    fut = fork(abs, -1)
    await fut
    assert [await fut for _ in range(3)] == [1, 1, 1]


def test_repr_names_the_call_and_its_state() -> None:
    """repr shows the callable and the outcome, for debugging."""
    fut = fork(abs, -7)
    fut.result()
    assert repr(fut) == "<forkwait.Future done fork(abs) value=7>"


def test_a_future_on_loop_a_is_awaited_on_loop_b_and_waited_on_in_a_third_thread(
    loop_factory: Any,
) -> None:
    """One future, three consumers: its own loop's thread, another loop, a plain thread."""
    loop_a = loop_factory()
    started = threading.Event()
    release = threading.Event()
    made: list[Future[str]] = []

    async def on_a() -> str:
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        return "from a"

    async def make_on_a() -> None:
        made.append(fork(on_a))

    thread_a = threading.Thread(target=loop_a.run_forever)
    thread_a.start()
    try:
        asyncio.run_coroutine_threadsafe(make_on_a(), loop_a).result(timeout=10)
        started.wait(timeout=10)
        fut = made[0]
        results: dict[str, Any] = {}

        def loop_b_consumer() -> None:
            async def consume() -> str:
                return await fut

            loop_b = loop_factory()
            try:
                results["b"] = loop_b.run_until_complete(consume())
            finally:
                loop_b.close()

        def plain_consumer() -> None:
            results["plain"] = wait(fut)

        consumers = [
            threading.Thread(target=loop_b_consumer),
            threading.Thread(target=plain_consumer),
        ]
        for thread in consumers:
            thread.start()
        release.set()
        for thread in consumers:
            thread.join(timeout=10)
        assert results == {"b": "from a", "plain": "from a"}
        assert fut.result() == "from a"
    finally:
        loop_a.call_soon_threadsafe(loop_a.stop)
        thread_a.join(timeout=10)
        loop_a.close()


@pytest.mark.anyio
async def test_a_default_runtime_future_is_awaited_from_the_callers_loop() -> None:
    """A future forked from a plain thread (default runtime) is awaitable on this loop."""
    made: list[Future[int]] = []
    gate = threading.Event()

    async def seven() -> int:
        await anyio.to_thread.run_sync(gate.wait, 10)
        return 7

    async def release() -> None:
        gate.set()

    thread = threading.Thread(target=lambda: made.append(fork(seven)))
    thread.start()
    thread.join()
    assert not made[0].done()
    async with anyio.create_task_group() as tg:
        tg.start_soon(release)  # runs once this task is suspended in the await below
        assert await made[0] == 7


def test_then_chains_a_value() -> None:
    """then(fn) gives a future for fn(fut), run once fut is done."""
    fut = fork(abs, -3).then(lambda f: f.result() * 10)
    assert wait(fut) == 30


def test_then_chains_several_steps() -> None:
    """then returns a Future, so chains compose."""
    fut = fork(abs, -1).then(lambda f: f.result() + 1).then(lambda f: f.result() * 3)
    assert wait(fut) == 6


def test_then_carries_the_callbacks_exception() -> None:
    """An exception in fn goes to the future that then returned."""
    fut = fork(abs, -1).then(lambda f: fail(LookupError("inside then")))
    with pytest.raises(LookupError, match="inside then"):
        wait(fut)


def test_then_sees_the_original_failure() -> None:
    """fn receives the failed future and may recover from it."""
    fut = fork(fail, ValueError("x")).then(lambda f: type(f.exception()).__name__)
    assert wait(fut) == "ValueError"


def test_then_with_a_coroutine_function_awaits_it() -> None:
    """An async fn's result is awaited on the loop, not returned as a coroutine."""

    async def describe(f: Future[int]) -> str:
        await asyncio.sleep(0)
        return f"got {f.result()}"

    assert wait(fork(abs, -4).then(describe)) == "got 4"


def test_a_long_then_chain_on_a_pending_future_completes() -> None:
    """Each link settles the next on the same stack: far past the recursion limit's
    reach, a worker thread goes on with a fresh one."""
    gate = threading.Event()
    fut: Future[bool] = fork(gate.wait, 10)
    for _ in range(1000):
        fut = fut.then(lambda f: f.result())
    gate.set()
    assert wait(fut, timeout=10) is True


def test_a_then_callback_made_inside_a_call_may_wait_for_that_call() -> None:
    """It runs in another thread, where a wait on the call is no wait on itself."""
    release, looked = threading.Event(), threading.Event()
    box: list[Future[Any]] = []

    def look(_: Future[bool]) -> str:
        try:
            wait(box[0], timeout=0)  # the call is still running: it is not done yet
        finally:
            looked.set()
        return "done"

    def call() -> int:
        box.append(fork(release.wait, 10).then(look))
        release.set()
        assert looked.wait(10)  # running until the callback has looked
        return 42

    box.insert(0, fork(call))
    assert wait(box[0]) == 42
    with pytest.raises(TimeoutError, match="did not finish within 0"):
        wait(box[1])


def test_a_then_callback_made_in_a_call_waits_on_new_futures_in_that_calls_thread(
    max_threads: Any,
) -> None:
    """It runs later in the worker that ran the call, with a copy of the call's context:
    a new future there is not the call's own, even where it takes the call's old place
    in memory."""
    max_threads(1)

    async def value() -> str:
        return "new"

    def made_in_a_call(gate: threading.Event, out: list[Future[str]]) -> None:
        queued = fork(gate.wait, 10)  # behind this call, on the one worker
        out.append(queued.then(lambda _: wait(fork(value))))

    for _ in range(50):
        gate, out = threading.Event(), []
        call = fork(made_in_a_call, gate, out)
        assert call.exception(timeout=10) is None  # with a timeout: never run inline here
        del call  # its memory may go to the callback's new future
        gate.set()
        assert wait(out.pop(), timeout=10) == "new"


@pytest.mark.anyio
async def test_then_is_awaitable_from_async_code() -> None:
    """The chained future is an ordinary Future: await it."""
    assert await fork(echo, 2).then(lambda f: f.result() + 1) == 3


def test_add_done_callback_on_a_done_future_runs_at_once() -> None:
    """A callback added after completion runs before add_done_callback returns."""
    fut = fork(abs, -1)
    fut.result()
    seen: list[Future[int]] = []
    fut.add_done_callback(seen.append)
    assert seen == [fut]


def test_add_done_callback_runs_once_the_call_finishes() -> None:
    """A callback added while pending runs once, with the future, after completion."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    called = threading.Event()
    seen: list[Any] = []

    def callback(f: Future[int]) -> None:
        seen.append(f.result())
        called.set()

    fut.add_done_callback(callback)
    assert seen == []
    gate.set()
    assert called.wait(timeout=10)
    assert seen == [1]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One callback's exception does not stop the next; it is logged, not lost."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    done = threading.Event()
    order: list[str] = []

    def bad(_: Future[int]) -> None:
        order.append("bad")
        raise RuntimeError("callback broke")

    def good(_: Future[int]) -> None:
        order.append("good")
        done.set()

    fut.add_done_callback(bad)
    fut.add_done_callback(good)
    with caplog.at_level(logging.ERROR, logger="forkwait"):
        gate.set()
        assert done.wait(timeout=10)
    assert order == ["bad", "good"]
    assert "callback broke" in caplog.text


def test_add_done_callback_rejects_a_non_callable() -> None:
    """Bad input to add_done_callback and then is refused at once."""
    fut = fork(abs, 1)
    with pytest.raises(TypeError, match="add_done_callback"):
        fut.add_done_callback(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="then"):
        fut.then(None)  # type: ignore[call-overload]
    fut.result()


def test_await_outside_a_loop_points_to_wait() -> None:
    """Driving __await__ without an asyncio loop says to use wait()."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    with pytest.raises(RuntimeError, match=r"forkwait.wait\(fut\)"):
        fut.__await__().send(None)
    gate.set()
    assert forkwait.wait(fut) == 1


def test_a_failure_reaches_an_awaiter_on_another_loop(loop_factory: Any) -> None:
    """The call's own exception crosses threads to a task awaiting on another loop."""
    error = LookupError("from the worker")
    gate = threading.Event()

    def failing() -> None:
        gate.wait(timeout=10)
        raise error

    fut = fork(failing)

    async def consume() -> BaseException:
        gate.set()
        try:
            await fut
        except LookupError as exc:
            return exc
        raise AssertionError("no exception")

    loop = loop_factory()
    try:
        assert loop.run_until_complete(consume()) is error
    finally:
        loop.close()


@pytest.mark.anyio
async def test_awaiting_a_cancelled_future_raises_forkwait_cancelled_error() -> None:
    """Both a pending awaiter and a later one get forkwait.CancelledError, not asyncio's."""
    started = anyio.Event()
    woken: list[BaseException] = []

    async def forever() -> None:
        started.set()
        await anyio.sleep(3600)

    async def awaiter(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        with pytest.raises(forkwait.CancelledError) as info:
            await wait(fut)  # type: ignore[misc]
        woken.append(info.value)

    fut = fork(forever)
    await started.wait()
    async with anyio.create_task_group() as tg:
        await tg.start(awaiter)  # which is suspended in its wait once this returns
        assert fut.cancel() is True
    assert len(woken) == 1
    assert not isinstance(woken[0], anyio.get_cancelled_exc_class())
    with pytest.raises(forkwait.CancelledError):
        await fut


@pytest.mark.anyio
async def test_keyboard_interrupt_reaches_an_async_awaiter() -> None:
    """A BaseException from the call is raised at the await, not in the loop."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await fork(interrupted)


@pytest.mark.anyio
async def test_many_awaiters_on_one_loop_share_one_value() -> None:
    """Several tasks awaiting one pending future all get its value."""
    gate = anyio.Event()
    results: list[str] = []

    async def gated() -> str:
        await gate.wait()
        return "shared"

    async def awaiter(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        results.append(await wait(fut))  # type: ignore[arg-type]

    fut = fork(gated)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            await tg.start(awaiter)  # each is suspended in its wait once this returns
        assert not fut.done()
        gate.set()
    assert results == ["shared"] * 5
