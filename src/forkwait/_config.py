"""Process-wide settings: thread and process limits, the default loop and offload target."""

from __future__ import annotations

import operator
import os
import sys
import threading
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

if TYPE_CHECKING:
    from ._offload import Target

LoopName = Literal["asyncio", "uvloop"]

#: anyio's default for ``to_thread.run_sync``; forkwait counts threads the same way.
DEFAULT_MAX_THREADS = 40


def uvloop_installed() -> bool:
    """Whether uvloop can be imported here (found, not imported: that waits for first use)."""
    import importlib.util  # here, not at the top: `import forkwait` stays light

    return importlib.util.find_spec("uvloop") is not None


class _Settings:
    """The settings, behind a lock; a child made by ``os.fork`` gets a fresh lock."""

    __slots__ = ("lock", "loop", "max_processes", "max_threads", "offload")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.max_threads = DEFAULT_MAX_THREADS
        # None: uvloop where installed, else asyncio, decided when the runtime starts.
        self.loop: LoopName | None = None
        #: The size of the process pool of ``offload("processes")``: one per core.
        self.max_processes = os.cpu_count() or 1
        #: Where sync calls forked outside any ``offload()`` go; ``None``: threads.
        self.offload: Target | None = None


settings = _Settings()


def _reset_lock_in_child() -> None:
    # Another thread may have held the lock at the moment of the fork; it does not
    # exist in the child, so the lock would never be released.
    settings.lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


class Configuration(NamedTuple):
    """The settings in effect, as ``configure()`` returns them."""

    #: The limit of worker threads running sync calls, for each event loop.
    max_threads: int
    #: The default runtime's loop: the one it runs on, or will start.
    loop: LoopName
    #: The number of worker processes of ``offload("processes")``.
    max_processes: int
    #: Where sync calls forked outside any ``forkwait.offload()`` run.
    offload: str


def _count(value: object, option: str, what: str) -> int:
    """``value`` as a count of at least 1 (an int, or any integer such as numpy's)."""
    try:
        count = operator.index(cast(int, value)) if not isinstance(value, bool) else 0
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(
            f"configure({option}=...) needs a whole number of {what} >= 1, got {value!r}"
        )
    return count


def configure(
    max_threads: int | None = None,
    loop: LoopName | None = None,
    *,
    max_processes: int | None = None,
    offload: object = None,
) -> Configuration:
    """Set the thread and process limits, the default runtime's event loop and where
    sync calls go; return the settings in effect (``configure()`` alone reads them).

    An option left as ``None`` keeps its current value. ``max_threads`` bounds the
    worker threads running sync calls forked for each event loop, as anyio's thread
    limit does (sync code and the default runtime share one limit; a worker blocked in
    ``wait`` does not count, and a thread waiting on a call that has not started runs it
    itself); it takes effect at once. ``loop`` (``"uvloop"`` or ``"asyncio"``) must be
    chosen before the default runtime starts: when plain sync code first forks a coroutine.
    ``max_processes`` sizes the process pool (one process per core by default); a lower
    limit lets idle workers go, a higher one starts more. ``offload`` is where sync calls forked
    outside any ``forkwait.offload()`` run: ``"threads"`` (the default), ``"processes"``,
    a ``distributed.Client`` or a Dask scheduler address. ::

        forkwait.configure(max_threads=8, loop="asyncio")
        forkwait.configure().max_threads    # 8
    """
    # Checked at run time too: callers without a type checker pass strings and floats.
    if max_threads is not None:
        max_threads = _count(max_threads, "max_threads", "threads")
    if max_processes is not None:
        max_processes = _count(max_processes, "max_processes", "processes")
    if loop is not None:
        if loop not in ("asyncio", "uvloop"):
            raise ValueError(f'configure(loop=...) must be "asyncio" or "uvloop", got {loop!r}')
        if loop == "uvloop" and not uvloop_installed():
            raise ValueError(
                'configure(loop="uvloop") needs uvloop, which is not installed here; '
                'install it (pip install uvloop) or pass loop="asyncio"'
            )
    target: Target | None = None
    if offload is not None:  # last: a scheduler address may take seconds to reach
        from ._offload import target_for

        target = target_for(offload, "configure(offload=...)")
    # Imported here, not at the top: the runtime and the pool import this module.
    from ._runtime import runtime
    from ._threads import all_pools

    with settings.lock:
        if loop is not None and loop != settings.loop:
            running = runtime.running_loop_name()
            if running is not None and running != loop:
                raise RuntimeError(
                    f"configure(loop={loop!r}) came after the default runtime started "
                    f"on {running}; call configure() before the first fork from sync code"
                )
            settings.loop = loop
        if max_threads is not None:
            settings.max_threads = max_threads
            for pool in all_pools():
                pool.set_limit(max_threads)  # under the lock: concurrent calls agree
        if max_processes is not None:
            settings.max_processes = max_processes
        if target is not None:
            settings.offload = None if target.name == "threads" else target
        effective_loop = runtime.running_loop_name() or settings.loop
        if effective_loop is None:
            effective_loop = "uvloop" if uvloop_installed() else "asyncio"
        configuration = Configuration(
            settings.max_threads,
            cast(LoopName, effective_loop),
            settings.max_processes,
            "threads" if settings.offload is None else settings.offload.name,
        )
    if max_processes is not None and "forkwait._processes" in sys.modules:
        from ._processes import processes as process_pool

        process_pool.limit_changed()  # outside the lock: it may start worker processes
    return configuration
