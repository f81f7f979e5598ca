"""The trivial work every row forks, and the event loops the async rows run on.

The work does nothing, so each row measures the overhead of getting it run.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager


def noop() -> int:
    return 1


async def anoop() -> int:
    return 1


def loop_names() -> list[str]:
    """The loops to run the async rows on: asyncio, and uvloop where installed."""
    if importlib.util.find_spec("uvloop") is None:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@contextmanager
def event_loop(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop for this thread, closed (with its default executor) afterwards."""
    loop = new_loop(name)
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
