"""Async callers: ``await fork(...)`` against the asyncio primitive doing the same job.

Rows 1-4: awaiting a forked coroutine (vs ``create_task``), fanning out 10,000 of
them, the memory a pending fork holds (vs a pending task), and awaiting a forked
sync function (vs ``run_in_executor`` and ``asyncio.to_thread``); each on asyncio
and on uvloop. The clock runs inside the coroutine, so ``run_until_complete``'s own
cost stays out of the numbers.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from forkwait import fork

from ._harness import Build, Config, Contenders, Measure, Scenario
from ._work import anoop, event_loop, loop_names, noop

FAN_OUT = 10_000

Bench = Callable[[int], Coroutine[Any, Any, float]]


def _on(loop: asyncio.AbstractEventLoop, bench: Bench) -> Measure:
    return lambda n: loop.run_until_complete(bench(n))


# -- 1: await a forked coroutine -----------------------------------------------------


async def _await_create_task(n: int) -> float:
    create_task = asyncio.get_running_loop().create_task
    start = perf_counter()
    for _ in range(n):
        await create_task(anoop())
    return (perf_counter() - start) / n


async def _await_fork_coro(n: int) -> float:
    start = perf_counter()
    for _ in range(n):
        await fork(anoop)
    return (perf_counter() - start) / n


# -- 2: fan out ------------------------------------------------------------------------


async def _fan_out_create_task(batches: int) -> float:
    create_task = asyncio.get_running_loop().create_task
    elapsed = 0.0
    for _ in range(batches):
        start = perf_counter()
        futs = [create_task(anoop()) for _ in range(FAN_OUT)]
        for f in futs:
            await f
        del futs  # freeing 10,000 finished items is part of the cost
        elapsed += perf_counter() - start
    return elapsed / (batches * FAN_OUT)


async def _fan_out_fork(batches: int) -> float:
    elapsed = 0.0
    for _ in range(batches):
        start = perf_counter()
        futs = [fork(anoop) for _ in range(FAN_OUT)]
        for f in futs:
            await f
        del futs
        elapsed += perf_counter() - start
    return elapsed / (batches * FAN_OUT)


# -- 3: memory held by a pending item ----------------------------------------------------

Spawn = Callable[[Callable[[], Coroutine[Any, Any, int]]], Awaitable[int]]


def _pending_bytes(spawn: Spawn, count: int) -> Bench:
    async def bench(_: int) -> float:
        event = asyncio.Event()
        started = 0

        async def blocked() -> int:
            nonlocal started
            started += 1
            await event.wait()
            return 1

        # Allocated before tracing starts, so the list itself is not counted.
        held: list[Awaitable[int] | None] = [None] * count
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(count):
                held[i] = spawn(blocked)
            # Let every item start and block on the event: a pending item has a frame.
            for _ in range(3):
                await asyncio.sleep(0)
            pending = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        if started != count:
            raise RuntimeError(f"only {started} of {count} items reached the event")
        event.set()
        for item in held:
            assert item is not None
            await item
        return pending / count

    return bench


def _spawn_task(func: Callable[[], Coroutine[Any, Any, int]]) -> Awaitable[int]:
    return asyncio.get_running_loop().create_task(func())


def _spawn_fork(func: Callable[[], Coroutine[Any, Any, int]]) -> Awaitable[int]:
    return fork(func)


# -- 4: await a forked sync function --------------------------------------------------


async def _await_run_in_executor(n: int) -> float:
    run_in_executor = asyncio.get_running_loop().run_in_executor
    start = perf_counter()
    for _ in range(n):
        await run_in_executor(None, noop)
    return (perf_counter() - start) / n


async def _await_to_thread(n: int) -> float:
    to_thread = asyncio.to_thread
    start = perf_counter()
    for _ in range(n):
        await to_thread(noop)
    return (perf_counter() - start) / n


async def _await_fork_sync(n: int) -> float:
    start = perf_counter()
    for _ in range(n):
        await fork(noop)
    return (perf_counter() - start) / n


# -- the scenarios -----------------------------------------------------------------------


def _contest(loop_name: str, anchors: list[tuple[str, Bench]], forkwait: Bench) -> Build:
    @contextmanager
    def build(_: Config) -> Iterator[Contenders]:
        with event_loop(loop_name) as loop:
            yield Contenders(
                anchors=[(label, _on(loop, bench)) for label, bench in anchors],
                forkwait=_on(loop, forkwait),
            )

    return build


def _memory(loop_name: str) -> Build:
    @contextmanager
    def build(config: Config) -> Iterator[Contenders]:
        count = 2_000 if config.quick else 10_000
        with event_loop(loop_name) as loop:
            yield Contenders(
                anchors=[("create_task", _on(loop, _pending_bytes(_spawn_task, count)))],
                forkwait=_on(loop, _pending_bytes(_spawn_fork, count)),
            )

    return build


def scenarios() -> list[Scenario]:
    rows: list[Scenario] = []
    names = loop_names()
    for name in names:
        rows.append(
            Scenario(
                f"1 async caller, coroutine [{name}]",
                "us",
                1.3,
                _contest(name, [("create_task", _await_create_task)], _await_fork_coro),
            )
        )
    for name in names:
        rows.append(
            Scenario(
                f"2 fan-out 10k coroutines, per item [{name}]",
                "us",
                1.3,
                _contest(name, [("create_task", _fan_out_create_task)], _fan_out_fork),
            )
        )
    for name in names:
        rows.append(
            Scenario(
                f"3 memory per pending coroutine [{name}]",
                "B",
                1.5,
                _memory(name),
                fixed_n=1,
                rounds=(3, 2),  # allocation counts barely vary, and traced runs are slow
            )
        )
    for name in names:
        anchors: list[tuple[str, Bench]] = [
            ("run_in_executor", _await_run_in_executor),
            ("to_thread", _await_to_thread),
        ]
        rows.append(
            Scenario(
                f"4 async caller, sync function [{name}]",
                "us",
                1.0,
                _contest(name, anchors, _await_fork_sync),
            )
        )
    return rows
