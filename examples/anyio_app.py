"""forkwait in an anyio app, on asyncio or trio: a task group, a scope, a deadline.

The app forks I/O-like coroutines and a blocking sync call (which forks work of its own
back onto the app's loop) into its own task group; then it gives a batch a deadline
that cancels what is too slow; then it shows how a failure comes out of a scope.

    python examples/anyio_app.py --backend asyncio
    python examples/anyio_app.py --backend trio
"""

from __future__ import annotations

import argparse
import time

import anyio

import forkwait
from forkwait import fork, wait


async def fetch(name: str, seconds: float) -> str:
    """An I/O-like call: runs as a task on the app's loop."""
    await anyio.sleep(seconds)
    return f"{name} after {seconds}s"


def summarize(name: str) -> str:
    """Blocking sync work (runs in a worker thread) that forks a call of its own: the
    nested fork runs on the app's loop, whichever backend that is."""
    detail = fork(fetch, f"{name} detail", 0.05)
    checksum = sum(map(ord, name))  # stands for CPU or blocking I/O work
    return f"{name} checksum={checksum}, {wait(detail)}"


async def refuse(name: str) -> None:
    await anyio.sleep(0.01)
    raise ValueError(f"{name} was refused")


async def main(backend: str) -> None:
    print(f"running on {backend}")

    # 1. Forks attached to the app's own task group live and die with it.
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0.1)  # one of the app's own tasks, alongside
        with forkwait.scope(task_group=tg):
            pages = [fork(fetch, f"page {i}", 0.1) for i in range(3)]
            summary = fork(summarize, "report")
    elapsed = time.perf_counter() - start
    print(f"task group: {[page.result() for page in pages]}")
    print(f"task group: {summary.result()}")
    print(f"task group: 5 calls of 0.05-0.1 s took {elapsed:.2f} s together")

    # 2. A deadline around a scope cancels the forks that are still running.
    with anyio.move_on_after(0.3) as deadline:
        async with forkwait.scope():
            quick = fork(fetch, "quick", 0.05)
            slow = fork(fetch, "slow", 10)
    print(
        f"deadline: hit={deadline.cancelled_caught}, quick={quick.result()!r}, "
        f"slow cancelled={slow.cancelled()}"
    )

    # 3. A failure nobody retrieved cancels its siblings and leaves the scope grouped.
    try:
        async with forkwait.scope():
            fork(refuse, "order 7")
            sibling = fork(fetch, "sibling", 10)
    except* ValueError as group:
        print(f"scope raised: {[str(exc) for exc in group.exceptions]}")
        print(f"sibling cancelled={sibling.cancelled()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    backend = parser.parse_args().backend
    anyio.run(main, backend, backend=backend)
