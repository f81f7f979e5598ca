"""Offload: pure-Python CPU work in processes and on a Dask cluster, against threads.

Row 15: eight forks of a pure-Python function of about 50 ms (it holds the GIL, so
threads run it one at a time), waited on from sync code: ``offload("processes")`` and
``offload(client)`` for a 2-worker ``LocalCluster`` against the default, threads; the
target is 1.6x faster, that is a ratio <= 0.625. Row 16: the cost of one
``wait(fork(noop))`` in ``offload("processes")`` against
``ProcessPoolExecutor.submit(noop).result()``, both on warm pools of the same size and
start method. The Dask row also times Dask's own ``client.submit`` + ``gather`` of the
same batch, as a floor: what the cluster costs here without forkwait.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import forkwait
from forkwait import fork, wait, wait_all

from ._harness import Config, Contenders, Measure, Scenario
from ._work import noop

FORKS = 8


def spin(n: int) -> int:
    """Pure-Python CPU work: holds the GIL all along."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def _spins_for(seconds: float) -> int:
    """How many spins take ``seconds`` here: the best of 5 timings, so that a busy moment
    (the pool of the row before still exiting, say) does not make the work shorter."""
    n = 10_000
    while True:
        elapsed = min(_timed(spin, n) for _ in range(5))
        if elapsed > 0.01:
            return round(n * seconds / elapsed)
        n *= 4


def _timed(func: Callable[[int], object], n: int) -> float:
    start = perf_counter()
    func(n)
    return perf_counter() - start


def _batch(target: Any, n_spins: int) -> Measure:
    def measure(n: int) -> float:
        start = perf_counter()
        for _ in range(n):
            with forkwait.offload(target):
                futs = [fork(spin, n_spins) for _ in range(FORKS)]
            wait_all(futs)
        return (perf_counter() - start) / n

    return measure


@contextmanager
def _cpu_batches(config: Config, with_dask: bool) -> Iterator[Contenders]:
    n_spins = _spins_for(0.05)
    if not with_dask:
        yield Contenders(
            anchors=[("threads (forkwait's default)", _batch("threads", n_spins))],
            forkwait=_batch("processes", n_spins),
        )
        return
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):

        def dask_alone(n: int) -> float:
            start = perf_counter()
            for _ in range(n):
                client.gather([client.submit(spin, n_spins, pure=False) for _ in range(FORKS)])
            return (perf_counter() - start) / n

        yield Contenders(
            anchors=[("threads (forkwait's default)", _batch("threads", n_spins))],
            forkwait=_batch(client, n_spins),
            # Dask's own submit + gather: what the cluster costs without forkwait.
            floor=("Dask's own client.submit + gather", dask_alone),
        )


def _round_trips(submit_and_wait: Callable[[], object]) -> Measure:
    def measure(n: int) -> float:
        start = perf_counter()
        for _ in range(n):
            submit_and_wait()
        return (perf_counter() - start) / n

    return measure


@contextmanager
def _per_fork(_: Config) -> Iterator[Contenders]:
    size = forkwait.configure().max_processes
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(size, mp_context=context) as executor:

        def anchor() -> object:
            return executor.submit(noop).result()

        def ours() -> object:
            with forkwait.offload("processes"):
                fut = fork(noop)
            return wait(fut)

        yield Contenders(
            anchors=[("ProcessPoolExecutor.submit().result()", _round_trips(anchor))],
            forkwait=_round_trips(ours),
        )


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            f"15 {FORKS} x 50 ms pure-Python CPU, processes vs threads",
            "ms",
            0.625,
            lambda config: _cpu_batches(config, with_dask=False),
            fixed_n=1,
            rounds=(7, 3),
        ),
        Scenario(
            f"15 {FORKS} x 50 ms pure-Python CPU, Dask LocalCluster vs threads",
            "ms",
            0.625,
            lambda config: _cpu_batches(config, with_dask=True),
            fixed_n=1,
            rounds=(7, 3),
        ),
        Scenario("16 wait(fork(noop)) in offload('processes')", "us", 1.1, _per_fork),
    ]
