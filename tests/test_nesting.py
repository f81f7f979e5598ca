"""Nested fork/join to any depth, and why it cannot starve a bounded pool of threads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest

import forkwait
from forkwait import Future, fork, wait, wait_all

pytestmark = pytest.mark.timeout(60)


def fib(n: int) -> int:
    """Each call forks both children and waits on them: the classic pool-starver."""
    if n < 2:
        return n
    left, right = fork(fib, n - 1), fork(fib, n - 2)
    return wait(left) + wait(right)


async def afib(n: int) -> int:
    if n < 2:
        return n
    left, right = fork(afib, n - 1), fork(afib, n - 2)
    return await left + await right


def test_fib_18_completes_with_four_threads(max_threads: Any) -> None:
    """Recursive fork/join deep past the thread limit completes (anyio and
    concurrent.futures deadlock here from fib(4) to fib(9))."""
    max_threads(4)
    assert fib(18) == 2584


def test_fib_completes_with_a_single_thread(max_threads: Any) -> None:
    """Even a limit of one thread cannot be starved."""
    max_threads(1)
    assert fib(12) == 144


def fib_through(join: str, n: int, threads: set[int]) -> int:
    """fib, each level joining its children through ``then()``, or ``collect_all``."""
    threads.add(threading.get_ident())
    if n < 2:
        return n
    left, right = fork(fib_through, join, n - 1, threads), fork(fib_through, join, n - 2, threads)
    if join == "then":
        return int(left.then(Future.value).wait()) + int(right.then(Future.value).wait())
    done = forkwait.collect_all([left, right]).wait()
    return int(done[0].value()) + int(done[1].value())


@pytest.mark.parametrize("join", ["then", "collect_all", "collect_all in a trace"])
def test_fib_joined_through_then_or_collect_all_runs_queued_calls_in_the_waiter(
    max_threads: Any, join: str
) -> None:
    """A wait for a then() future or for collect_all runs what it follows, still queued,
    in the waiting thread (rule 1), as a wait for the call itself does; inside a trace
    too. Each blocked level started a thread instead: hundreds for fib(14)."""
    max_threads(2)
    threads: set[int] = set()
    with forkwait.trace() if join.endswith("trace") else contextlib.nullcontext():
        assert fib_through(join.split()[0], 14, threads) == 377
    assert len(threads) <= 2 + 1 + 2  # the workers, this thread, and a few on the margin


def test_fib_forked_from_a_worker_thread(max_threads: Any) -> None:
    """The recursion starting inside a worker (not the main thread) completes too."""
    max_threads(4)
    assert wait(fork(fib, 15)) == 610


@pytest.mark.anyio
async def test_fib_forked_from_async_code(max_threads: Any) -> None:
    """Async callers can fork the sync recursion and await it."""
    max_threads(4)
    assert await fork(fib, 15) == 610


@pytest.mark.anyio
async def test_async_fib() -> None:
    """Recursive fork/await of coroutines on one loop."""
    assert await fork(afib, 12) == 144


def alternate(depth: int) -> str:
    """Sync level: fork the next (async) level and block on it."""
    if depth == 0:
        return "bottom"
    return "s" + wait(fork(alternate_async, depth - 1))


async def alternate_async(depth: int) -> str:
    """Async level: fork the next (sync) level and await it."""
    if depth == 0:
        return "bottom"
    return "a" + await fork(alternate, depth - 1)


@pytest.mark.parametrize("limit", [1, 4])
def test_a_chain_of_ten_alternating_sync_and_async_forks(max_threads: Any, limit: int) -> None:
    """sync -> async -> sync ... ten deep: each sync level blocks while holding no slot."""
    max_threads(limit)
    assert wait(fork(alternate, 10)) == "sasasasasabottom"


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [1, 4])
async def test_a_chain_of_ten_alternating_forks_from_async_code(
    max_threads: Any, limit: int
) -> None:
    """The same chain started on the test's own loop (asyncio and uvloop)."""
    max_threads(limit)
    assert await fork(alternate_async, 10) == "asasasasasbottom"


def test_a_worker_blocked_in_wait_gives_its_slot_back(max_threads: Any) -> None:
    """With one thread, a sync call waiting on a task whose own sync child needs a
    thread completes: the waiting worker lends its slot (running inline cannot help)."""
    max_threads(1)

    async def middle() -> int:
        return await fork(abs, -7)

    def outer() -> int:
        return wait(fork(middle))

    assert wait(fork(outer)) == 7


def peak_concurrency(calls: int) -> int:
    """Fork ``calls`` short sync calls; how many ran at once in worker threads, at most.

    The limit is on worker threads: a thread blocked in wait may also run a queued
    call itself (rule 1), which is not counted here.
    """
    lock = threading.Lock()
    running = 0
    peak = 0

    def work() -> None:
        nonlocal running, peak
        in_worker = threading.current_thread().name.startswith("forkwait-worker")
        with lock:
            running += in_worker
            peak = max(peak, running)
        time.sleep(0.005)  # the work: long enough for overlap to show
        with lock:
            running -= in_worker

    wait_all([fork(work) for _ in range(calls)], timeout=30)
    return peak


def test_the_thread_limit_bounds_concurrent_sync_calls(max_threads: Any) -> None:
    """At most max_threads sync calls run at once."""
    max_threads(2)
    assert 1 <= peak_concurrency(12) <= 2


def test_lowering_the_limit_retires_idle_workers(max_threads: Any) -> None:
    """After configure lowers the limit, no more than the new limit run at once."""
    max_threads(8)
    barrier = threading.Barrier(8, timeout=10)
    wait_all([fork(barrier.wait) for _ in range(8)])  # eight workers exist now
    max_threads(1)
    assert peak_concurrency(8) == 1


def test_deep_nesting_of_sync_forks(max_threads: Any) -> None:
    """A chain 200 deep of sync forks, each waiting on the next, completes with 2 threads."""
    max_threads(2)

    def chain(depth: int) -> int:
        return depth if depth == 0 else 1 + wait(fork(chain, depth - 1))

    assert wait(fork(chain, 200)) == 200


def test_many_threads_wait_on_the_same_future() -> None:
    """Every waiter of one future wakes with the same value."""
    gate = threading.Event()

    async def gated() -> str:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        return "shared"

    fut = fork(gated)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(wait(fut))) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["shared"] * 8
