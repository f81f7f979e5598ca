"""Pure-Python CPU work forked to threads, to processes and to a Dask cluster.

Threads help when the work releases the GIL (torch, NumPy, I/O); a pure-Python loop
holds it, so eight of them forked to threads take as long as running them one after
another. ``forkwait.offload(...)`` sends the same forks to worker processes, or to the
workers of a Dask cluster, and everything else stays as it was: ``fork``, ``wait_all``,
the futures and their exceptions.

    python examples/distributed.py                          # a LocalCluster of 2 workers
    python examples/distributed.py tcp://10.0.0.5:8786      # a running Dask scheduler

Like every program that starts worker processes, it keeps its work under
``if __name__ == "__main__":``, because each worker process imports this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# This file has the name of the package it uses: keep its folder off the import path,
# or `import distributed` would import this file.
_here = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _here]

import forkwait  # noqa: E402
from forkwait import fork, wait, wait_all  # noqa: E402

FORKS = 8


def count_primes(limit: int) -> int:
    """Pure-Python CPU work: it holds the GIL from start to end."""
    count = 0
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def check_positive(n: int) -> int:
    if n <= 0:
        raise ValueError(f"expected a positive number, got {n}")
    return n


def limit_for(seconds: float) -> int:
    """A limit for which count_primes takes about ``seconds`` here."""
    limit = 2_000
    while True:
        start = time.perf_counter()
        count_primes(limit)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return int(limit * (seconds / elapsed) ** (2 / 3))  # the work grows as limit**1.5
        limit *= 2


def run_batch(target: object, limit: int) -> tuple[list[int], float]:
    """Fork the batch to ``target`` and wait for it; once untimed first, so that the
    worker processes are up and have the function."""
    with forkwait.offload(target):
        wait_all([fork(count_primes, 100) for _ in range(FORKS)])
    start = time.perf_counter()
    with forkwait.offload(target):
        futures = [fork(count_primes, limit) for _ in range(FORKS)]
    counts = wait_all(futures)
    return counts, time.perf_counter() - start


@contextmanager
def dask_client(address: str | None) -> Iterator[object]:
    """A client of the cluster at ``address``, or of a new 2-worker LocalCluster."""
    from distributed import Client, LocalCluster

    if address is not None:
        with Client(address, set_as_default=False) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scheduler", nargs="?", help="a Dask scheduler address (default: local)")
    args = parser.parse_args()

    limit = limit_for(0.05)
    print(f"{FORKS} forks of count_primes({limit}), about 50 ms each, on {os.cpu_count()} cores:")
    counts, threads = run_batch("threads", limit)
    print(f"  threads:    {threads:.2f} s")
    same, processes = run_batch("processes", limit)
    print(f"  processes:  {processes:.2f} s ({threads / processes:.1f}x faster than threads)")
    with dask_client(args.scheduler) as client:
        on_cluster, dask = run_batch(client, limit)
        print(f"  dask:       {dask:.2f} s ({threads / dask:.1f}x faster than threads)")
        with forkwait.offload(client):
            failed = fork(check_positive, -1)
        try:
            wait(failed)
        except ValueError as exc:  # the exception keeps its type across the cluster
            print(f"  an error from the cluster: ValueError: {exc}")
    print(f"same results everywhere: {counts == same == on_cluster}")


if __name__ == "__main__":
    main()
