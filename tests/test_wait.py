"""wait and wait_all: block in sync code, awaitable in async code, timeouts, bad input."""

from __future__ import annotations

import asyncio
import copy
import gc
import math
import pickle
import threading
import warnings
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from forkwait import Future, fork, wait, wait_all

pytestmark = pytest.mark.timeout(20)


def gated(gate: threading.Event, value: Any) -> Any:
    gate.wait()
    return value


async def gated_async(gate: threading.Event, value: Any) -> Any:
    await anyio.to_thread.run_sync(gate.wait)
    return value


async def echo(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return value


def test_wait_blocks_in_sync_code_until_the_value_arrives() -> None:
    """wait returns the value once the call finishes, not before."""
    gate = threading.Event()
    fut = fork(gated, gate, "v")
    assert not fut.done()
    threading.Timer(0.05, gate.set).start()
    assert wait(fut) == "v"
    assert fut.done()


@pytest.mark.anyio
async def test_wait_is_awaitable_in_async_code() -> None:
    """In async code wait returns an awaitable; awaiting it gives the value."""
    fut = fork(echo, "v")
    pending = wait(fut)
    assert not isinstance(pending, str)
    assert await pending == "v"  # type: ignore[misc]


@pytest.mark.anyio
async def test_a_wait_never_awaited_warns() -> None:
    """Forgetting `await` before wait in async code gives a RuntimeWarning that says so."""
    fut = fork(echo, "v")

    def forget_to_await() -> None:
        wait(fut)  # the awaitable is dropped here
        gc.collect()

    with pytest.warns(RuntimeWarning, match=r"never awaited; write `value = await") as record:
        forget_to_await()
    assert record[0].filename == __file__  # the line that forgot, not forkwait's
    await fut


@pytest.mark.anyio
async def test_the_never_awaited_warning_obeys_warning_filters_as_warnings_warn_does() -> None:
    """Once per line under the default action, and a filter by module applies."""
    fut = fork(echo, "v")
    await fut

    def forget_three_times() -> None:
        for _ in range(3):
            wait(fut)  # dropped: never awaited, the same line each time
            gc.collect()

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        forget_three_times()
    assert [(w.filename, w.category) for w in shown] == [(__file__, RuntimeWarning)]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=__name__)
        forget_three_times()
    assert shown == []


@pytest.mark.asyncio
async def test_a_wait_that_asyncio_runs_as_a_task_is_awaited_even_if_cancelled_first() -> None:
    """ensure_future and wait_for run it as a task: cancelled before its first step, it
    counts as awaited, as a coroutine does (warnings are errors here)."""
    fut = fork(asyncio.sleep, 3600)
    task = asyncio.ensure_future(wait(fut))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(wait(fut), timeout=0)
    gc.collect()
    assert fut.cancel()


@pytest.mark.anyio
async def test_the_awaitable_from_wait_is_awaited_once() -> None:
    """Awaiting the same wait() twice is an error, as for a coroutine."""
    fut = fork(echo, 1)
    pending: Any = wait(fut)
    await pending
    with pytest.raises(RuntimeError, match="only once"):
        await pending


def test_sync_timeout_raises_timeout_error_and_the_call_completes() -> None:
    """A sync wait with timeout raises the builtin TimeoutError; the call keeps going."""
    gate = threading.Event()
    fut = fork(gated, gate, "late")
    with pytest.raises(TimeoutError):
        wait(fut, timeout=0.05)
    assert not fut.done()
    gate.set()
    assert wait(fut) == "late"


def test_sync_timeout_on_a_task_of_the_default_runtime() -> None:
    """The timeout applies to coroutines too; the task is not cancelled by it."""
    gate = threading.Event()
    fut = fork(gated_async, gate, "late")
    with pytest.raises(TimeoutError):
        wait(fut, timeout=0.05)
    gate.set()
    assert wait(fut) == "late"


@pytest.mark.anyio
async def test_async_timeout_raises_timeout_error_and_the_call_completes() -> None:
    """`await wait(fut, timeout)` raises TimeoutError; the task is not cancelled."""
    gate = anyio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    fut = fork(slow)
    with pytest.raises(TimeoutError):
        await wait(fut, timeout=0.05)  # type: ignore[misc]
    assert not fut.done()
    gate.set()
    assert await fut == "late"


def test_zero_and_negative_timeouts_poll() -> None:
    """timeout=0 (or below) checks once and never blocks forever."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    with pytest.raises(TimeoutError):
        wait(fut, timeout=0)
    with pytest.raises(TimeoutError):
        wait(fut, timeout=-1)
    gate.set()
    assert wait(fut, timeout=10) == 1


@pytest.mark.parametrize("value", [42, None, asyncio.sleep, "fut"])
def test_wait_on_something_that_is_not_a_future_raises_type_error(value: Any) -> None:
    """wait(non-Future) names what it got."""
    with pytest.raises(TypeError, match=r"wait\(\) expects a forkwait.Future"):
        wait(value)


@pytest.mark.asyncio
async def test_wait_on_a_plain_awaitable_says_to_await_it() -> None:
    """An asyncio task passed to wait gets a hint to just await it."""
    task = asyncio.ensure_future(asyncio.sleep(0))
    with pytest.raises(TypeError, match="just `await` it"):
        wait(task)  # type: ignore[arg-type]
    await task


def test_wait_all_keeps_order_in_sync_code() -> None:
    """Values come back in the order of the futures, not of completion."""
    gates = [threading.Event() for _ in range(5)]
    futs = [fork(gated, gate, i) for i, gate in enumerate(gates)]
    for gate in reversed(gates):
        gate.set()
    assert wait_all(futs) == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_wait_all_keeps_order_in_async_code() -> None:
    """The async form of wait_all gives the values in order too, sync and async mixed."""
    last_may_finish = anyio.Event()

    async def last(value: int) -> int:
        await last_may_finish.wait()
        return value

    async def first(value: int) -> int:
        last_may_finish.set()
        return value

    futs: list[Future[int]] = [fork(last, 0), fork(abs, -1), fork(first, 2)]
    assert await wait_all(futs) == [0, 1, 2]  # type: ignore[misc]


def test_wait_all_runs_the_queued_calls_before_blocking_on_a_running_one(
    max_threads: Any,
) -> None:
    """The one worker runs the first call, which needs the last one to have run: the
    waiter runs the queued ones itself instead of blocking on the first."""
    max_threads(1)
    last_ran = threading.Event()
    first_started = threading.Event()

    def first() -> bool:
        first_started.set()
        return last_ran.wait(timeout=5)

    def record(i: int) -> int:
        if i == 3:
            last_ran.set()
        return i

    futs: list[Future[Any]] = [fork(first)]
    assert first_started.wait(timeout=5)  # the worker has it: busy until the last ran
    futs += [fork(record, i) for i in (1, 2, 3)]
    assert wait_all(futs) == [True, 1, 2, 3]


def test_wait_all_raises_a_failure_before_running_the_calls_behind_it(max_threads: Any) -> None:
    """As torch.futures.wait_all: it stops at a failure instead of running the rest."""
    max_threads(1)
    gate = threading.Event()
    busy = fork(gate.wait)  # the one worker
    ran: list[int] = []

    def boom() -> None:
        raise KeyError("first")

    futs: list[Future[Any]] = [fork(boom), fork(ran.append, 1), fork(ran.append, 2)]
    with pytest.raises(KeyError):
        wait_all(futs)
    assert ran == []  # still queued, for the worker
    gate.set()
    assert busy.result() is True
    assert wait_all(futs[1:]) == [None, None]


def test_wait_all_raises_the_first_failure_in_order() -> None:
    """A failure surfaces as its own exception."""

    def boom() -> int:
        raise KeyError("k")

    with pytest.raises(KeyError):
        wait_all([fork(abs, 1), fork(boom)])


def test_wait_all_timeout_bounds_the_whole_wait() -> None:
    """wait_all's timeout is for all futures together."""
    gate = threading.Event()
    futs = [fork(gated, gate, 1), fork(gated, gate, 2)]
    with pytest.raises(TimeoutError):
        wait_all(futs, timeout=0.05)
    gate.set()
    assert wait_all(futs, timeout=10) == [1, 2]


@pytest.mark.anyio
async def test_wait_all_async_timeout() -> None:
    """The async wait_all raises TimeoutError too."""
    gate = anyio.Event()
    fut = fork(gate.wait)
    with pytest.raises(TimeoutError):
        await wait_all([fut], timeout=0.05)  # type: ignore[misc]
    gate.set()
    await fut


def test_wait_all_rejects_a_non_future_before_waiting() -> None:
    """A bad element is found before anything blocks."""
    with pytest.raises(TypeError, match="wait_all"):
        wait_all([fork(abs, 1), 3])  # type: ignore[list-item]


def test_result_from_a_loop_thread_refuses_to_block_the_loop() -> None:
    """Blocking result() inside a running loop would deadlock it: a clear error instead."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)

    async def misuse() -> None:
        fut.result()

    with pytest.raises(RuntimeError, match="await fut"):
        asyncio.run(misuse())
    gate.set()
    assert wait(fut) == 1


# -- timeouts as users write them; found in review ---------------------------------------


def test_an_infinite_timeout_waits_without_a_limit_in_sync_code_too() -> None:
    """As in async code; a lock cannot wait that long, so inf and 1e10 mean no limit."""
    assert wait(fork(abs, -1), timeout=math.inf) == 1
    assert fork(abs, -2).result(1e10) == 2
    assert wait_all([fork(abs, -3)], timeout=math.inf) == [3]


@pytest.mark.parametrize("timeout", ["1", math.nan, True, [1]])
def test_a_bad_timeout_names_the_timeout(timeout: Any) -> None:
    fut = fork(abs, -1)
    error = ValueError if timeout is math.nan else TypeError
    for call in (
        lambda: wait(fut, timeout=timeout),
        lambda: wait_all([fut], timeout=timeout),
        lambda: fut.result(timeout),
        lambda: fut.exception(timeout),
    ):
        with pytest.raises(error, match=r"\(timeout=\.\.\.\)"):
            call()


@pytest.mark.anyio
async def test_an_async_timeout_says_which_future_it_gave_up_on() -> None:
    gate = anyio.Event()
    fut = fork(gate.wait)
    with pytest.raises(TimeoutError, match=r"fork\(.*wait\)> did not finish within 0.05"):
        await wait(fut, timeout=0.05)  # type: ignore[misc]
    with pytest.raises(TimeoutError, match=r"wait_all\(\) gave up after 0.05 seconds"):
        await wait_all([fut], timeout=0.05)  # type: ignore[misc]
    gate.set()
    await fut


def test_wait_all_names_the_timeout_it_was_given() -> None:
    gate = threading.Event()
    with pytest.raises(TimeoutError, match=r"gave up after -1.0 seconds: .*gated"):
        wait_all([fork(gated, gate, 1)], timeout=-1)
    gate.set()


def raise_timeout_error() -> None:
    raise TimeoutError("the call's own")


@pytest.mark.anyio
async def test_a_calls_own_timeout_error_is_not_mistaken_for_the_waits() -> None:
    fut = fork(raise_timeout_error)
    with pytest.raises(TimeoutError, match="the call's own"):
        await wait(fut, timeout=10)  # type: ignore[misc]
    with pytest.raises(TimeoutError, match="the call's own"):
        await wait_all([fut], timeout=10)  # type: ignore[misc]
    with pytest.raises(TimeoutError, match="the call's own"):
        await anyio.to_thread.run_sync(lambda: wait_all([fut], timeout=10))


@pytest.mark.parametrize("value", [None, 3])
def test_wait_all_of_something_not_iterable_says_what_it_takes(value: Any) -> None:
    with pytest.raises(TypeError, match=r"wait_all\(\) takes an iterable of forkwait futures"):
        wait_all(value)


def test_wait_all_lets_the_errors_of_a_generator_it_is_given_through() -> None:
    async def double(x: int) -> int:
        return 2 * x

    with pytest.raises(TypeError, match="Pass the function and its arguments"):
        wait_all(fork(double(x)) for x in range(3))  # type: ignore[arg-type]


def test_wait_all_of_one_future_says_to_pass_a_list() -> None:
    fut = fork(abs, 1)
    with pytest.raises(TypeError, match=r"got one future; write wait_all\(\[fut\]\)"):
        wait_all(fut)  # type: ignore[call-overload]


@pytest.mark.parametrize("copy_it", [pickle.dumps, copy.copy, copy.deepcopy])
def test_a_future_cannot_be_pickled_or_copied(copy_it: Any) -> None:
    """A copy would be a future that nothing finishes."""
    gate = threading.Event()
    fut = fork(gated, gate, 1)
    with pytest.raises(TypeError, match=r"cannot be pickled or copied.*pass its value"):
        copy_it(fut)
    gate.set()
    assert wait(fut) == 1


@pytest.mark.parametrize("how", ["wait", "wait_all"])
def test_an_async_wait_whose_call_finishes_as_it_times_out_gets_the_value(how: str) -> None:
    """The call finishes in the loop step in which the deadline fires: as for a sync wait,
    that is not a timeout (the value was lost, for an empty TimeoutError)."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        outcomes: list[object] = []
        for _ in range(20):
            gate = loop.create_future()

            async def finishes_at_the_gate(gate: asyncio.Future[None] = gate) -> int:
                await gate
                return 1

            fut = fork(finishes_at_the_gate)
            await asyncio.sleep(0)  # it waits at the gate
            when = loop.time() + 0.01
            loop.call_at(when, gate.set_result, None)  # before the deadline, in one step
            limit = when - loop.time()
            try:
                if how == "wait":
                    outcomes.append(await wait(fut, timeout=limit))
                else:
                    outcomes.append(await wait_all([fut], timeout=limit))
            except TimeoutError as exc:
                outcomes.append(exc)
        return outcomes

    expected = 1 if how == "wait" else [1]
    assert asyncio.run(main()) == [expected] * 20


def test_an_async_wait_all_that_times_out_names_the_first_unfinished_call() -> None:
    release = threading.Event()

    async def main() -> None:
        done = fork(lambda: 1)
        assert await done == 1
        pending = fork(release.wait, 10)
        with pytest.raises(TimeoutError, match=r"gave up after 0\.05 seconds: .*Event\.wait"):
            await wait_all([done, pending], timeout=0.05)

    try:
        asyncio.run(main())
    finally:
        release.set()
