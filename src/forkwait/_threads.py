"""Worker threads for sync calls: the thread limit, and waits that cannot starve it.

Two rules keep nested fork/join from deadlocking a bounded pool (fib(18) forking
both branches with 4 threads):

1. a waiter that finds its call still queued takes it and runs it in its own thread;
2. a worker blocked in ``wait`` gives its slot back while it blocks, so another worker
   may start and run what it waits for.

The module pools, whose limit is small (torch's inter-op thread count), also have a
watchdog for calls that block on anything else (a queue, I/O, a coroutine on a loop):
when their oldest queued call has waited a while and no worker took it, it starts one
more worker.

The per-call path takes no lock: jobs go on a deque and idle workers park on a lock
of their own, both of which the GIL makes atomic. The pool lock guards only the
thread count, which changes when a worker starts, retires, blocks or unblocks.
"""

from __future__ import annotations

import atexit
import contextvars
import inspect
import logging
import numbers
import os
import sys
import threading
import time
import weakref
from _thread import TIMEOUT_MAX, allocate_lock
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ._callables import describe
from ._compiled import running_loop
from ._config import settings
from ._hosts import (
    LOOK_AGAIN_SECONDS,
    After,
    Host,
    HostedTask,
    Members,
    abandon_if_it_cannot_finish,
    call_frame,
    get_call_frame,
    get_ident,
    keep_acquiring,
    spawn,
    stranded_calls,
    take,
    thread_state,
    trio_token,
)
from ._state import DONE, FAILED, QUEUED, RUNNING
from ._torch import InState, interop_threads, is_module_call, never_awaitable
from ._torch import bind_inline as bind_torch_inline
from ._torch import clean_up as clean_torch_state

logger = logging.getLogger("forkwait")

if TYPE_CHECKING:
    import contextvars

    from ._future import Future
    from ._hooks import Observer

    #: What fork records for a sync call: func, args, kwargs, context, host.
    Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], contextvars.Context, Host]

_set_call_frame = call_frame.set
_modules = sys.modules

# Idle workers exit after this long, so thread count returns to its baseline.
IDLE_SECONDS = 10.0
# Running queued calls inline turns fork depth into stack depth; past this many nested
# inline calls a thread blocks instead (giving its slot back), and a worker with a fresh
# stack takes the call, so deep recursion of forks does not hit RecursionError.
MAX_INLINE_DEPTH = 24
# How long a module pool's oldest queued call may wait with no worker taking it before
# the watchdog starts one more worker (.NET's thread pool waits 0.5 s).
STARVED_SECONDS = 0.25
# How long a sync waiter leaves its queued module to a full pool (see
# _module_pool_is_full) before it runs the module itself: the watchdog starts a thread
# for it within two periods, and this leaves it two more (a loaded machine), unless no
# thread can start (the system's thread limit; an exit hook on Python 3.12).
PATIENCE_SECONDS = 4 * STARVED_SECONDS
# How long interpreter exit gives the worker threads, all together, to end.
_EXIT_GRACE_SECONDS = 0.2


def _enter(
    frame: tuple[Host, int, Any, int],
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    _set_call_frame(frame)  # in the call's own context, so nothing to restore
    del frame  # the call's frames keep this one, which must not keep the future: run_call
    return func(*args, **kwargs) if kwargs else func(*args)  # no copy of an empty dict


def run_call(fut: Future[Any], call: Call, depth: int) -> None:
    """Run a taken sync call in this thread, ``depth`` calls deep inline, and settle ``fut``."""
    func, args, kwargs, context, host = call
    try:
        value = context.run(_enter, (host, depth, fut, get_ident()), func, args, kwargs)
    except BaseException as exc:
        if "torch" in _modules:
            try:
                clean_torch_state(func)
            except BaseException as failed:  # the call's own exception is the one to raise
                logger.error("forkwait: could not put back a fresh torch state", exc_info=failed)
        fut._set_exception(exc)
        # The call's frames, in the exception's traceback, keep this frame (their caller)
        # and _enter's: neither may hold the future (nor the call's context, which holds
        # it in the call frame), or the future, the exception and the frames keep one
        # another alive in a cycle until a garbage collection.
        del fut, call, context
        return
    if "torch" in _modules:  # a call that left grad mode off must not leave it to the next
        try:
            clean_torch_state(func)
        except BaseException as failed:  # raised, it would leave the future unsettled
            fut._set_exception(failed)
            return
    if type(value) not in never_awaitable and inspect.isawaitable(value):
        # A sync callable that returned an awaitable (a lambda returning a
        # coroutine): await it on the loop, so a result is never a coroutine.
        try:
            spawn(host, fut, value, context, queued=False)
        except BaseException as exc:  # no loop to run it (say, at interpreter exit)
            fut._set_exception(exc)
        return
    # fut._set_result(value), inlined: this is every sync call's way out.
    fut._value = value
    fut._state = DONE
    if fut._waiters is not None:
        fut._drain()


class WorkerPool:
    """Daemon worker threads, at most ``limit`` of them running calls at once, and never
    more than ``cap`` whatever the limit configured."""

    def __init__(self, limit: int, cap: int = sys.maxsize) -> None:
        self.cap = cap
        self._limit = min(limit, cap)
        #: Whether the watchdog looks after it (see _watch): the module pools.
        self.watched = cap != sys.maxsize
        #: Whether it keeps _busy up to date, for waiters to see how full it is: the
        #: module pools (see _module_pool_is_full).
        self.counts_busy = cap != sys.maxsize
        self.idle_seconds = IDLE_SECONDS
        self._generation = 0
        self._reset()

    def _reset(self) -> None:
        # Also the whole state of a child after os.fork: the parent's workers do not
        # exist there, and what they had queued is lost with them.
        self._lock = threading.Lock()
        self._jobs: deque[Future[Any]] = deque()
        # The wake-up locks of idle workers, each held until a submitter releases it.
        self._parked: list[Any] = []
        # Workers alive and not blocked in wait, idle ones included; may exceed the
        # limit briefly when a blocked worker comes back (see unblocked).
        self._running = 0
        # The workers in a call and not blocked in wait, by thread id (if counts_busy).
        self._busy: set[int] = set()
        self._serial = 0
        # Changes on os.fork: a worker that forked the process (from inside a call)
        # must not go on serving the parent's queue in the child.
        self._generation += 1

    def close(self) -> None:
        """Let the idle workers go now (their loop is gone, or the interpreter exits);
        a worker in a call finishes it first, and later calls run in their waiter.

        Takes no lock: it may run from a garbage collection, in any thread, at any point.
        """
        self._limit = 0  # one store: workers then retire (see _work)
        while True:
            try:
                self._parked.pop().release()
            except IndexError:
                break

    def set_limit(self, limit: int) -> None:
        limit = min(limit, self.cap)
        with self._lock:
            self._limit = limit
        for _ in range(min(len(self._jobs), limit)):  # a raised limit: start what may run
            if not self._grow():
                break
        # Idle workers wake up, and those beyond the new limit retire.
        while True:
            try:
                self._parked.pop().release()
            except IndexError:
                break

    def set_cap(self, cap: int) -> None:
        """A new cap (torch's inter-op thread count changed); the limit follows it."""
        with settings.lock:  # as configure() sets limits, so the two agree
            self.cap = cap
            self.set_limit(settings.max_threads)

    def reopen(self) -> None:
        """Take workers again after ``close()``, up to the configured limit."""
        self._limit = min(settings.max_threads, self.cap)

    def submit(self, fut: Future[Any]) -> None:
        """Queue ``fut``'s sync call for a worker."""
        self._jobs.append(fut)
        # Wake the most recently idle worker (its cache is warm). Test before pop: a
        # raised IndexError costs more than the whole rest of a fork.
        if self._parked:
            try:
                self._parked.pop().release()
                return
            except IndexError:
                pass
        if self._running < self._limit:
            if not self._grow() and self.watched:  # another submitter took the slot
                _watch(self)
        elif self.watched:
            _watch(self)

    def _grow(self, starved: bool = False) -> bool:
        """Start a worker if the limit allows (or beyond it, for ``starved`` calls);
        ``True`` if one started."""
        with self._lock:
            if self._running >= self._limit and not starved:
                return False
            self._running += 1
            self._serial += 1
            serial = self._serial
        thread = threading.Thread(
            target=self._work, args=(starved,), name=f"forkwait-worker-{serial}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: no new threads
            with self._lock:
                self._running -= 1
            return False
        return True

    def _retire(self) -> bool:
        """Leave the pool unless a job would be stranded; ``True`` if this worker left."""
        with self._lock:
            self._running -= 1
            running = self._running
        if self._jobs:
            if running < self._limit:
                # A submitter may have read the count before it dropped and so started
                # no worker: the slot is free, so stay for the job.
                with self._lock:
                    self._running += 1
                return False
            self._wake_idle()  # over the limit: leave the job to a worker that stays
            if self.watched:  # and if none is idle, to the watchdog's
                _watch(self)
        return True

    def _wake_idle(self) -> None:
        if self._parked:
            try:
                self._parked.pop().release()
            except IndexError:
                pass

    def _work(self, starved: bool = False) -> None:
        """Take and run calls; ``starved``: started by the watchdog beyond the limit, so
        stay, whatever the limit, until the pool is back within it or this worker has
        idled ``idle_seconds`` (the threads it stands in for may be blocked for long)."""
        thread_state.worker = self
        ident = get_ident()
        jobs = self._jobs
        parked = self._parked
        generation = self._generation
        wake = allocate_lock()
        wake.acquire()
        while True:
            if self._generation != generation:
                thread_state.worker = None
                return  # this is a child made by os.fork: the pool it served is gone
            if self._running > self._limit:
                # Over the limit: it was lowered, or a waiter came back. A worker the
                # watchdog started stays while those it stands in for are still there
                # (until the pool closes), and becomes one as any once they left.
                if (not starved or self._limit == 0) and self._retire():
                    return
            elif starved:
                starved = False
            try:
                fut = jobs.popleft() if jobs else None  # test first: raising costs more
            except IndexError:  # another worker took the last one between the two
                fut = None
            if fut is None:
                parked.append(wake)
                # A job came before we were visible as idle: stay awake. Or the pool
                # closed (or shrank) before that, and nobody would wake us to leave.
                # A worker the watchdog started idles over the limit: the next call
                # (a sync waiter leaves a full module pool's calls to it, see
                # _module_pool_is_full) would otherwise wait a period for another.
                if jobs or (self._running > self._limit and (not starved or self._limit == 0)):
                    self._unpark(wake)
                    continue
                idle_too_long = not wake.acquire(True, self.idle_seconds)
                if idle_too_long and self._unpark(wake) and self._retire():
                    return
                continue
            call = take(fut)
            if call is not None:
                fut._state = RUNNING
                if type(call[0]) is InState:
                    call[0].in_fresh_worker = True
                if self.counts_busy:
                    self._busy.add(ident)
                    try:
                        run_call(fut, call, 0)
                    finally:
                        self._busy.discard(ident)
                else:
                    run_call(fut, call, 0)
            # Drop references now, or an idle worker keeps the last future alive.
            del fut, call

    def _unpark(self, wake: Any) -> bool:
        """Take ``wake`` back from the idle list; ``False`` if a submitter already had it."""
        try:
            self._parked.remove(wake)
        except ValueError:
            wake.acquire()  # the submitter's release is on its way: consume it
            return False
        return True

    def block_released(self) -> bool:
        """This worker is about to block in ``wait``: give its slot to a new worker;
        ``True`` if it was in a call (and so no longer counts as busy meanwhile)."""
        with self._lock:
            self._running -= 1
        in_a_call = False
        if self.counts_busy:
            ident = get_ident()
            if ident in self._busy:  # not a wait of a finalizer between two calls, say
                self._busy.discard(ident)
                in_a_call = True
        if self._jobs and not self._parked:
            self._grow()
        return in_a_call

    def unblocked(self, in_a_call: bool) -> None:
        """This worker stopped blocking and takes its slot back; the limit may be
        exceeded until a worker finishes its call (waiting for a slot could deadlock)."""
        with self._lock:
            self._running += 1
        if in_a_call:
            self._busy.add(get_ident())


# The pools with calls queued at their limit, which the watchdog thread looks at while
# there are any (see _watch_for_starvation).
_watched: set[WorkerPool] = set()
_watch_lock = threading.Lock()
_watching = False


def _watch(pool: WorkerPool) -> None:
    """``pool`` has a call queued at its limit: have the watchdog look at it."""
    global _watching
    with _watch_lock:
        _watched.add(pool)
        if _watching:
            return
        _watching = True
    watchdog = threading.Thread(target=_watch_for_starvation, name="forkwait-watchdog", daemon=True)
    try:
        watchdog.start()
    except RuntimeError:  # interpreter shutdown: no new threads
        with _watch_lock:
            _watching = False


def _watch_for_starvation() -> None:
    """Every ``STARVED_SECONDS``, start one more worker in each watched pool whose oldest
    queued call no worker took since the last look; leave when none has calls queued."""
    global _watching
    last_seen: dict[WorkerPool, Future[Any]] = {}
    while True:
        time.sleep(STARVED_SECONDS)  # a period between looks, not a wait for an event
        starved: list[WorkerPool] = []
        with _watch_lock:  # with _watch's: a pool is dropped only while it has no call
            for each in list(_watched):
                oldest = _oldest_queued(each) if each.watched else None
                if oldest is None:
                    _watched.discard(each)
                    last_seen.pop(each, None)
                elif last_seen.get(each) is oldest:
                    starved.append(each)
                else:
                    last_seen[each] = oldest
            if not _watched:
                _watching = False
                return
        for each in starved:
            each._grow(starved=True)


def _oldest_queued(pool: WorkerPool) -> Future[Any] | None:
    # The queue keeps calls that their waiters took and ran: those are not waiting.
    for fut in list(pool._jobs):
        if fut._state == QUEUED:
            return fut
    return None


#: The pool of plain sync code and of the default runtime's loop.
pool = WorkerPool(settings.max_threads)
# The pools of other event loops (and trio runs), by id(); anyio limits threads per
# loop too. An entry goes when its loop is collected (see _add_pool).
_loop_pools: dict[int, WorkerPool] = {}
# The pools of forked torch modules, by id() of their host as above, None's included.
_module_pools: dict[int, WorkerPool] = {}
#: The module pool of plain sync code and of the default runtime's loop, once made.
_shared_module_pool: WorkerPool | None = None


def pool_for(host: Host) -> WorkerPool:
    """The pool whose thread limit a sync call forked for ``host`` counts against."""
    if host is None:
        return pool
    found = _loop_pools.get(id(host))
    return found if found is not None else _add_pool(host, modules=False)


def module_pool_for(host: Host) -> WorkerPool:
    """The pool of ``host`` for forked torch modules: as ``torch.jit.fork`` runs its tasks
    on torch's inter-op threads, at most ``torch.get_num_interop_threads()`` of them run
    at once. More would share the cores they compute on, and each finish later."""
    found = _module_pools.get(id(host))
    if found is None:
        found = _add_pool(host, modules=True)
    cap = interop_threads()
    if found.cap != cap:  # torch.set_num_interop_threads() since the pool was made
        found.set_cap(cap)
    return found


def _add_pool(host: Host, modules: bool) -> WorkerPool:
    from ._runtime import runtime

    pools = _module_pools if modules else _loop_pools
    with settings.lock:
        key = id(host)
        found = pools.get(key)
        if found is None:
            # The default runtime's loop shares the pools of the sync code it serves.
            if host is None or host is runtime.current_loop():
                found = _shared_pool(modules)
            else:
                cap = interop_threads() if modules else sys.maxsize
                found = WorkerPool(settings.max_threads, cap)
            pools[key] = found
            if host is not None:
                weakref.finalize(host, _drop_pool, pools, key)  # before id() can be reused
        return found


def _shared_pool(modules: bool) -> WorkerPool:
    """The pool of plain sync code, or its module pool (made on first use: it asks torch)."""
    global _shared_module_pool
    if not modules:
        return pool
    if _shared_module_pool is None:
        _shared_module_pool = WorkerPool(settings.max_threads, interop_threads())
    return _shared_module_pool


def _drop_pool(pools: dict[int, WorkerPool], key: int) -> None:
    dropped = pools.pop(key, None)
    if dropped is not None and dropped is not pool and dropped is not _shared_module_pool:
        dropped.close()  # as anyio stops a loop's worker threads with the loop


def _close_at_exit() -> None:
    # Idle workers are daemon threads; ended now, none is left to wake up while the
    # interpreter (and the C++ of extension modules such as torch) is being torn down.
    pools = all_pools()
    never_started = [fut for each in pools for fut in list(each._jobs) if fut._state == QUEUED]
    for each in pools:
        each.close()
    for fut in never_started:  # abandoned (said below): none runs later, either
        if take(fut) is not None:
            fut._set_cancelled()
    # One short grace period for all of them: the idle ones leave within it, and exit
    # does not wait on the busy ones (their calls are abandoned with the process).
    deadline = time.monotonic() + _EXIT_GRACE_SECONDS
    current = threading.current_thread()
    workers = [
        thread
        for thread in threading.enumerate()
        if thread is not current and thread.name.startswith("forkwait-worker-")
    ]
    for thread in workers:
        thread.join(timeout=max(deadline - time.monotonic(), 0.0))
    # An exit hook that runs after this one (registered before forkwait was imported)
    # may still fork: the shared pools start workers for it again (and the watchdog, one
    # beyond a module pool whose threads are all in abandoned calls).
    pool.reopen()
    if _shared_module_pool is not None:
        _shared_module_pool.reopen()
    busy = sum(thread.is_alive() for thread in workers)
    if busy or never_started:
        names = sorted({describe(fut._func) for fut in never_started})
        logger.warning(
            "forkwait: at exit, %d sync call(s) were still running in worker threads and "
            "%d had not started%s; they were abandoned",
            busy,
            len(never_started),
            f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else "",
        )


atexit.register(_close_at_exit)


def all_pools() -> list[WorkerPool]:
    """Every pool, for ``configure(max_threads=...)``."""
    pools = {id(pool): pool}
    for each in (*_loop_pools.values(), *_module_pools.values()):
        pools.setdefault(id(each), each)
    return list(pools.values())


def _reset_after_fork() -> None:
    # The parent's loops, their workers and the watchdog do not exist in the child.
    global _shared_module_pool, _watch_lock, _watching
    _loop_pools.clear()
    for each in _module_pools.values():
        each._reset()  # a worker that forked the process stops serving it in the child
    _module_pools.clear()
    _shared_module_pool = None  # made again on first use, with the child's settings
    pool._reset()
    _watched.clear()
    _watch_lock = threading.Lock()
    _watching = False
    stranded_calls.update(_running_elsewhere)  # noted by _note_running_calls
    _running_elsewhere.clear()


def _note_running_calls() -> None:
    """Before ``os.fork()``: note the sync calls running in other threads, and those
    queued for workers, which the child will not have (see ``stranded_calls``). The
    forking thread's calls go on in the child."""
    for each_pool in all_pools():  # its deque also holds calls taken meanwhile
        _running_elsewhere.extend(fut for fut in each_pool._jobs if fut._state == QUEUED)
    here = threading.get_ident()
    code = run_call.__code__
    for ident, frame in sys._current_frames().items():
        if ident == here:
            continue
        each: Any = frame
        while each is not None:
            if each.f_code is code:
                _running_elsewhere.append(each.f_locals["fut"])
            each = each.f_back


_running_elsewhere: list[Future[Any]] = []

os.register_at_fork(
    before=_note_running_calls,
    after_in_parent=_running_elsewhere.clear,
    after_in_child=_reset_after_fork,
)


def seconds(timeout: object, api: str) -> float | None:
    """``timeout`` as ``api`` got it, checked: seconds, or ``None`` for no limit (also
    for one longer than a lock can wait, such as ``math.inf``)."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(
            f"{api}(timeout=...) takes a number of seconds, or None for no limit; got {timeout!r}"
        )
    value = float(timeout)
    if value != value:
        raise ValueError(f"{api}(timeout=...) got NaN; pass seconds, or None for no limit")
    return None if value > TIMEOUT_MAX else value


def block_until_done(
    fut: Future[Any], timeout: float | None, api: str, observer: Observer | None = None
) -> None:
    """Block this thread until ``fut`` is done, or raise ``TimeoutError``."""
    if running_loop() is not None or trio_token() is not None:
        raise RuntimeError(
            f"Future.{api}() would block the event loop running in this thread; "
            f"in async code write `await fut` or `await forkwait.wait(fut)`"
        )
    if observer is None:
        block(fut, timeout)
    else:
        if thread_state.hidden_host is not None:  # sequential mode, see there
            refuse_waiting_on_the_hidden_loop(fut)
        block_interruptibly(fut, timeout, observer)


def run_inline(fut: Future[Any], leave_to_a_full_pool: bool = True) -> bool:
    """Rule 1: run ``fut``'s queued sync call in this thread, rather than wait for a worker
    that may never come; ``False`` if somebody took it first, the stack is deep, or (with
    ``leave_to_a_full_pool``) it is a module that its pool's threads will run."""
    handle: list[Call] = fut._handle
    depth = get_call_frame()[1]
    if type(handle) is not list or depth >= MAX_INLINE_DEPTH:
        return False
    if (
        leave_to_a_full_pool
        and "torch" in _modules
        and is_module_call(fut._func)
        and _module_pool_is_full(handle, fut)
    ):
        return False
    try:
        call = handle.pop()  # take(fut), inlined
    except IndexError:
        return False
    fut._state = RUNNING
    if "torch" in _modules:  # this thread's torch state may not be the forker's
        func, args, kwargs, context, host = call
        call = (bind_torch_inline(func), args, kwargs, context, host)
    run_call(fut, call, depth + 1)
    return True


def _module_pool_is_full(handle: list[Call], fut: Future[Any]) -> bool:
    """Whether the module pool of ``fut``, a queued call, runs as many calls as it may
    in threads other than this one, counting the calls its woken workers are about to
    take: running ``fut`` here too would share the cores with them, and the call, whose
    turn in a worker comes anyway, would make all of them finish later."""
    try:
        host = handle[0][4]
    except IndexError:  # taken just now
        return False
    pool = _module_pools.get(id(host))
    if pool is None or thread_state.worker is pool:  # a worker's own: no thread more
        return False
    limit = pool._limit
    if limit <= 0:  # closed (the interpreter exits): it takes no calls
        return False
    busy = len(pool._busy)
    if busy >= limit:
        return True
    # Workers woken (by fork) and not in a call yet each take a call still queued; one
    # that finds none (this one, taken here) parks again and computes nothing.
    woken = pool._running - len(pool._parked) - busy
    if woken <= 0:
        return False
    # Calls still queued, from the newest back (taken and cancelled ones stay in the
    # deque until a worker pops them, oldest first): a few reads by index, each atomic
    # (an iterator would fail if a worker pops meanwhile); a guess is enough.
    jobs = pool._jobs
    need = min(woken, limit - busy)
    others = 0
    try:
        for i in range(1, min(len(jobs), 2 * limit + 2) + 1):
            queued = jobs[-i]
            if queued is not fut and queued._state == QUEUED:
                others += 1
                if others == need:
                    return True
    except IndexError:  # popped meanwhile
        pass
    return False  # fewer calls queued than woken workers to fill the pool with


def interrupted_here(fut: Future[Any]) -> bool:
    """Whether ``fut``, which this thread ran, failed with a KeyboardInterrupt in the main
    thread: Ctrl-C, most likely, which is the thread's own and must stop it now."""
    return (
        fut._state == FAILED
        and type(fut._value) is KeyboardInterrupt
        and threading.current_thread() is threading.main_thread()
    )


def run_queued(futs: list[Future[Any]]) -> Future[Any] | None:
    """Rule 1 for a fan-in: run here, in order, each of ``futs`` that no worker has
    taken yet, rather than block on the first while the others wait for a worker.

    Stops at a failure, which the waiter is about to raise: one it passes, or one it ran
    (which it returns).
    """
    for fut in futs:
        state = fut._state
        if state > DONE:
            return None
        if state == QUEUED and type(fut._handle) is list and run_inline(fut) and fut._state > DONE:
            return fut
    return None


def _run_what_it_follows(handle: After) -> None:
    """Rule 1 for a future that starts once others are done: run those still queued here.

    A Ctrl-C in a ``then()`` parent raises here, as it would have in this thread blocked
    while a worker ran it, not only to the callback (which may ignore it); ``collect_all``
    hands it back as the member's outcome instead.
    """
    ran = run_queued(list(handle.after))
    if ran is not None and not isinstance(handle, Members) and interrupted_here(ran):
        ran.result()


def block(fut: Future[Any], timeout: float | None) -> None:
    """``block_until_done`` for a caller that knows no loop runs in this thread."""
    if timeout is None and fut._state == QUEUED:
        handle: Any = fut._handle
        # A plain list holds a sync call (a Slot holds what a thread must not run).
        if type(handle) is list:
            if run_inline(fut) and fut._state >= DONE:
                return
        elif isinstance(handle, Members):
            # Made of other futures: queued ones run here (rule 1) rather than each
            # blocked level of a nesting starting a new thread; then wait for the rest.
            try:
                members = cast("list[Future[Any]]", handle[0])
            except IndexError:  # it finished (or was cancelled) just now
                members = []
            run_queued(members)  # a Ctrl-C in one is its outcome: collect_all hands it back
            for member in members:
                if fut._state >= DONE:  # cancelled meanwhile: no need to wait for the rest
                    break
                if member._state < DONE:
                    _wait_for_member(member, fut)
        elif isinstance(handle, After):  # a then() callback: its queued parent runs here
            _run_what_it_follows(handle)
    refuse_hopeless_wait(fut)
    waiter = allocate_lock()
    waiter.acquire()
    if not fut._add_waiter(waiter):
        return
    worker: WorkerPool | None = thread_state.worker
    in_a_call = worker is not None and worker.block_released()  # rule 2
    try:
        if timeout is None and fut._state != QUEUED:  # _acquire, inlined: the sync hot path
            woken = waiter.acquire(True, LOOK_AGAIN_SECONDS) or keep_acquiring(waiter, fut, None)
        else:
            woken = _acquire(waiter, fut, timeout)
    except BaseException:  # interrupted (Ctrl-C): this thread will not raise a failure
        if not fut._remove_waiter(waiter):  # a drainer took it: it marks a failure taken
            _await_release(waiter)
            fut._restore_unretrieved()
        raise
    finally:
        if worker is not None:
            worker.unblocked(in_a_call)
    if not woken:
        fut._remove_waiter(waiter)
        if fut._state >= DONE:  # it finished as the wait timed out: not a timeout
            return
        raise TimeoutError(f"{fut!r} did not finish within {timeout} seconds; it keeps running")


def _acquire(lock: Any, fut: Future[Any], timeout: float | None) -> bool:
    """``lock.acquire`` for a thread blocked on ``fut``; past a first second, it looks
    every second whether the call can still finish (see keep_acquiring)."""
    if timeout is None:
        if fut._state == QUEUED and type(fut._handle) is list:
            return _acquire_left_to_pool(lock, fut)
        return lock.acquire(True, LOOK_AGAIN_SECONDS) or keep_acquiring(lock, fut, None)
    if timeout <= LOOK_AGAIN_SECONDS:
        return lock.acquire(True, max(timeout, 0.0))  # type: ignore[no-any-return]
    deadline = time.monotonic() + timeout
    return lock.acquire(True, LOOK_AGAIN_SECONDS) or keep_acquiring(lock, fut, deadline)


def _acquire_left_to_pool(lock: Any, fut: Future[Any]) -> bool:
    """``_acquire`` without a timeout, for a waiter whose sync call is still queued (a
    module it left to a full pool): if no thread took it within ``PATIENCE_SECONDS``,
    none can, and the waiter runs it after all (which releases ``lock``)."""
    if lock.acquire(True, PATIENCE_SECONDS):
        return True
    if fut._state == QUEUED:
        run_inline(fut, leave_to_a_full_pool=False)
    return lock.acquire(True, LOOK_AGAIN_SECONDS) or keep_acquiring(lock, fut, None)


class _WakeOnce:
    """A blocked thread's wake-up that both its future and its scope may pull: once."""

    __slots__ = ("lock", "pulls", "retrieving", "took_failure")

    #: It takes the failure it is woken with: woken before done callbacks (see _drain).
    takes_failure = True

    def __init__(self, retrieving: bool = True) -> None:
        self.lock = allocate_lock()
        self.lock.acquire()
        self.pulls = [None]  # list.pop is atomic: one puller finds it
        #: The woken thread raises the future's failure (a wait does; a wait for the
        #: members of collect_all does not).
        self.retrieving = retrieving
        self.took_failure = False

    def __call__(self, fut: Future[Any] | None = None) -> None:
        try:
            self.pulls.pop()
        except IndexError:
            return
        if fut is not None and self.retrieving and fut._state == FAILED:
            fut._mark_retrieved()
            self.took_failure = True
        self.lock.release()

    def give_back(self, fut: Future[Any]) -> None:
        """The thread stopped waiting before it was woken (Ctrl-C): unregister, and if
        the failure was handed to it meanwhile, report it as unretrieved again."""
        if fut._remove_waiter(self):
            return
        try:
            self.pulls.pop()  # ahead of whoever took it from the list: nothing handed
            return
        except IndexError:
            pass
        _await_release(self.lock)
        if self.took_failure:
            fut._restore_unretrieved()


def _await_release(lock: Any) -> None:
    """Wait for a waker that took a blocked thread's lock to finish: it marks a failure
    taken, then releases. Bounded: an interrupt that came as ``acquire()`` returned
    leaves the release taken already, and nothing more comes."""
    lock.acquire(True, 0.05)


def block_interruptibly(fut: Future[Any], timeout: float | None, observer: Observer) -> None:
    """``block``, inside a scope (or a trace): a cancelled scope ends the wait with
    ``forkwait.CancelledError``, rather than leave the thread blocked for good."""
    if observer.interrupted():
        raise _scope_cancelled(fut)
    handle: Any = fut._handle
    if timeout is None and fut._state == QUEUED:
        if type(handle) is list:
            if run_inline(fut) and fut._state >= DONE:
                return
        elif isinstance(handle, After):  # collect_all's members, a then() parent
            _run_what_it_follows(handle)
            if fut._state >= DONE:
                return
    refuse_hopeless_wait(fut)
    wake = _WakeOnce()
    if not fut._add_waiter(wake):
        return
    if not observer.interrupt_with(wake):
        wake()
    worker: WorkerPool | None = thread_state.worker
    in_a_call = worker is not None and worker.block_released()  # rule 2
    try:
        woken = _acquire(wake.lock, fut, timeout)
    except BaseException:  # interrupted (Ctrl-C): this thread will not raise a failure
        wake.give_back(fut)
        raise
    finally:
        if worker is not None:
            worker.unblocked(in_a_call)
        observer.stop_interrupting(wake)
    if fut._state >= DONE:
        return
    fut._remove_waiter(wake)
    if woken:
        raise _scope_cancelled(fut)
    raise TimeoutError(f"{fut!r} did not finish within {timeout} seconds; it keeps running")


def call_in_a_worker(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` soon in a worker thread of the default pool: for callbacks that
    must not run, and maybe block, in the thread that finished a call for many others."""
    from ._future import new_future

    job = new_future(QUEUED, fn)
    job._handle = [(fn, args, {}, contextvars.Context(), None)]
    pool.submit(job)


def refuse_hopeless_wait(fut: Future[Any]) -> None:
    """Raise instead of blocking for good: on the call's own future from inside the
    call, or on a task whose event loop has been closed (it can never finish)."""
    _, _, own, thread = get_call_frame()
    if own is fut and thread == get_ident():  # not a then() callback in another thread
        raise RuntimeError(
            f"fork({describe(fut._func)}) waits on its own future from inside the call: "
            f"it would wait forever; return the value instead of waiting for it"
        )
    abandon_if_it_cannot_finish(fut)


def _scope_cancelled(fut: Future[Any]) -> BaseException:
    from ._future import CancelledError

    return CancelledError(f"the wait for {fut!r} was cancelled: its scope was cancelled")


def _wait_for_member(member: Future[Any], collected: Future[Any]) -> None:
    """Wait for a member of ``collect_all`` without retrieving its outcome: run it here if
    it is still queued (rule 1), else block on a wake-up that leaves a failure alone, and
    that the collected future also pulls if it is cancelled first."""
    handle: Any = member._handle
    if (
        member._state == QUEUED
        and type(handle) is list
        and run_inline(member)
        and member._state >= DONE
    ):
        return
    abandon_if_it_cannot_finish(member)
    wake = _WakeOnce(retrieving=False)
    if not member._add_waiter(wake):
        return
    worker: WorkerPool | None = thread_state.worker
    in_a_call = worker is not None and worker.block_released()  # rule 2
    try:
        if collected._add_waiter(wake):
            if member._state == QUEUED and type(member._handle) is list:
                _acquire_left_to_pool(wake.lock, member)
            elif not wake.lock.acquire(True, LOOK_AGAIN_SECONDS):
                keep_acquiring(wake.lock, member, None)  # can it still finish (its loop)?
    finally:
        member._remove_waiter(wake)
        collected._remove_waiter(wake)
        if worker is not None:
            worker.unblocked(in_a_call)


def refuse_waiting_on_the_hidden_loop(fut: Future[Any]) -> None:
    """Sequential mode: a sync call that runs inline in a loop's thread cannot wait for a
    coroutine that this very loop must run; say so, instead of hanging."""
    host = thread_state.hidden_host
    handle: Any = fut._handle
    loop = getattr(handle, "loop", None)  # a Slot: the coroutine is queued for that loop
    if isinstance(handle, HostedTask):
        loop = getattr(handle, "token", None)
    elif hasattr(handle, "get_loop"):
        loop = handle.get_loop()
    if loop is not None and loop is host and fut._state < DONE:
        raise RuntimeError(
            f"in forkwait.sequential(), a sync call forked from async code runs in the "
            f"event loop's thread, so it cannot wait for {fut!r}, which that loop has yet to "
            f"run; await it from async code instead, or leave sequential mode"
        )
