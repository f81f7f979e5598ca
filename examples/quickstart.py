"""forkwait in one page: fork sync and async calls from sync and from async code.

Each batch runs three calls that take 0.2 s each, one of which forks and waits on a
nested call of its own; the batch takes about as long as the slowest call, not the sum.
Run it with `make demo`.
"""

from __future__ import annotations

import asyncio
import time

import forkwait
from forkwait import fork, wait

DELAY = 0.2


def blocking_io(name: str) -> str:
    """A sync call that blocks (a file read, a model forward): runs in a worker thread."""
    time.sleep(DELAY)
    return f"{name} read"


async def async_io(name: str) -> str:
    """A coroutine function (a network call): runs as a task on the event loop."""
    await asyncio.sleep(DELAY)
    return f"{name} fetched"


def nested(name: str) -> str:
    """A sync call that forks two calls of its own and waits for both."""
    inner = [fork(blocking_io, f"{name}.a"), fork(async_io, f"{name}.b")]
    return " + ".join(forkwait.wait_all(inner))


def report(where: str, values: list[str], parts: int, elapsed: float) -> None:
    print(f"{where}: {values}")
    print(
        f"  batch took {elapsed:.2f} s; its {parts} calls took {parts * DELAY:.2f} s "
        f"one after another ({parts * DELAY / elapsed:.1f}x overlap)"
    )


def from_sync_code() -> None:
    start = time.perf_counter()
    futures = [fork(blocking_io, "disk"), fork(async_io, "net"), fork(nested, "inner")]
    values = [wait(fut) for fut in futures]
    report("sync code", values, 4, time.perf_counter() - start)


async def from_async_code() -> None:
    start = time.perf_counter()
    futures = [fork(blocking_io, "disk"), fork(async_io, "net"), fork(nested, "inner")]
    values = [await fut for fut in futures]
    report("async code", values, 4, time.perf_counter() - start)


if __name__ == "__main__":
    from_sync_code()
    asyncio.run(from_async_code())
