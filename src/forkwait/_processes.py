"""``offload("processes")``: sync calls in a pool of worker processes.

The pool is a ``concurrent.futures.ProcessPoolExecutor`` started with ``forkserver``
(``spawn`` where there is none), never plain ``fork``: this process has threads, and
a forked copy of a process with threads can deadlock. It is made on first use, sized
by ``configure(max_processes=...)``, replaced when a worker dies (the executor is then
broken for good), and stopped at exit: calls still running then are stopped with it,
and counted in a log line, instead of holding up the exit.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future as _ExecutorFuture
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._config import settings
from ._future import new_future
from ._hosts import Remote
from ._offload import Target
from ._payload import pack_call, run_packed, unpack_outcome
from ._state import RUNNING

if TYPE_CHECKING:
    from ._future import Future

logger = logging.getLogger("forkwait")


class ProcessCall(Remote):
    """A call in the pool: cancelling it works until a worker process has taken it."""

    __slots__ = ("job",)

    def __init__(self, job: _ExecutorFuture[bytes]) -> None:
        super().__init__()
        self.job: _ExecutorFuture[bytes] | None = job

    def cancel(self) -> bool:
        job = self.job
        # The executor runs the done callback (which cancels the future) inside cancel().
        return job is not None and job.cancel()


class Processes(Target):
    """The process pool target; one per process (``processes``)."""

    __slots__ = ("_executor", "_in_flight", "_lock", "_size")
    name = "processes"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._size = 0
        #: The calls sent and not yet back, so that exit can say what it stopped.
        self._in_flight: set[Future[Any]] = set()

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        packed = pack_call(func, args, kwargs, "a worker process")
        fut = new_future(RUNNING, func)
        try:
            job = self._executor_now().submit(run_packed, packed)
        except BrokenProcessPool:  # a worker died since the last call: start afresh
            job = self._executor_now(replace_broken=True).submit(run_packed, packed)
        handle = ProcessCall(job)
        fut._handle = handle
        self._in_flight.add(fut)
        job.add_done_callback(lambda job: self._settle(fut, handle, job))
        return fut

    def _executor_now(self, replace_broken: bool = False) -> ProcessPoolExecutor:
        executor = self._executor
        size = settings.max_processes
        if executor is not None and self._size == size and not replace_broken:
            return executor
        with self._lock:
            executor = self._executor
            if executor is None or self._size != size or replace_broken:
                if executor is not None:
                    executor.shutdown(wait=False)  # what runs there finishes
                executor = ProcessPoolExecutor(size, mp_context=_start_method())
                self._executor, self._size = executor, size
            return executor

    def _settle(self, fut: Future[Any], handle: ProcessCall, job: _ExecutorFuture[bytes]) -> None:
        """Finish ``fut`` as ``job`` finished (in the executor's thread, or in cancel())."""
        self._in_flight.discard(fut)
        handle.job = None  # the outcome's bytes are not kept past this
        if job.cancelled():
            fut._set_cancelled()
            return
        error = job.exception()
        if error is not None:
            if isinstance(error, BrokenProcessPool):
                died = BrokenProcessPool(
                    f"the worker process running fork({describe(fut._func)}) stopped before "
                    f"the call finished (it was killed, crashed or exited; if this program "
                    f"is exiting, it was stopped). The next fork starts a new process pool."
                )
                died.__cause__ = error
                error = died
            fut._set_exception(error)
            return
        try:
            ok, value, handle.ran = unpack_outcome(job.result())
        except Exception as exc:
            refused = TypeError(
                f"the outcome of fork({describe(fut._func)}) came back from its worker "
                f"process but cannot be unpickled here ({type(exc).__name__}: {exc})"
            )
            refused.__cause__ = exc
            fut._set_exception(refused)
            return
        if ok:
            fut._set_result(value)
        else:
            fut._set_exception(value)

    def stop(self) -> None:
        """Stop the pool and its worker processes now; calls still running are lost."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        running = len(self._in_flight)
        by_pid: dict[int, multiprocessing.process.BaseProcess] = (
            getattr(executor, "_processes", None) or {}
        )
        workers = list(by_pid.values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            if process.is_alive():
                process.terminate()
        if running:
            logger.warning(
                "forkwait: %d offloaded call(s) still running in worker processes at exit "
                "were stopped",
                running,
            )

    def forget_in_child(self) -> None:
        """In a child made by ``os.fork``: the pool's threads and pipes are the parent's."""
        self._lock = threading.Lock()
        self._executor = None
        self._in_flight = set()


def _start_method() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


processes = Processes()

# Before concurrent.futures' own exit hook (these run in reverse order of registration),
# which would otherwise wait for every running call to finish.
threading._register_atexit(processes.stop)  # type: ignore[attr-defined]
atexit.register(processes.stop)  # a pool started during exit itself
os.register_at_fork(after_in_child=processes.forget_in_child)
