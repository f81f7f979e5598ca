"""Worker threads for sync calls: the thread limit, and waits that cannot starve it.

Two rules keep nested fork/join from deadlocking a bounded pool (fib(18) forking
both branches with 4 threads):

1. a waiter that finds its call still queued takes it and runs it in its own thread;
2. a worker blocked in ``wait`` gives its slot back while it blocks, so another worker
   may start and run what it waits for.
"""

from __future__ import annotations

import os
import threading
from _thread import allocate_lock
from asyncio import events as _events
from inspect import isawaitable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from ._config import settings
from ._hosts import Host, spawn, thread_state
from ._state import DONE, QUEUED, RUNNING, state_lock

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Callable

    from ._future import Future

    #: What fork records for a sync call: func, args, kwargs, context, host.
    Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], contextvars.Context, Host]

_get_running_loop = _events._get_running_loop
_lock = state_lock.acquire
_unlock = state_lock.release

# Idle workers exit after this long, so thread count returns to its baseline.
IDLE_SECONDS = 10.0
# Running queued calls inline turns fork depth into stack depth; past this many nested
# inline calls a thread blocks instead (giving its slot back), and a worker with a fresh
# stack takes the call, so deep recursion of forks does not hit RecursionError.
MAX_INLINE_DEPTH = 24
# Put on the queue to wake an idle worker so that it notices a lowered limit.
_WAKE_UP = None


def run_call(fut: Future[Any], call: Call) -> None:
    """Run a claimed sync call in this thread and settle ``fut``."""
    func, args, kwargs, context, host = call
    local = thread_state
    previous = getattr(local, "host", None)
    local.host = host
    try:
        value = context.run(func, *args, **kwargs)
    except BaseException as exc:
        fut._set_exception(exc)
    else:
        if isawaitable(value):
            # A sync callable that returned an awaitable (a lambda returning a
            # coroutine): await it on the loop, so a result is never a coroutine.
            spawn(host, fut, value, context)
        else:
            fut._set_result(value)
    finally:
        local.host = previous


def claim(fut: Future[Any]) -> Call | None:
    """Take ``fut``'s queued sync call so this thread runs it; ``None`` if someone else did."""
    _lock()
    try:
        if fut._state == QUEUED:
            call: Call = fut._handle
            fut._handle = None
            fut._state = RUNNING
            return call
        return None
    finally:
        _unlock()


class WorkerPool:
    """Daemon worker threads, at most ``limit`` of them running calls at once."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.idle_seconds = IDLE_SECONDS
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # Also the whole state of a child after os.fork: the parent's workers do not
        # exist there, and what they had queued is lost with them.
        self._lock = threading.Lock()
        self._queue: SimpleQueue[Future[Any] | None] = SimpleQueue()
        self._running = 0  # workers alive and not blocked in wait (idle ones included)
        self._idle = 0  # workers waiting for the queue
        self._queued = 0  # queue entries no worker has taken yet
        self._serial = 0

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self._limit = limit
            start = self._should_start()
            # Idle workers beyond the new limit wake up and leave; busy ones leave
            # when their call returns.
            wake = min(self._running - limit, self._idle)
            self._queued += max(wake, 0)
        for _ in range(wake):
            self._queue.put(_WAKE_UP)
        if start:
            self._start_worker()

    def thread_count(self) -> int:
        """Workers alive and not blocked in ``wait``."""
        return self._running

    def submit(self, fut: Future[Any]) -> None:
        """Queue ``fut``'s sync call for a worker."""
        self._queue.put(fut)
        with self._lock:
            self._queued += 1
            start = self._should_start()
        if start:
            self._start_worker()

    def _should_start(self) -> bool:
        # Called with the lock held; counts the new worker at once so that concurrent
        # submitters do not both start one for the same job.
        if self._queued > self._idle and self._running < self._limit:
            self._running += 1
            return True
        return False

    def _start_worker(self) -> None:
        self._serial += 1
        thread = threading.Thread(
            target=self._work, name=f"forkwait-worker-{self._serial}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: no new threads
            with self._lock:
                self._running -= 1
            raise

    def _work(self) -> None:
        thread_state.worker = self
        queue = self._queue
        lock = self._lock
        while True:
            with lock:
                if self._running > self._limit:
                    # Over the limit: the limit was lowered, or a worker came back from
                    # a wait (see unblocked); leave rather than run one call too many.
                    self._running -= 1
                    return
                self._idle += 1
            try:
                fut = queue.get(timeout=self.idle_seconds)
            except Empty:
                with lock:
                    self._idle -= 1
                    if self._queued <= self._idle:
                        self._running -= 1
                        return
                continue  # something arrived as we timed out: stay for it
            with lock:
                self._idle -= 1
                self._queued -= 1
            if fut is None:
                continue
            call = claim(fut)
            if call is not None:
                run_call(fut, call)
            # Drop references now, or an idle worker keeps the last future alive.
            del fut, call

    def block_released(self) -> None:
        """This worker is about to block in ``wait``: give its slot to a new worker."""
        with self._lock:
            self._running -= 1
            start = self._should_start()
        if start:
            self._start_worker()

    def unblocked(self) -> None:
        """This worker stopped blocking and takes its slot back (the limit may be
        exceeded briefly until a worker goes idle; waiting for a slot could deadlock)."""
        with self._lock:
            self._running += 1


pool = WorkerPool(settings.max_threads)


def block_until_done(fut: Future[Any], timeout: float | None, api: str) -> None:
    """Block this thread until ``fut`` is done, or raise ``TimeoutError``."""
    if _get_running_loop() is not None:
        raise RuntimeError(
            f"Future.{api}() would block the event loop running in this thread; "
            f"in async code write `await fut` or `await forkwait.wait(fut)`"
        )
    if timeout is None and fut._state == QUEUED and type(fut._handle) is tuple:
        local = thread_state
        depth: int = getattr(local, "inline_depth", 0)
        if depth < MAX_INLINE_DEPTH:
            call = claim(fut)
            if call is not None:
                # Rule 1: nobody has started it, so run it here rather than wait for a
                # worker that may never come.
                local.inline_depth = depth + 1
                try:
                    run_call(fut, call)
                finally:
                    local.inline_depth = depth
                if fut._state >= DONE:
                    return
    waiter = allocate_lock()
    waiter.acquire()
    if not fut._add_waiter(waiter):
        return
    worker: WorkerPool | None = getattr(thread_state, "worker", None)
    if worker is not None:
        worker.block_released()  # rule 2
    try:
        if timeout is None:
            waiter.acquire()
        elif not waiter.acquire(True, max(timeout, 0.0)):
            fut._remove_waiter(waiter)
            raise TimeoutError(f"{fut!r} did not finish within {timeout} seconds; it keeps running")
    finally:
        if worker is not None:
            worker.unblocked()
