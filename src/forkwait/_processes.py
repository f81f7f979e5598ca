"""``offload("processes")``: sync calls in a pool of worker processes.

Each worker process serves one call at a time over a pipe of its own: the forking
thread sends the call (pickled at ``fork``) straight down an idle worker's pipe, and
one reader thread per pool takes the outcomes off the pipes and finishes the futures.
That is two thread hand-offs fewer than ``ProcessPoolExecutor``, which queues through
a manager thread and a feeder thread. A call waits in the pool's own queue until a
worker is free, so ``cancel()`` stops every call that has not been handed to a worker.

Workers start with ``forkserver`` (``spawn`` where there is none), never plain
``fork``: this process has threads, and a forked copy of a process with threads can
deadlock. They start on demand, up to ``configure(max_processes=...)``; one that dies
fails the call it was running with ``BrokenProcessPool`` and is replaced. At exit the
pool stops at once: calls still running or queued are stopped, and counted in one
warning, instead of holding up the exit.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._config import settings
from ._future import new_future
from ._hosts import Remote
from ._offload import Target
from ._payload import pack_call, run_packed, unpack_outcome
from ._state import CANCELLED, QUEUED, RUNNING

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

    from ._future import Future

logger = logging.getLogger("forkwait")


class ProcessCall(Remote):
    """A call for the pool: queued until a worker takes it, then running there."""

    __slots__ = ("fut", "packed", "pool")

    def __init__(self, pool: Processes, fut: Future[Any], packed: bytes) -> None:
        super().__init__()
        self.pool = pool
        self.fut = fut
        self.packed: bytes | None = packed  # dropped once sent

    def cancel(self) -> bool:
        return self.pool.cancel_queued(self)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    __slots__ = ("call", "conn", "process", "started")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.call: ProcessCall | None = None  # the call it is running
        #: Whether it said it is ready; one that dies before has failed to start.
        self.started = False


def _serve(conn: Connection) -> None:
    """A worker process: run each call that comes down the pipe, send back its outcome."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what
    # stops, and stops the pool with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send_bytes(b"")  # started: past importing what the parent's main module needs
    while True:
        try:
            packed = conn.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe, or is gone
            return
        conn.send_bytes(run_packed(packed))


class Processes(Target):
    """The process pool target; one per process (``processes``)."""

    __slots__ = ("_idle", "_lock", "_queue", "_reader", "_wake_reader", "_workers")
    name = "processes"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._queue: deque[ProcessCall] = deque()
        self._reader: threading.Thread | None = None
        # Written to when the reader must look at a new worker list.
        self._wake_reader: tuple[Connection, Connection] | None = None

    # -- the forking side ------------------------------------------------------------

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        packed = pack_call(func, args, kwargs, "a worker process")
        fut = new_future(QUEUED, func)
        call = ProcessCall(self, fut, packed)
        fut._handle = call
        with self._lock:
            while len(self._workers) > settings.max_processes and self._idle:
                self._retire(self._idle.pop())  # the limit went down since it was idle
            worker = self._idle.pop() if self._idle else None
            if worker is None and len(self._workers) < settings.max_processes:
                worker = self._start_worker()
            if worker is None:
                self._queue.append(call)
                return fut
            worker.call = call
        self._send(worker, call)
        return fut

    def _send(self, worker: _Worker, call: ProcessCall) -> None:
        """Hand ``call`` to ``worker``, which the caller has reserved for it."""
        packed, call.packed = call.packed, None
        call.fut._state = RUNNING
        try:
            worker.conn.send_bytes(packed)  # type: ignore[arg-type]
        except OSError:  # it died meanwhile: the reader fails the call with the worker
            pass

    def cancel_queued(self, call: ProcessCall) -> bool:
        with self._lock:
            try:
                self._queue.remove(call)
            except ValueError:  # a worker has it, or it is done
                return call.fut._state == CANCELLED
        call.packed = None
        call.fut._set_cancelled()
        return True

    def _start_worker(self) -> _Worker:
        """A new worker process (under the lock), and the reader if none runs yet."""
        context = _start_method()
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_serve, args=(child_end,), name="forkwait-process", daemon=False
        )
        process.start()
        child_end.close()
        worker = _Worker(process, parent_end)
        self._workers.append(worker)
        if self._reader is None:
            self._wake_reader = multiprocessing.Pipe(duplex=False)
            self._reader = threading.Thread(
                target=self._read, name="forkwait-process-reader", daemon=True
            )
            self._reader.start()
        else:
            self._poke_reader()
        return worker

    def _poke_reader(self) -> None:
        if self._wake_reader is not None:
            self._wake_reader[1].send_bytes(b"")

    # -- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        """Take outcomes off the workers' pipes, and notice workers that die."""
        wake = self._wake_reader
        assert wake is not None
        while True:
            with self._lock:
                workers = list(self._workers)
                if self._reader is not threading.current_thread():
                    return  # the pool was stopped
            by_handle: dict[Any, _Worker] = {}
            for worker in workers:
                by_handle[worker.conn] = worker
                by_handle[worker.process.sentinel] = worker
            ready = multiprocessing.connection.wait([wake[0], *by_handle])
            for handle in ready:
                if handle is wake[0]:
                    try:
                        wake[0].recv_bytes()
                    except (EOFError, OSError):
                        return
                    continue
                worker = by_handle[handle]
                if worker not in self._workers:
                    continue  # retired, lost or stopped since the wait began
                if handle is worker.conn:
                    try:
                        outcome = worker.conn.recv_bytes()
                    except (EOFError, OSError):
                        self._lost(worker)
                        continue
                    if worker.started:
                        self._finished(worker, outcome)
                    else:
                        worker.started = True
                elif worker.conn not in ready or not worker.conn.poll():
                    self._lost(worker)  # its process ended with nothing more to read

    def _finished(self, worker: _Worker, outcome: bytes) -> None:
        call = worker.call
        with self._lock:
            next_call = self._queue.popleft() if self._queue else None
            worker.call = next_call
            if next_call is None:
                if len(self._workers) > settings.max_processes:  # the limit went down
                    self._retire(worker)
                else:
                    self._idle.append(worker)
        if next_call is not None:
            self._send(worker, next_call)
        if call is not None:
            _settle(call, outcome)

    def _lost(self, worker: _Worker) -> None:
        """``worker``'s process died: fail its call, and start another if calls wait
        (unless it died starting up, which the next one would do too)."""
        with self._lock:
            if worker not in self._workers:
                return
            self._workers.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            call, worker.call = worker.call, None
            failed = [] if worker.started else list(self._queue)
            replacement = None
            if failed:
                self._queue.clear()
            elif self._queue:
                replacement = self._start_worker()
                replacement.call = self._queue.popleft()
        worker.conn.close()
        worker.process.join(timeout=1)
        if replacement is not None and replacement.call is not None:
            self._send(replacement, replacement.call)
        code = worker.process.exitcode
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        if not worker.started:
            for each in [call, *failed] if call is not None else failed:
                each.fut._set_exception(
                    BrokenProcessPool(
                        f"a worker process for fork({describe(each.fut._func)}) {how} while "
                        f"starting: it imports the main module first, as multiprocessing "
                        f"does, so a script must keep its work under "
                        f'`if __name__ == "__main__":` and cannot come from stdin (see the '
                        f"worker's traceback above)"
                    )
                )
        elif call is not None:
            call.fut._set_exception(
                BrokenProcessPool(
                    f"the worker process (pid {worker.process.pid}) running "
                    f"fork({describe(call.fut._func)}) {how} before the call finished; "
                    f"the pool starts another process for the next call"
                )
            )

    def _retire(self, worker: _Worker) -> None:
        """Let an idle ``worker`` go (under the lock)."""
        self._workers.remove(worker)
        worker.conn.close()  # it sees the end of its pipe and exits

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the pool and its worker processes now; calls still running are lost."""
        with self._lock:
            workers, self._workers, self._idle = self._workers, [], []
            queued = list(self._queue)
            self._queue.clear()
            reader, self._reader = self._reader, None
            wake, self._wake_reader = self._wake_reader, None
        running = [w.call for w in workers if w.call is not None]
        for worker in workers:
            worker.conn.close()
            if worker.call is not None and worker.process.is_alive():
                worker.process.terminate()  # busy: it would not see its pipe close
        for worker in workers:
            worker.process.join(timeout=1)
        if wake is not None:
            wake[1].close()
        if reader is not None:
            reader.join(timeout=1)
        for call in running:
            call.fut._set_exception(
                BrokenProcessPool(
                    f"fork({describe(call.fut._func)}) was stopped with the process pool"
                )
            )
        for call in queued:
            call.fut._set_cancelled()
        if running or queued:
            logger.warning(
                "forkwait: %d offloaded call(s) still running in worker processes at exit "
                "were stopped (and %d queued ones cancelled)",
                len(running),
                len(queued),
            )

    def forget_in_child(self) -> None:
        """In a child made by ``os.fork``: the workers, pipes and reader are the parent's."""
        self._lock = threading.Lock()
        self._workers, self._idle = [], []
        self._queue = deque()
        self._reader = None
        self._wake_reader = None


def _settle(call: ProcessCall, outcome: bytes) -> None:
    """Finish ``call``'s future with the outcome its worker sent (in the reader thread)."""
    fut = call.fut
    try:
        ok, value, call.ran = unpack_outcome(outcome)
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


def _start_method() -> ForkServerContext | SpawnContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


processes = Processes()

atexit.register(processes.stop)
os.register_at_fork(after_in_child=processes.forget_in_child)
