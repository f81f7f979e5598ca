"""configure(): validation and its effect."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
from typing import Any

import anyio
import pytest

import forkwait
from forkwait import fork

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_bad_max_threads_raises_value_error_naming_the_option(value: Any) -> None:
    """A limit that is not a whole number >= 1 is refused, and the message names it."""
    with pytest.raises(ValueError, match=r"max_threads"):
        forkwait.configure(max_threads=value)


@pytest.mark.parametrize("value", ["trio", "UVLOOP", 1])
def test_bad_loop_raises_value_error_naming_the_option(value: Any) -> None:
    """Only "asyncio" and "uvloop" name a default loop."""
    with pytest.raises(ValueError, match=r"configure\(loop=\.\.\.\)"):
        forkwait.configure(loop=value)


def test_max_threads_applies_at_once(max_threads: Any) -> None:
    """The pool reads the new limit immediately."""
    from forkwait._threads import pool

    max_threads(3)
    assert pool._limit == 3


def test_none_leaves_settings_unchanged(max_threads: Any) -> None:
    """configure() with nothing given changes nothing."""
    from forkwait._config import settings

    max_threads(5)
    before = (settings.max_threads, settings.loop)
    forkwait.configure()
    assert (settings.max_threads, settings.loop) == before


def test_configure_reads_the_settings_back(max_threads: Any) -> None:
    max_threads(7)
    settings = forkwait.configure()
    assert settings.max_threads == 7
    assert settings.loop in ("asyncio", "uvloop")
    assert forkwait.configure(max_threads=9) == forkwait.Configuration(
        9, settings.loop, settings.max_processes, "threads"
    )


def _hold_both_threads(barrier: threading.Barrier) -> int:
    barrier.wait()  # not a forkwait wait: the thread keeps its slot while it blocks
    return threading.get_ident()


def test_thread_limits_are_per_event_loop(max_threads: Any, loop_factory: Any) -> None:
    """Each loop may run max_threads sync calls at once, as with anyio's limiter: two
    loops with a limit of one run one call each at the same time."""
    max_threads(1)
    barrier = threading.Barrier(2, timeout=10)

    def on_a_loop_of_its_own() -> int:
        async def fork_it() -> int:
            return await fork(_hold_both_threads, barrier)

        loop = loop_factory()
        try:
            return loop.run_until_complete(fork_it())  # type: ignore[no-any-return]
        finally:
            loop.close()

    with concurrent.futures.ThreadPoolExecutor(2) as callers:
        idents = list(callers.map(lambda _: on_a_loop_of_its_own(), range(2)))
    assert len(set(idents)) == 2


@pytest.mark.anyio
async def test_within_one_loop_the_limit_holds(max_threads: Any) -> None:
    max_threads(1)
    release = threading.Event()
    started = threading.Event()

    def first() -> None:
        started.set()
        release.wait(10)

    held = fork(first)
    await anyio.to_thread.run_sync(started.wait, 10)
    second = fork(lambda: "second")
    assert not second.done()  # the loop's one thread is busy, and nothing runs it inline
    release.set()
    await held
    assert await second == "second"


def test_a_loops_pool_goes_with_the_loop(loop_factory: Any) -> None:
    from forkwait._threads import _loop_pools

    async def fork_a_sync_call() -> int:
        return await fork(sum, [1, 2])

    loop = loop_factory()
    key = id(loop)
    assert loop.run_until_complete(fork_a_sync_call()) == 3
    loops_pool = _loop_pools[key]
    loop.close()
    del loop
    gc.collect()
    assert key not in _loop_pools
    assert loops_pool._limit == 0, "its idle workers were let go, as anyio's are"


class _Three:
    """An integer of another library's (numpy's int64, say): it has __index__."""

    def __index__(self) -> int:
        return 3


def test_counts_take_any_integer_type(max_threads: Any) -> None:
    assert forkwait.configure(max_threads=_Three()).max_threads == 3  # type: ignore[arg-type]
    before = forkwait.configure().max_processes
    try:
        assert forkwait.configure(max_processes=_Three()).max_processes == 3  # type: ignore[arg-type]
    finally:
        forkwait.configure(max_processes=before)
