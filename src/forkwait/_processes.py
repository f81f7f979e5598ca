"""``offload("processes")``: sync calls in a pool of worker processes.

Each worker process serves one call at a time over a pipe of its own: a call goes
straight down an idle worker's pipe, and one reader thread per pool takes the outcomes
off the pipes and finishes the futures. That is two thread hand-offs fewer than
``ProcessPoolExecutor``, which queues through a manager thread and a feeder thread. A
call waits in the pool's own queue, in fork order, until a worker is free, so
``cancel()`` stops every call that no worker has yet.

Workers start with ``forkserver`` (``spawn`` where there is none, and in a child made
by ``os.fork``), never plain ``fork``: this process has threads, and a forked copy of
a process with threads can deadlock. They start on demand, up to
``configure(max_processes=...)``, in a thread of their own (``fork`` returns at once),
and take calls once they are ready; one that dies fails the call it was running with
``BrokenProcessPool`` and is replaced. A pool lives in a ``_Run``; ``stop()`` (at exit,
or in a worker process that is done) ends the run at once: calls still running are
stopped, queued ones cancelled, one warning counts them, and nothing holds up the exit.

Only the reader thread closes a worker's pipe while the run lives, so that it never
waits on a closed one; and each call is settled once, by whoever claims it first under
the run's lock (the reader, ``cancel()``, or ``stop()``).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._config import settings
from ._future import new_future
from ._hosts import Remote, thread_state
from ._offload import Target
from ._payload import pack_call, run_packed, settle_with_outcome
from ._state import QUEUED, RUNNING

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

    from ._future import Future

logger = logging.getLogger("forkwait")

#: What the parent sends a worker to let it go (a call is never empty).
_LEAVE = b""
#: How long stopping waits for worker processes to end before killing them.
_STOP_GRACE_SECONDS = 1.0


class ProcessCall(Remote):
    """A call for the pool: queued until a worker takes it, then running there."""

    __slots__ = ("fut", "packed", "run", "settled")

    def __init__(self, run: _Run, fut: Future[Any], packed: bytes) -> None:
        super().__init__()
        #: Until it is settled; dropped then, so a finished future keeps no pool alive.
        self.run: _Run | None = run
        self.fut = fut
        self.packed: bytes | None = packed  # dropped once sent
        self.settled = False  # claimed by whoever settles it (under the run's lock)

    def claim(self) -> bool:
        """Make this caller the one that settles it (under the run's lock)."""
        if self.settled:
            return False
        self.settled = True
        self.run = None
        self.packed = None
        return True

    def cancel(self) -> bool:
        run = self.run
        return run.cancel_queued(self) if run is not None else self.fut.cancelled()


class _Worker:
    """One worker process and the parent's end of its pipe."""

    __slots__ = ("call", "closed", "conn", "leaving", "process", "started")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.call: ProcessCall | None = None  # the call it is running
        self.started = False  # it said it is ready; one that dies before failed to start
        self.leaving = False  # told to go (the limit went down)
        self.closed = False


#: In a worker process: the parent stopped it (SIGTERM) while it was busy.
_terminated = False
#: The worker process that set the handler below (not a process a call forked).
_serving_pid = 0


def _leave_when_terminated(signum: int, frame: object) -> None:
    global _terminated
    if os.getpid() != _serving_pid:  # a process a call forked, before it reset SIGTERM
        _default_sigterm()
        os.kill(os.getpid(), signum)  # ended as SIGTERM ends it
        return
    _terminated = True
    raise SystemExit(128 + signum)  # out of the call, or of waiting for the next one


def _serve(conn: Connection) -> None:
    """A worker process: run each call that comes down the pipe, send back its outcome."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what
    # stops, and stops the pool with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent stops a busy worker with SIGTERM: leave through the `finally` below,
    # which stops a pool of this process's own, instead of leaving its calls running.
    # Processes that a call forks get the default back (see _hold_sigterm).
    global _serving_pid
    _serving_pid = os.getpid()
    signal.signal(signal.SIGTERM, _leave_when_terminated)
    os.register_at_fork(
        before=_hold_sigterm, after_in_parent=_release_sigterm, after_in_child=_default_sigterm
    )
    try:
        conn.send_bytes(b"")  # started: past importing what the parent's main module needs
        while True:
            packed = conn.recv_bytes()
            if packed == _LEAVE:
                return
            outcome = run_packed(packed)  # which catches the SystemExit, as the call's
            if _terminated:
                return  # the parent has stopped the pool: nobody reads the outcome
            conn.send_bytes(outcome)
    except (EOFError, OSError):  # the parent is gone, or going
        return
    finally:
        # A call here may have used a pool of this process's own: multiprocessing ends
        # a process by joining its children, so stop them first.
        processes.stop()
        if _terminated:
            # Now, as SIGTERM would: not after threads the call started, or cleanup
            # that multiprocessing runs, which the parent gives a second at most.
            os._exit(128 + signal.SIGTERM)


def _hold_sigterm() -> None:
    # Blocked across os.fork(): a SIGTERM that reaches the child before it has the
    # default back waits (the kernel keeps it pending), rather than trip the handler
    # that Python then forgets in the child, which would go on as if never signalled.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _release_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _default_sigterm() -> None:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: the handler passes it on (see above)
        pass
    _release_sigterm()


class _Run:
    """One life of the pool: its workers, queue and reader thread."""

    def __init__(self, context: ForkServerContext | SpawnContext) -> None:
        self.context = context
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []
        self.idle: list[_Worker] = []
        self.queue: deque[ProcessCall] = deque()
        self.starting = 0  # workers being started, outside the lock
        self.sending = 0  # sends in progress, outside the lock: stop() waits for them
        self.sent = threading.Condition(self.lock)
        self.stopped = False
        self.ever_started = False  # some worker got past its start-up
        # A byte down this pipe wakes the reader: a single write of one byte is atomic,
        # so any thread may poke it, unlike a Connection. The reader closes both ends
        # when it leaves, and nobody pokes a stopped run.
        self.wake_reader, self.poke = os.pipe()
        os.set_blocking(self.poke, False)
        self.reader = threading.Thread(
            target=self._read, name="forkwait-process-reader", daemon=True
        )
        self.reader.start()

    # -- submitting ------------------------------------------------------------------

    def submit(self, call: ProcessCall) -> None:
        with self.lock:
            if self.stopped:  # at exit, a fork raced the end of the pool
                call.claim()
                sends, starts = None, 0
            else:
                self.queue.append(call)  # behind those already waiting: fork order
                sends, starts = self._dispatch()
        if sends is None:
            call.fut._set_exception(BrokenProcessPool("the process pool was stopped (exit)"))
            return
        self._send_and_start(sends, starts)

    def redispatch(self) -> None:
        """The limit changed: let idle workers beyond it go, start workers for the calls
        that wait (``configure(max_processes=...)``)."""
        with self.lock:
            if self.stopped:
                return
            sends, starts = self._dispatch()
        self._send_and_start(sends, starts)

    def _send_and_start(self, sends: list[tuple[_Worker, ProcessCall]], starts: int) -> None:
        """What ``_dispatch`` decided, outside the lock."""
        try:
            self._send_all(sends)
        except BaseException:
            self._give_back(starts)
            raise
        self._start_soon(starts)

    def _dispatch(self) -> tuple[list[tuple[_Worker, ProcessCall]], int]:
        """Pair queued calls with idle workers, and count the workers to start for the
        rest (under the lock). The caller sends and starts, outside it."""
        sends: list[tuple[_Worker, ProcessCall]] = []
        active = sum(not worker.leaving for worker in self.workers)
        while active > settings.max_processes and self.idle:  # the limit went down
            worker = self.idle.pop()
            worker.leaving = True
            _tell_to_leave(worker)  # a byte or two: never blocks
            active -= 1
        while self.queue and self.idle:
            worker, call = self.idle.pop(), self.queue.popleft()
            worker.call = call
            call.fut._state = RUNNING
            sends.append((worker, call))
        # Workers still starting take the first calls queued once they say they are ready.
        booting = sum(not worker.started and not worker.leaving for worker in self.workers)
        room = settings.max_processes - active - self.starting
        starts = max(0, min(len(self.queue) - self.starting - booting, room))
        self.starting += starts
        self.sending += len(sends)
        return sends, starts

    def _send_all(self, sends: list[tuple[_Worker, ProcessCall]]) -> None:
        """Send each call to the worker reserved for it (``_dispatch`` counted them)."""
        for index, (worker, call) in enumerate(sends):
            packed, call.packed = call.packed, None
            try:
                if packed is not None:  # None: cancelled or stopped meanwhile
                    worker.conn.send_bytes(packed)
            except BaseException as exc:
                if self.stopped or isinstance(exc, (OSError, ValueError)):
                    pass  # it died, or the pool stopped: the reader or stop() settles it
                else:
                    # Ctrl-C part-way through a large call: the worker has half a
                    # message. Let it go, and those not sent to yet: the reader fails
                    # their calls when it sees them end.
                    for reserved, _ in sends[index:]:
                        reserved.process.kill()
                    self._sent(len(sends) - index)
                    raise
            self._sent(1)

    def _sent(self, count: int) -> None:
        with self.lock:
            self.sending -= count
            if not self.sending:
                self.sent.notify_all()

    def _give_back(self, count: int) -> None:
        """``count`` workers counted in ``starting`` will not be started after all."""
        if count:
            with self.lock:
                self.starting -= count

    def _start_soon(self, count: int) -> None:
        """``_start``, in a thread of its own: starting a process takes milliseconds (the
        forkserver's first start, a tenth of a second), which neither ``fork`` nor the
        reader waits for."""
        if not count:
            return
        starter = threading.Thread(
            target=self._start, args=(count,), name="forkwait-process-starter", daemon=True
        )
        try:
            starter.start()
        except RuntimeError:  # no thread to be had (the interpreter is shutting down)
            self._start(count)

    def _start(self, count: int) -> None:
        """Start ``count`` workers that ``_dispatch`` counted in ``starting``. Each takes
        queued calls once it says it is ready (see _look_at), so that until then
        ``cancel()`` stops them. A worker that cannot start is logged; the calls fail
        only if no worker is left to run them."""
        try:
            while count > 0:
                count -= 1
                if self._has_stopped():
                    self._give_back(1)
                    continue
                try:
                    worker = self._spawn()
                except Exception as exc:
                    with self.lock:
                        self.starting -= 1
                        stranded = not self.workers and not self.starting
                        failed = [c for c in list(self.queue) if c.claim()] if stranded else []
                        if stranded:
                            self.queue.clear()
                    logger.error("forkwait: a worker process could not start: %r", exc)
                    for call in failed:
                        call.fut._set_exception(_cannot_start(call, exc))
                    continue
                with self.lock:
                    self.starting -= 1
                    kill = self.stopped
                    if not kill:
                        self.workers.append(worker)
                if kill:
                    worker.process.kill()
                    worker.process.join(_STOP_GRACE_SECONDS)
                    worker.conn.close()
                    continue
                self._poke()  # the reader waits on the new worker too
        finally:
            self._give_back(count)  # left over when something was raised

    def _spawn(self) -> _Worker:
        with _starting:  # see _hold_starts
            return self._spawn_now()

    def _spawn_now(self) -> _Worker:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=_serve, args=(child_end,), name="forkwait-process", daemon=False
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return _Worker(process, parent_end)

    def _poke(self) -> None:
        with self.lock:  # a stopped run's wake pipe may be closed, and its fd reused
            if self.stopped:
                return
            try:
                os.write(self.poke, b"!")
            except OSError:  # full: the reader has plenty to do already
                pass

    def cancel_queued(self, call: ProcessCall) -> bool:
        with self.lock:
            if call.settled or call.fut._state != QUEUED:
                return call.fut.cancelled()
            self.queue.remove(call)
            call.claim()
        call.fut._set_cancelled()
        return True

    # -- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        """Take outcomes off the workers' pipes, and notice workers that end."""
        thread_state.serves_others = True  # callbacks run in worker threads, not here
        try:
            while True:
                with self.lock:
                    if self.stopped:
                        return
                    workers = list(self.workers)
                by_handle: dict[Any, _Worker] = {}
                for worker in workers:
                    by_handle[worker.conn] = worker
                    by_handle[worker.process.sentinel] = worker
                ready = multiprocessing.connection.wait([self.wake_reader, *by_handle])
                for handle in ready:
                    try:
                        if handle == self.wake_reader:
                            os.read(self.wake_reader, 4096)
                        else:
                            self._look_at(by_handle[handle], handle, ready)
                    except BaseException:
                        if self._has_stopped():
                            return
                        # Never let the reader die: every later call would hang.
                        logger.exception("forkwait: the process pool's reader hit an error")
        finally:
            with self.lock:
                os.close(self.wake_reader)
                os.close(self.poke)

    def _has_stopped(self) -> bool:
        return self.stopped

    def _look_at(self, worker: _Worker, handle: Any, ready: list[Any]) -> None:
        if worker not in self.workers:
            return  # already seen to end, in this same round
        if handle is worker.conn:
            try:
                message = worker.conn.recv_bytes()
            except (EOFError, OSError):
                self._ended(worker)
                return
            if worker.started:
                self._finished(worker, message)
            else:
                self._ready(worker)
        elif worker.conn not in ready and not worker.conn.poll():
            self._ended(worker)  # its process ended with nothing left to read

    def _ready(self, worker: _Worker) -> None:
        """``worker`` started: it takes the first call queued."""
        sends: list[tuple[_Worker, ProcessCall]] = []
        starts = 0
        with self.lock:
            worker.started = True
            self.ever_started = True
            if not self.stopped:
                self.idle.append(worker)
                sends, starts = self._dispatch()
        self._send_all(sends)
        self._start_soon(starts)

    def _finished(self, worker: _Worker, outcome: bytes) -> None:
        with self.lock:
            call, worker.call = worker.call, None
            claimed = call is not None and call.claim()
            sends: list[tuple[_Worker, ProcessCall]] = []
            starts = 0
            if not self.stopped:
                self.idle.append(worker)
                sends, starts = self._dispatch()  # or lets it go, if the limit went down
        if claimed and call is not None:
            # First: nothing below may keep it from its waiter.
            settle_with_outcome(call.fut, call, outcome, "its worker process")
        self._send_all(sends)
        self._start_soon(starts)

    def _ended(self, worker: _Worker) -> None:
        """``worker``'s process ended: fail its call, and start another if calls wait
        (unless none has ever started: the next one would fail the same way)."""
        with self.lock:
            if worker not in self.workers:
                return
            self.workers.remove(worker)
            if worker in self.idle:
                self.idle.remove(worker)
            call, worker.call = worker.call, None
            claimed = call is not None and call.claim()
            failed: list[ProcessCall] = []
            sends: list[tuple[_Worker, ProcessCall]] = []
            starts = 0
            if not worker.started and not worker.leaving and not self.ever_started:
                # No worker has ever started: a broken main module, say. Start no more;
                # once none is left starting, the calls fail instead of waiting.
                if not self.starting and all(other.started for other in self.workers):
                    failed = [c for c in list(self.queue) if c.claim()]
                    self.queue.clear()
            elif not self.stopped:
                sends, starts = self._dispatch()
        self._close(worker)
        worker.process.join(_STOP_GRACE_SECONDS)
        code = worker.process.exitcode
        # A forkserver worker's end comes from its forkserver: 255 when the forkserver
        # itself ended, which leaves the worker running.
        if (
            code == 255
            and type(worker.process).__name__ == "ForkServerProcess"
            and _stopped_if_still_running(worker.process.pid)
        ):
            how = "was cut off from the pool (its forkserver process ended) and was stopped"
        else:
            how = _how_it_ended(code)
        if claimed and call is not None:
            if not worker.started:
                call.fut._set_exception(_failed_to_start(call, how))
            else:
                call.fut._set_exception(
                    BrokenProcessPool(
                        f"the worker process (pid {worker.process.pid}) running "
                        f"fork({describe(call.fut._func)}) {how} before the call finished; "
                        f"the pool starts another process for the next call"
                    )
                )
        for each in failed:
            each.fut._set_exception(_failed_to_start(each, how))
        self._send_all(sends)
        self._start_soon(starts)

    def _close(self, worker: _Worker) -> None:
        with self.lock:
            if worker.closed:
                return
            worker.closed = True
        worker.conn.close()

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """End the run now: stop its workers, cancel what is queued, fail what runs."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            workers, self.workers, self.idle = self.workers, [], []
            queued = [call for call in list(self.queue) if call.claim()]
            self.queue.clear()
            running = [w.call for w in workers if w.call is not None and w.call.claim()]
            # Under the lock: the reader closes this pipe once it has seen `stopped`.
            try:
                os.write(self.poke, b"!")
            except OSError:  # full: the reader wakes anyway
                pass
        for worker in workers:
            if worker.call is not None:
                worker.process.terminate()  # busy: it would not read a request to leave
            else:
                _tell_to_leave(worker)
        if self.reader is not threading.current_thread():
            self.reader.join(_STOP_GRACE_SECONDS)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(deadline - time.monotonic(), 0.0))
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(_STOP_GRACE_SECONDS)
        with self.lock:  # a send to a worker that died fails at once; let it finish
            self.sent.wait_for(lambda: not self.sending, _STOP_GRACE_SECONDS)
        for worker in workers:
            self._close(worker)
            if worker.process.exitcode is not None:
                worker.process.close()
        for call in running:
            call.fut._set_exception(
                BrokenProcessPool(f"fork({describe(call.fut._func)}) was stopped with the pool")
            )
            call.fut._mark_retrieved()  # the warning below counts it: one line, not one each
        for call in queued:
            call.fut._set_cancelled()
        if running or queued:
            logger.warning(
                "forkwait: at exit, %d offloaded call(s) still running in worker processes "
                "were stopped, and %d queued ones cancelled",
                len(running),
                len(queued),
            )

    def forget_in_child(self) -> None:
        """In a child made by ``os.fork``: these pipes and processes are the parent's."""
        for worker in self.workers:
            worker.conn.close()
            multiprocessing.process._children.discard(worker.process)  # type: ignore[attr-defined]
        os.close(self.poke)
        os.close(self.wake_reader)


def _tell_to_leave(worker: _Worker) -> None:
    try:
        worker.conn.send_bytes(_LEAVE)
    except OSError:
        pass  # already gone


def _stopped_if_still_running(pid: int | None) -> bool:
    """Kill ``pid`` if it still runs after its process was seen to end: a forkserver
    worker whose forkserver ended (so the pool heard of an end that was not the
    worker's), which nothing else would stop; ``True`` if it did."""
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)  # its forkserver reaped it if it ended: no such pid
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _failed_to_start(call: ProcessCall, how: str) -> BrokenProcessPool:
    if how.startswith("was killed"):  # from outside (the OOM killer, say): no traceback
        return BrokenProcessPool(
            f"a worker process for fork({describe(call.fut._func)}) {how} while starting, "
            f"before it ran any call; the calls queued with it fail too, as the next process "
            f"might end the same way"
        )
    return BrokenProcessPool(
        f"a worker process for fork({describe(call.fut._func)}) {how} while starting: it "
        f"imports the main module first, as multiprocessing does, so a script must keep "
        f'its work under `if __name__ == "__main__":` and cannot come from stdin (see '
        f"the worker's traceback above)"
    )


def _cannot_start(call: ProcessCall, exc: BaseException) -> BrokenProcessPool:
    error = BrokenProcessPool(
        f"no worker process could start for fork({describe(call.fut._func)}): "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


class Processes(Target):
    """The process pool target; one per process (``processes``)."""

    __slots__ = ("_exited", "_forked_child", "_lock", "_run")
    name = "processes"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: _Run | None = None
        # In a child made by os.fork, the parent's forkserver is not ours to use.
        self._forked_child = False
        # Stopped at interpreter exit: a fork after that (from a thread still running)
        # fails at once, rather than start a new pool as the interpreter goes.
        self._exited = False

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        if getattr(multiprocessing.process.current_process(), "_inheriting", False):
            raise RuntimeError(
                f"fork({describe(func)}) to a worker process ran while this process was "
                f"itself starting as a worker and importing the main module: keep a "
                f'script\'s work under `if __name__ == "__main__":`'
            )
        packed = pack_call(func, args, kwargs, "a worker process", imports_main=True)
        fut = new_future(QUEUED, func)
        if self._exited:
            fut._state = RUNNING
            fut._set_exception(BrokenProcessPool("the process pool was stopped (exit)"))
            return fut
        run = self._run or self._new_run()
        call = ProcessCall(run, fut, packed)
        fut._handle = call
        run.submit(call)
        return fut

    def _new_run(self) -> _Run:
        with self._lock:
            if self._run is None:
                self._run = _Run(_start_method(spawn_only=self._forked_child))
            return self._run

    def stop(self) -> None:
        """Stop the pool and its worker processes now; the next fork starts a new one."""
        with self._lock:
            run, self._run = self._run, None
        if run is not None:
            run.stop()

    def stop_at_exit(self) -> None:
        self._exited = True
        self.stop()

    def limit_changed(self) -> None:
        """``configure(max_processes=...)`` changed the limit: apply it now."""
        run = self._run
        if run is not None:
            run.redispatch()

    def forget_in_child(self) -> None:
        run, self._run = self._run, None
        self._lock = threading.Lock()
        self._forked_child = True
        if run is not None:
            run.forget_in_child()


def _start_method(spawn_only: bool) -> ForkServerContext | SpawnContext:
    if not spawn_only and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


processes = Processes()

atexit.register(processes.stop_at_exit)
# A starter thread starting a process holds multiprocessing's locks, and on first use
# the import locks of the modules it loads. An os.fork() meanwhile would copy them
# held into the child, whose own pool would then wait on them for good: so a fork
# waits for the start to end (a few milliseconds; at most the grace period).
_starting = threading.Lock()
_forking = threading.local()  # whether this thread's os.fork() holds _starting


def _hold_starts() -> None:
    _forking.holds = _starting.acquire(True, _STOP_GRACE_SECONDS * 5)


def _release_starts() -> None:
    if getattr(_forking, "holds", False):
        _forking.holds = False
        _starting.release()


def _in_child() -> None:
    global _starting
    _starting = threading.Lock()  # held or not in the parent, nobody holds it here
    _forking.holds = False
    processes.forget_in_child()


os.register_at_fork(before=_hold_starts, after_in_parent=_release_starts, after_in_child=_in_child)
