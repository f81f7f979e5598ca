"""Every row of the spec's `func` table: where each kind of callable runs, and what is refused."""

from __future__ import annotations

import asyncio
import functools
import gc
import operator
import threading
import types
import warnings
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from forkwait import fork, wait


def where_sync(tag: str) -> tuple[str, str]:
    return tag, threading.current_thread().name


async def where_async(tag: str) -> tuple[str, str]:
    await anyio.lowlevel.checkpoint()
    return tag, threading.current_thread().name


class Service:
    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, tag: str) -> tuple[str, str]:
        self.calls += 1
        return await where_async(tag)

    def compute(self, tag: str) -> tuple[str, str]:
        self.calls += 1
        return where_sync(tag)


class AsyncCallable:
    async def __call__(self, tag: str) -> tuple[str, str]:
        return await where_async(tag)


class SyncCallable:
    def __call__(self, tag: str) -> tuple[str, str]:
        return where_sync(tag)


def is_worker(thread_name: str) -> bool:
    return thread_name.startswith("forkwait-worker")


def is_loop_thread(thread_name: str, loop_thread: str) -> bool:
    return thread_name == loop_thread


ASYNC_CALLABLES: list[Any] = [
    pytest.param(where_async, id="async-def"),
    pytest.param(Service().fetch, id="bound-async-method"),
    pytest.param(functools.partial(where_async), id="partial-of-async"),
    pytest.param(functools.partial(functools.partial(where_async)), id="nested-partial"),
    pytest.param(AsyncCallable(), id="async-__call__"),
    pytest.param(functools.partial(AsyncCallable()), id="partial-of-async-__call__"),
]

SYNC_CALLABLES: list[Any] = [
    pytest.param(where_sync, id="function"),
    pytest.param(lambda tag: where_sync(tag), id="lambda"),
    pytest.param(Service().compute, id="bound-method"),
    pytest.param(functools.partial(where_sync), id="partial"),
    pytest.param(SyncCallable(), id="callable-object"),
]


@pytest.mark.timeout(10)
@pytest.mark.anyio
@pytest.mark.parametrize("func", ASYNC_CALLABLES)
async def test_coroutine_functions_run_as_tasks_on_the_callers_loop(func: Any) -> None:
    """Async callables in every disguise run on the caller's loop thread, not a worker."""
    tag, thread = await fork(func, "x")
    assert tag == "x"
    assert thread == threading.current_thread().name


@pytest.mark.timeout(10)
@pytest.mark.anyio
@pytest.mark.parametrize("func", SYNC_CALLABLES)
async def test_sync_callables_run_in_worker_threads(func: Any) -> None:
    """Sync callables of every kind go to a worker thread, so they never block the loop."""
    tag, thread = await fork(func, "x")
    assert tag == "x"
    assert is_worker(thread)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("func", SYNC_CALLABLES)
def test_sync_callables_from_sync_code(func: Any) -> None:
    """From sync code, every sync callable gives its value through wait."""
    tag, _thread = wait(fork(func, "y"))
    assert tag == "y"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("func", ASYNC_CALLABLES)
def test_coroutine_functions_from_sync_code_run_on_the_default_runtime(func: Any) -> None:
    """From sync code, async callables run on the default runtime's loop thread."""
    tag, thread = wait(fork(func, "y"))
    assert tag == "y"
    assert thread == "forkwait-runtime"


@pytest.mark.timeout(10)
def test_builtins_run_in_worker_threads() -> None:
    """Builtins and C callables are sync callables; keyword arguments pass through."""
    assert wait(fork(len, "abcd")) == 4
    assert wait(fork(sorted, [3, 1, 2], reverse=True)) == [3, 2, 1]
    assert wait(fork(operator.add, 2, 3)) == 5
    assert wait(fork(dict, a=1)) == {"a": 1}


@pytest.mark.timeout(10)
def test_a_class_is_a_sync_callable() -> None:
    """Forking a class constructs an instance in a worker thread."""
    assert wait(fork(Service)).calls == 0


@pytest.mark.timeout(10)
@pytest.mark.anyio
async def test_sync_lambda_returning_a_coroutine_is_awaited_on_the_loop() -> None:
    """A sync callable that returns a coroutine: the value is the coroutine's result."""
    value = await fork(lambda: where_async("z"))
    assert value[0] == "z"
    assert value[1] == threading.current_thread().name  # awaited on this loop


@pytest.mark.timeout(10)
def test_sync_lambda_returning_a_coroutine_from_sync_code() -> None:
    """From sync code, the returned coroutine runs on the default runtime."""
    assert wait(fork(lambda: where_async("z"))) == ("z", "forkwait-runtime")


class Box:
    """A plain object: never awaitable."""

    def __init__(self, value: object) -> None:
        self.value = value


@types.coroutine
def generator_based(tag: str) -> Any:
    yield from asyncio.sleep(0).__await__()
    return tag


def plain_generator() -> Any:
    yield 1


@pytest.mark.timeout(10)
def test_a_returned_generator_is_awaited_only_if_it_is_a_coroutine() -> None:
    assert wait(fork(Box, 1)).value == 1
    # A generator is awaitable by a flag of its own: a plain one is the value, and a
    # generator-based coroutine after it is still awaited.
    assert list(wait(fork(plain_generator))) == [1]
    assert wait(fork(lambda: generator_based("g"))) == "g"
    assert list(wait(fork(plain_generator))) == [1]


class MarkedCoroutineFunction:
    """A callable marked as a coroutine function by an instance attribute (as
    ``unittest.mock.AsyncMock`` is), whose ``__getattr__`` answers every other name."""

    def __init__(self) -> None:
        self._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return "anything"

    def __call__(self, tag: str) -> Any:
        self.called_in = threading.current_thread().name
        return where_async(tag)


@pytest.mark.timeout(10)
@pytest.mark.anyio
async def test_a_callable_marked_as_a_coroutine_function_runs_as_a_task() -> None:
    marked = MarkedCoroutineFunction()
    here = threading.current_thread().name
    assert await fork(marked, "m") == ("m", here)
    assert marked.called_in == here  # called by fork itself, not in a worker thread


@pytest.mark.timeout(10)
def test_keywords_all_go_to_func() -> None:
    """fork has no options of its own: even `timeout=` is the callee's keyword."""

    def takes_timeout(*, timeout: int) -> int:
        return timeout

    assert wait(fork(takes_timeout, timeout=3)) == 3


@pytest.mark.timeout(10)
def test_a_coroutine_object_is_refused_and_closed() -> None:
    """fork(f(x)) raises TypeError showing fork(f, x); the coroutine never warns."""
    coro = where_async("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError) as info:
            fork(coro)  # type: ignore[call-overload]
        del coro
        gc.collect()
    message = str(info.value)
    assert "coroutine object" in message
    assert "fork(where_async(x))   # wrong" in message
    assert "fork(where_async, x)   # right" in message


@pytest.mark.timeout(10)
def test_the_refused_coroutine_is_closed() -> None:
    """The rejected coroutine is closed, so it can never run by accident."""
    coro = where_async("x")
    with pytest.raises(TypeError):
        fork(coro)  # type: ignore[call-overload]
    assert coro.cr_frame is None  # closed


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", [42, "text", None, [where_sync]])
def test_non_callables_are_refused_with_the_right_call(value: object) -> None:
    """A non-callable raises TypeError at once, naming its type and the right call."""
    with pytest.raises(TypeError, match=r"fork\(\) expects a callable, got") as info:
        fork(value)  # type: ignore[call-overload]
    assert type(value).__qualname__ in str(info.value)
    assert "fork(func, *args, **kwargs)" in str(info.value)


@pytest.mark.timeout(10)
@pytest.mark.asyncio
async def test_an_awaitable_object_is_refused() -> None:
    """A task or future is not a callable: the error says to await it instead."""
    task = asyncio.ensure_future(where_async("t"))
    with pytest.raises(TypeError, match="await it"):
        fork(task)  # type: ignore[call-overload]
    await task


@pytest.mark.timeout(10)
def test_wrong_arguments_reach_the_waiter() -> None:
    """Calling with bad arguments fails like the call itself would: at wait."""
    with pytest.raises(TypeError):
        wait(fork(where_async, "a", "b"))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        wait(fork(where_sync, "a", "b"))  # type: ignore[call-arg]
