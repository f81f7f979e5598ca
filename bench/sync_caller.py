"""Sync callers: ``wait(fork(...))`` from plain code, against the stdlib doing the same job.

Row 5: a sync function, vs ``ThreadPoolExecutor.submit(...).result()``, with a raw
two-queue thread handoff as the floor any thread pool pays. Row 6: a coroutine
function, vs ``asyncio.run_coroutine_threadsafe(...).result()`` on a loop in a
background thread (uvloop where installed, as forkwait's default runtime uses).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from queue import SimpleQueue
from time import perf_counter
from typing import Any

from forkwait import fork, wait

from ._harness import Config, Contenders, Measure, Scenario
from ._work import anoop, loop_names, new_loop, noop

# -- 5: sync function ------------------------------------------------------------------


def _executor_submit(executor: ThreadPoolExecutor) -> Measure:
    def measure(n: int) -> float:
        submit = executor.submit
        start = perf_counter()
        for _ in range(n):
            submit(noop).result()
        return (perf_counter() - start) / n

    return measure


class _Handoff:
    """One thread serving calls through two queues: the least any thread pool can do."""

    def __init__(self) -> None:
        self.calls: SimpleQueue[Callable[[], Any] | None] = SimpleQueue()
        self.results: SimpleQueue[Any] = SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="bench-handoff", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        get, put = self.calls.get, self.results.put
        while (fn := get()) is not None:
            put(fn())

    def measure(self, n: int) -> float:
        put, get = self.calls.put, self.results.get
        start = perf_counter()
        for _ in range(n):
            put(noop)
            get()
        return (perf_counter() - start) / n

    def close(self) -> None:
        self.calls.put(None)
        self.thread.join()


def _wait_fork_sync(n: int) -> float:
    start = perf_counter()
    for _ in range(n):
        wait(fork(noop))
    return (perf_counter() - start) / n


@contextmanager
def _sync_function(_: Config) -> Iterator[Contenders]:
    handoff = _Handoff()
    try:
        with ThreadPoolExecutor() as executor:
            yield Contenders(
                anchors=[("ThreadPoolExecutor.submit().result()", _executor_submit(executor))],
                forkwait=_wait_fork_sync,
                floor=("raw two-queue thread handoff", handoff.measure),
            )
    finally:
        handoff.close()


# -- 6: coroutine function ---------------------------------------------------------------


def _run_coroutine_threadsafe(loop: asyncio.AbstractEventLoop) -> Measure:
    def measure(n: int) -> float:
        run = asyncio.run_coroutine_threadsafe
        start = perf_counter()
        for _ in range(n):
            run(anoop(), loop).result()
        return (perf_counter() - start) / n

    return measure


def _wait_fork_coro(n: int) -> float:
    start = perf_counter()
    for _ in range(n):
        wait(fork(anoop))
    return (perf_counter() - start) / n


@contextmanager
def _background_loop(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    loop = new_loop(name)
    thread = threading.Thread(target=loop.run_forever, name=f"bench-{name}", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@contextmanager
def _coroutine_function(_: Config) -> Iterator[Contenders]:
    # The same loop kind as forkwait's default runtime, so the row compares handoffs.
    with _background_loop(loop_names()[-1]) as loop:
        yield Contenders(
            anchors=[("run_coroutine_threadsafe().result()", _run_coroutine_threadsafe(loop))],
            forkwait=_wait_fork_coro,
        )


def scenarios() -> list[Scenario]:
    return [
        Scenario("5 sync caller, sync function", "us", 1.0, _sync_function),
        Scenario(
            f"6 sync caller, coroutine [{loop_names()[-1]} thread]",
            "us",
            1.0,
            _coroutine_function,
        ),
    ]
