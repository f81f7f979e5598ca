"""Which event loop runs the work: spec rules 1-3."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio

from forkwait import fork, wait

pytestmark = pytest.mark.timeout(20)


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def running_library() -> str:
    return sniffio.current_async_library()


def loop_of_nested_async_fork() -> asyncio.AbstractEventLoop:
    """A forked sync function that forks a coroutine function and waits for it."""
    return wait(fork(running_loop))


@pytest.mark.asyncio
async def test_rule_1_the_callers_running_loop() -> None:
    """A coroutine forked from async code runs on the caller's own loop."""
    assert await fork(running_loop) is asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_rule_2_a_forked_sync_function_forks_onto_the_loop_it_works_for() -> None:
    """Nested forks from a worker thread go back to the loop that forked the worker."""
    assert await fork(loop_of_nested_async_fork) is asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_rule_2_an_anyio_worker_thread_forks_onto_its_loop() -> None:
    """anyio.to_thread workers work for the loop that started them."""
    loop = await anyio.to_thread.run_sync(loop_of_nested_async_fork)
    assert loop is asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_rule_2_holds_through_several_levels() -> None:
    """sync -> sync -> async: the innermost coroutine still runs on the caller's loop."""

    def two_levels() -> asyncio.AbstractEventLoop:
        return wait(fork(loop_of_nested_async_fork))

    assert await fork(two_levels) is asyncio.get_running_loop()


def test_rule_1_a_trio_run_inside_a_forked_call_runs_its_own_forks(max_threads: Any) -> None:
    """The run's sync forks are its own (its thread limit), not queued for the pool
    whose one thread the call holds."""
    max_threads(1)

    async def body() -> tuple[int, str]:
        with anyio.fail_after(10):
            return await fork(abs, -7), await fork(loop_of_nested_async_fork_library)

    def runs_trio() -> tuple[int, str]:
        return anyio.run(body, backend="trio")

    assert wait(fork(runs_trio)) == (7, "trio")


def loop_of_nested_async_fork_library() -> str:
    return wait(fork(running_library))


def test_rule_2_an_anyio_worker_thread_inside_a_forked_call_forks_onto_its_loop() -> None:
    """Not onto the loop the forked call works for, whose context anyio's thread copied."""

    async def main() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        used = await anyio.to_thread.run_sync(loop_of_nested_async_fork)
        return asyncio.get_running_loop(), used

    def runs_a_loop() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return asyncio.run(main())

    own, used = wait(fork(runs_a_loop))
    assert used is own


def test_rule_3_plain_sync_code_uses_the_default_runtime() -> None:
    """From plain sync code, coroutines run on one background loop for the process."""
    first = wait(fork(running_loop))
    second = wait(fork(running_loop))
    assert first is second
    assert first.is_running()
    thread_names = {t.name for t in threading.enumerate()}
    assert "forkwait-runtime" in thread_names


def test_rule_3_the_default_runtime_is_uvloop_where_installed() -> None:
    """uvloop is installed in the test environment, so the default loop is uvloop's."""
    loop: Any = wait(fork(running_loop))
    assert type(loop).__module__.startswith("uvloop")


def test_rule_3_a_plain_thread_uses_the_default_runtime_too() -> None:
    """Any thread without a loop, not only the main one, gets the default runtime."""
    main_loop = wait(fork(running_loop))
    seen: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: seen.append(wait(fork(running_loop))))
    thread.start()
    thread.join()
    assert seen == [main_loop]


def test_a_sync_function_forked_from_sync_code_nests_on_the_default_runtime() -> None:
    """Rule 2 from plain sync code: the worker's loop is the default runtime's."""
    assert wait(fork(loop_of_nested_async_fork)) is wait(fork(running_loop))


def test_a_loop_in_another_thread_runs_its_own_forks(loop_factory: Any) -> None:
    """Each thread's own loop runs what that thread forks (asyncio and uvloop)."""

    async def main() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return asyncio.get_running_loop(), await fork(loop_of_nested_async_fork)

    loop = loop_factory()
    try:
        own, nested = loop.run_until_complete(main())
    finally:
        loop.close()
    assert own is nested is loop


@pytest.mark.asyncio
async def test_pytest_asyncio_runs_tests_on_both_loops(request: pytest.FixtureRequest) -> None:
    """The asyncio-specific tests really run on uvloop too, not twice on asyncio."""
    kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    assert kind == request.node.callspec.id  # "asyncio" or "uvloop"


@pytest.mark.anyio
async def test_anyio_runs_tests_on_both_loops(anyio_backend: Any) -> None:
    """The backend-neutral tests run on uvloop when the backend asks for it, and a fork
    from trio runs on trio."""
    if anyio_backend[0] == "trio":
        assert await fork(running_library) == "trio"
        return
    uses_uvloop = anyio_backend[1]["use_uvloop"]
    kind = type(await fork(running_loop)).__module__.split(".")[0]
    assert kind == ("uvloop" if uses_uvloop else "asyncio")
