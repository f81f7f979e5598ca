"""Forks inside a scope against anyio's own task group, on asyncio, uvloop and trio.

Row 12: ``await fork(coro_fn)`` inside ``forkwait.scope()`` against awaiting the handle
of ``tg.start_soon(coro_fn)`` inside an anyio task group. Row 13: the memory a pending
scoped fork holds against a pending task of the group. Each sample runs in
``anyio.run`` on its backend; the clock runs inside, so start-up stays out.
"""

from __future__ import annotations

import gc
import importlib.util
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel

import forkwait
from forkwait import fork

from ._harness import Build, Config, Contenders, Measure, Scenario
from ._work import anoop

Bench = Callable[[int], Coroutine[Any, Any, float]]

SCOPED_FORKS = 2000  # per sample of row 12

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {"use_uvloop": False}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def _backends() -> list[str]:
    return [name for name in BACKENDS if name != "uvloop" or importlib.util.find_spec("uvloop")]


def _on(backend: str, bench: Bench) -> Measure:
    name, options = BACKENDS[backend]
    return lambda n: anyio.run(bench, n, backend=name, backend_options=options)


# -- 12: await one forked coroutine at a time -----------------------------------------------


async def _await_start_soon(n: int) -> float:
    async with anyio.create_task_group() as tg:
        start = perf_counter()
        for _ in range(n):
            await tg.start_soon(anoop)
        return (perf_counter() - start) / n


async def _await_scoped_fork(n: int) -> float:
    async with forkwait.scope():
        start = perf_counter()
        for _ in range(n):
            await fork(anoop)
        return (perf_counter() - start) / n


# -- 13: memory held by a pending item ------------------------------------------------------


def _pending_bytes(spawn: Callable[[Any], Any], in_scope: Callable[[], Any], count: int) -> Bench:
    async def bench(_: int) -> float:
        event = anyio.Event()
        started = 0

        async def blocked() -> int:
            nonlocal started
            started += 1
            await event.wait()
            return 1

        async with in_scope() as group:
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(count):
                    spawn(group)(blocked)
                for _ in range(3):  # every item starts and blocks on the event
                    await anyio.lowlevel.checkpoint()
                pending = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            if started != count:
                raise RuntimeError(f"only {started} of {count} items reached the event")
            event.set()
        return pending / count

    return bench


def _task_group_spawn(tg: Any) -> Callable[[Any], Any]:
    return tg.start_soon


def _scope_spawn(_: Any) -> Callable[[Any], Any]:
    return fork


# -- the scenarios ---------------------------------------------------------------------------


def _contest(backend: str, anchor: tuple[str, Bench], forkwait_bench: Bench) -> Build:
    @contextmanager
    def build(_: Config) -> Iterator[Contenders]:
        yield Contenders(
            anchors=[(anchor[0], _on(backend, anchor[1]))], forkwait=_on(backend, forkwait_bench)
        )

    return build


def _memory(backend: str) -> Build:
    @contextmanager
    def build(config: Config) -> Iterator[Contenders]:
        count = 2_000 if config.quick else 10_000
        anchor = _pending_bytes(_task_group_spawn, anyio.create_task_group, count)
        ours = _pending_bytes(_scope_spawn, forkwait.scope, count)
        yield Contenders(
            anchors=[("task group task", _on(backend, anchor))], forkwait=_on(backend, ours)
        )

    return build


def scenarios() -> list[Scenario]:
    rows: list[Scenario] = []
    for backend in _backends():
        rows.append(
            Scenario(
                f"12 scoped fork + await, coroutine [{backend}]",
                "us",
                1.0,
                _contest(backend, ("await tg.start_soon()", _await_start_soon), _await_scoped_fork),
                # Each sample starts an anyio.run, whose start-up would make calibration
                # pick a handful of forks: time the steady state of a run instead.
                fixed_n=SCOPED_FORKS,
            )
        )
    for backend in _backends():
        rows.append(
            Scenario(
                f"13 memory per pending scoped fork [{backend}]",
                "B",
                1.0,
                _memory(backend),
                fixed_n=1,
                rounds=(3, 2),
            )
        )
    return rows
