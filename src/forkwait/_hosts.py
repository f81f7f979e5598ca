"""Which event loop runs a call, and starting a coroutine there from any thread.

A host is an asyncio event loop, a trio run (its ``TrioToken``), or ``None`` for the
default runtime (resolved only when a coroutine actually needs it, so sync-only
programs never start it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from ._callables import describe
from ._compiled import running_loop, speedups
from ._runtime import runtime
from ._state import DONE, QUEUED, RUNNING

if TYPE_CHECKING:
    from trio.lowlevel import TrioToken

    from ._future import Future

Host: TypeAlias = "asyncio.AbstractEventLoop | TrioToken | None"

_modules = sys.modules


class ThreadState(threading.local):
    """What forkwait knows about the current thread; class attributes are the defaults."""

    #: The pool, if this thread is one of its workers.
    worker: Any = None
    #: Inside fork's observed path, whose inner fork must not be observed again.
    observing = False
    #: In sequential mode, a sync call running inline hides the loop of its thread (an
    #: asyncio loop or a trio run's token): this is that loop.
    hidden_host: Any = None
    #: A thread that finishes calls for many others (a process pool's reader, a Dask
    #: client's event loop): callbacks, which may block, run in a worker thread instead.
    serves_others = False
    #: How many then() callbacks run here one inside the other: each settles the next
    #: link of a chain, on top of the stack of the one before (see _fork.chain).
    then_depth = 0


thread_state = ThreadState()

#: Marks "not inside a forked call": the host must be looked up (see thread_host).
UNRESOLVED: Any = object()

#: Inside a forked sync call: the loop it works for (spec rule 2), how many queued
#: calls its thread is running inline, one inside the other, the call's own future, and
#: the thread running it. Each call runs in a context of its own, so a context variable
#: is per call, and reading one costs a third of reading a thread-local. A copy of the
#: context that another thread runs in (anyio's to_thread, a then() callback) carries
#: the frame along; there it is not that thread's, which the thread id tells.
call_frame: contextvars.ContextVar[tuple[Host, int, Any, int]] = contextvars.ContextVar(
    "forkwait_call_frame", default=(UNRESOLVED, 0, None, 0)
)
get_call_frame = call_frame.get
get_ident = threading.get_ident


def trio_token() -> TrioToken | None:
    """The trio run in this thread, if trio runs here (and so is imported)."""
    if "trio" not in _modules:
        return None
    trio_host = _trio_host if _trio_host is not None else _load_trio_host()
    token: TrioToken | None = trio_host.current_token()
    return token


_trio_host: Any = None  # forkwait._trio, once trio is in use
trio_waiter: Any = None  # its TrioWaiter: a waiter that Future._wake_one wakes in place


def _load_trio_host() -> Any:
    global _trio_host, trio_waiter
    from . import _trio

    trio_waiter = _trio.TrioWaiter
    _trio_host = _trio
    return _trio


def thread_host() -> Host:
    """The loop that a thread without a running asyncio loop works for: the trio run in
    this thread, else the one a forked call, an anyio worker or a trio worker works for
    (spec rule 2), else ``None``."""
    if "trio" in _modules:  # first: a forked call may have started a trio run
        token = trio_token()
        if token is not None:
            return token
    host, _, _, thread = get_call_frame()
    if host is not UNRESOLVED and thread == get_ident():
        return host
    # An anyio worker thread (to_thread.run_sync) works for the loop that started it.
    # anyio keeps that in a private thread-local; only look if anyio is loaded at all.
    anyio_loop = _modules.get("anyio._core._eventloop")
    if anyio_loop is not None:
        anyio_token = anyio_loop.threadlocals.__dict__.get("current_token")
        native = getattr(anyio_token, "native_token", None)
        if isinstance(native, asyncio.AbstractEventLoop) or _is_trio_token(native):
            return native
    # So does a trio worker thread (trio.to_thread.run_sync), whose run trio keeps in a
    # private thread-local (for trio.from_thread) while it runs the call.
    trio_threads = _modules.get("trio._threads")
    if trio_threads is not None:
        native = getattr(getattr(trio_threads, "PARENT_TASK_DATA", None), "token", None)
        if _is_trio_token(native):
            return native
    return None


def _is_trio_token(obj: object) -> bool:
    trio = _modules.get("trio")
    return trio is not None and isinstance(obj, trio.lowlevel.TrioToken)


def _forget_hosts_in_child() -> None:
    """In a child made by ``os.fork``: the loop (or trio run) that the forking thread ran
    or worked for runs in the parent only, so forks made here go to the child's own
    runtime, as from plain sync code. (asyncio forgets its running loop in a child too;
    a trio run that went on would share the parent's I/O state.)"""
    call_frame.set((UNRESOLVED, 0, None, 0))  # in the context the child goes on in
    anyio_loop = _modules.get("anyio._core._eventloop")
    if anyio_loop is not None:  # an anyio worker thread's loop, see thread_host
        anyio_loop.threadlocals.__dict__.pop("current_token", None)
    trio_threads = _modules.get("trio._threads")
    parent: Any = getattr(trio_threads, "PARENT_TASK_DATA", None)
    if getattr(parent, "token", None) is not None:  # a trio worker thread's run, the same
        parent.token = None  # not deleted: trio deletes it once the thread's call returns
    sniffio = _modules.get("sniffio")
    if sniffio is not None:  # no async library runs here now (anyio asks sniffio)
        sniffio.current_async_library_cvar.set(None)
        sniffio.thread_local.name = None


os.register_at_fork(after_in_child=_forget_hosts_in_child)


def current_host() -> Host:
    """The loop that work forked from this thread goes to (spec rules 1-3)."""
    loop = running_loop()
    if loop is not None:
        return loop
    return thread_host()


class _Suspend(tuple[None]):
    """``await SUSPEND`` yields once, like ``asyncio.sleep(0)``, with no Python frame."""

    __slots__ = ()
    if TYPE_CHECKING:

        def __await__(self) -> Generator[None, None, None]: ...

    else:
        __await__ = tuple.__iter__  # an iterator over (None,): one bare yield, then done


SUSPEND = _Suspend((None,))


def driver(fut: Future[Any], awaitable: Awaitable[Any]) -> Coroutine[Any, Any, None]:
    """The coroutine for ``fut``'s task: ``drive``, already at its first suspension.

    A task cancelled before its first step would otherwise get the CancelledError
    before ``drive``'s ``try``, and a loop closed before then would drop it the same
    way: the future would never settle. Started here, it is inside the ``try`` at once.
    """
    coro = drive(fut, awaitable)
    coro.send(None)
    return coro


async def drive(fut: Future[Any], awaitable: Awaitable[Any]) -> None:
    """Await ``awaitable`` as the body of ``fut``'s task and settle ``fut`` with the outcome."""
    try:
        await SUSPEND  # see driver(): the task's first step resumes here
        value = await awaitable
    except GeneratorExit:
        settle_closed(fut, awaitable)
        raise
    except BaseException as exc:
        settle_failed(fut, awaitable, exc)
        del fut  # the call's frames keep this one: see run_call
    else:
        # fut._set_result(value), inlined: every task ends here.
        fut._handle = None  # the finished task is no longer needed for cancel()
        fut._value = value
        fut._state = DONE
        if fut._waiters is not None:
            fut._drain()


def settle_closed(fut: Future[Any], awaitable: Awaitable[Any]) -> None:
    """The task was destroyed unfinished (its loop closed): it will never end."""
    close_awaitable(awaitable)
    if fut._state < DONE:  # a waiter may have found the loop closed first
        fut._set_cancelled()


def settle_failed(fut: Future[Any], awaitable: Awaitable[Any], exc: BaseException) -> None:
    """The task's call raised ``exc``: it is the waiter's, KeyboardInterrupt and
    SystemExit included, not the loop's that happened to run the call."""
    close_awaitable(awaitable)  # if it never started (cancelled at once), it never will
    fut._handle = None
    fut._set_exception(exc)


async def await_any(awaitable: Awaitable[Any]) -> Any:
    """A coroutine that awaits ``awaitable``: a task needs one (see _speedups.Driver)."""
    return await awaitable


if speedups is not None:
    # The same, in C: no frame of its own, and nothing to start before the task does.
    driver = speedups.Driver


_settling_orphans = threading.Lock()

#: In a child of ``os.fork()``: the futures of the sync calls that were running in the
#: parent's other threads, or queued for its workers. Neither the threads nor their
#: queues exist here: a running call fails when somebody here waits on it, and a queued
#: one is queued again here (see _threads._note_running_calls).
stranded_calls: weakref.WeakSet[Future[Any]] = weakref.WeakSet()

_ONLY_THE_PARENT = (
    "only the parent process gets its outcome; wait for it before forking the process "
    "(or use multiprocessing's 'spawn' or 'forkserver' start method), or fork the call "
    "again in this process"
)


def abandon_if_it_cannot_finish(fut: Future[Any]) -> None:
    """A call that can never finish (its event loop was closed first, or it runs in the
    parent of this child of ``os.fork()``): fail its future with an error that says so,
    rather than leave its waiters blocked for good. A call that was only queued in the
    parent is queued again here instead, as nothing else here would run it.

    A future that starts once others are done (a ``then()`` callback, ``collect_all``)
    finishes once they do: those are looked at.
    """
    handle: Any = fut._handle
    if isinstance(handle, After):
        for each in _awaited_by(fut)[1:]:
            _abandon_if_it_cannot_finish(each)
        return
    _abandon_if_it_cannot_finish(fut)


def _abandon_if_it_cannot_finish(fut: Future[Any]) -> None:
    handle: Any = fut._handle
    if isinstance(handle, (Slot, OnItsWay)):
        _abandon_if_never_started(fut, handle)
        return
    if stranded_calls and fut in stranded_calls:
        stranded_calls.discard(fut)
        if fut._state == QUEUED:  # no worker here knows of it: queue it for one
            from ._threads import pool

            pool.submit(fut)
            return
        _abandon(
            fut,
            f"fork({describe(fut._func)}) can never finish in this process: it was running "
            f"in another thread when os.fork() made this process, and {_ONLY_THE_PARENT}",
        )
        return
    if isinstance(handle, Remote):
        if handle.pid != os.getpid():
            _abandon(
                fut,
                f"fork({describe(fut._func)}) can never finish in this process: it was "
                f"offloaded (to a worker process or a Dask cluster) when os.fork() made this "
                f"process, and {_ONLY_THE_PARENT}",
            )
        return
    if not isinstance(handle, asyncio.Task):
        return
    loop = handle.get_loop()
    if loop.is_closed():
        why = (
            f"fork({describe(fut._func)}) can never finish: the event loop running its "
            f"task was closed before the task ended (asyncio.run() and anyio.run() end "
            f"the tasks they find when the main coroutine returns, but not one forked "
            f"into the loop after that, and a loop closed by hand ends none)"
        )
    elif runtime.stranded(loop):
        why = (
            f"fork({describe(fut._func)}) can never finish in this process: its task was "
            f"running on the default runtime's event loop when os.fork() made this "
            f"process, and {_ONLY_THE_PARENT}"
        )
    else:
        return
    if _abandon(fut, why):
        # The waiters hear of it from this error: asyncio need not also log the task
        # as "destroyed but pending" when it goes.
        with contextlib.suppress(AttributeError):
            cast(Any, handle)._log_destroy_pending = False
        # Only now: dropping the task may destroy it at once, and drive() then sees
        # the future settled already.
        fut._handle = None


#: How often a blocked wait looks whether its call can still finish: a task whose app
#: closed its loop meanwhile, the task unfinished, never does.
LOOK_AGAIN_SECONDS = 1.0


def loop_that_may_close(fut: Future[Any]) -> asyncio.AbstractEventLoop | None:
    """The app's event loop that runs (or is about to run) ``fut``'s task, if any: a
    loop forkwait does not own, which the app may close before the task ends; or, for a
    future that starts once others are done, the first such loop of theirs."""
    handle: Any = fut._handle
    if isinstance(handle, After):
        for each in _awaited_by(fut)[1:]:
            if not isinstance(each._handle, After) and (loop := loop_that_may_close(each)):
                return loop
        return None
    if isinstance(handle, asyncio.Task):
        loop = handle.get_loop()
    elif isinstance(handle, (Slot, OnItsWay)) and isinstance(
        handle.loop, asyncio.AbstractEventLoop
    ):
        loop = handle.loop
    else:
        return None
    return None if loop is runtime.current_loop() else loop


def keep_acquiring(lock: Any, fut: Future[Any], deadline: float | None) -> bool:
    """``lock.acquire`` for a thread blocked on ``fut`` that has waited a first
    ``LOOK_AGAIN_SECONDS`` already: every so often it looks whether the call can still
    finish (its loop may have been closed meanwhile, which fails ``fut`` and so releases
    ``lock``), rather than block for good. ``False`` at ``deadline`` (``time.monotonic``)."""
    while True:
        abandon_if_it_cannot_finish(fut)
        step = LOOK_AGAIN_SECONDS
        if deadline is not None:
            step = max(min(step, deadline - time.monotonic()), 0.0)
        if lock.acquire(True, step):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _abandon(fut: Future[Any], why: str) -> bool:
    """Fail ``fut`` with ``RuntimeError(why)``; ``False`` if it finished first."""
    with _settling_orphans:  # two waiters may find it at once; one settles it
        if fut._state >= DONE:
            return False
        fut._set_exception(RuntimeError(why))
        return True


def _abandon_if_never_started(fut: Future[Any], handle: Slot | OnItsWay) -> None:
    """A coroutine handed to an event loop that closed before it made the task, or
    that runs only in the parent of this child of ``os.fork()``."""
    loop = handle.loop
    if not isinstance(loop, asyncio.AbstractEventLoop):
        return
    if loop.is_closed():
        why = f"its event loop {loop!r} was closed before it started the task"
    elif runtime.stranded(loop):
        why = (
            f"it was on its way to the default runtime's event loop when os.fork() made "
            f"this process, and {_ONLY_THE_PARENT}"
        )
    else:
        return
    if isinstance(handle, Slot):
        if fut._state == QUEUED:
            queued = take(fut)
            if queued is not None:  # else it started, or was cancelled, meanwhile
                fail_to_start(fut, queued, False, why)
        return
    with _settling_orphans:  # nobody else settles a call's awaitable on its way
        if fut._state < DONE and fut._handle is handle:
            fail_to_start(fut, handle.awaitable, False, why)


def spawn(
    host: Host,
    fut: Future[Any],
    awaitable: Awaitable[Any],
    context: contextvars.Context,
    *,
    queued: bool,
) -> None:
    """Run ``awaitable`` as ``fut``'s task on ``host``'s loop, from any thread.

    ``queued``: ``fut`` is QUEUED with ``awaitable`` in its slot, and whoever takes it
    from there (this, or ``cancel()``) decides; otherwise the caller already owns ``fut``.
    """
    if host is not None and not isinstance(host, asyncio.AbstractEventLoop):
        trio_host = _trio_host if _trio_host is not None else _load_trio_host()
        trio_host.spawn(host, fut, awaitable, context, queued)
        return
    loop = host if host is not None else runtime.loop()
    if loop is running_loop():
        _start(fut, awaitable, context, queued)
        return
    if queued:
        fut._handle.loop = loop  # where cancel() finds the task if it loses the race
    else:  # the same, for the call that made the awaitable and owns fut
        fut._handle = OnItsWay(awaitable, loop)
    try:
        loop.call_soon_threadsafe(_start, fut, awaitable, context, queued)
    except RuntimeError:  # that loop is closed
        fail_to_start(fut, awaitable, queued, f"its event loop {loop!r} is closed")


def fail_to_start(fut: Future[Any], awaitable: Awaitable[Any], queued: bool, why: str) -> None:
    """Settle ``fut`` with a ``RuntimeError``: its loop (or trio run) is gone."""
    if queued and take(fut) is None:
        return  # cancel() won, and closed the coroutine
    close_awaitable(awaitable)
    fut._state = RUNNING
    fut._set_exception(RuntimeError(f"cannot run the forked call: {why}"))


def _start(
    fut: Future[Any], awaitable: Awaitable[Any], context: contextvars.Context, queued: bool
) -> None:
    if queued:
        if take(fut) is None:
            return  # cancel() won, and closed the coroutine
        fut._state = RUNNING
    elif cancelled_on_its_way(fut, awaitable):
        return
    loop = running_loop()
    assert loop is not None
    sniffio = _modules.get("sniffio")
    if sniffio is not None and context.get(sniffio.current_async_library_cvar) is not None:
        # A context copied from a trio task (a then() callback's, say): here asyncio
        # runs the coroutine, which sniffio (and so anyio) must see.
        context.run(sniffio.current_async_library_cvar.set, None)
    try:
        fut._handle = loop.create_task(driver(fut, awaitable), context=context)
    except Exception as exc:  # the app's task factory refused it: the waiter hears why
        fut._handle = None
        close_awaitable(awaitable)
        fut._set_exception(exc)


def close_awaitable(awaitable: object) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


class HostedTask:
    """A forked coroutine's task on a host other than an asyncio loop (a trio run)."""

    __slots__ = ()

    def cancel_soon(self) -> bool:
        """Ask for cancellation from any thread; ``False`` if the host has ended."""
        raise NotImplementedError

    def cancel_here(self) -> None:
        """Cancel it, in the host's own thread."""
        raise NotImplementedError


class Remote:
    """An offloaded call's handle: another process, or a Dask worker, runs it."""

    __slots__ = ("pid", "ran")

    def __init__(self) -> None:
        #: Where and when it ran (a ``_payload.Ran``), once it has.
        self.ran: Any = None
        #: The process that sent it, and so gets its outcome: not a child of os.fork().
        self.pid = os.getpid()

    def cancel(self) -> bool:
        """Cancel it where it runs: ``True`` if it will not produce a value."""
        raise NotImplementedError


class OnItsWay:
    """A RUNNING future's awaitable (which its sync call returned) on its way to the
    loop that makes its task: where ``cancel()`` finds the task (see spawn).

    Not a list: nobody can ``take()`` it, as its call already ran.
    """

    __slots__ = ("awaitable", "cancelled", "loop")

    def __init__(
        self, awaitable: Awaitable[Any], loop: asyncio.AbstractEventLoop | TrioToken
    ) -> None:
        self.awaitable = awaitable
        self.loop = loop
        #: cancel() came before the task was made (its hand-off overtook the awaitable's):
        #: the task is never started.
        self.cancelled = False


def cancelled_on_its_way(fut: Future[Any], awaitable: Awaitable[Any]) -> bool:
    """In the loop's thread, about to make ``fut``'s task: if ``cancel()`` came first,
    settle ``fut`` as cancelled and say so."""
    handle = getattr(fut, "_handle", None)  # unset: a fork in the loop's own thread
    if type(handle) is not OnItsWay or not handle.cancelled:
        return False
    close_awaitable(awaitable)
    fut._handle = None
    fut._set_cancelled()
    return True


class Slot(list[Any]):
    """A QUEUED future's coroutine or callback, which a waiter must not run inline.

    A plain ``list`` holds a sync call, which a waiter may take and run itself.
    """

    __slots__ = ("loop",)

    def __init__(self, item: object) -> None:
        super().__init__((item,))
        #: For a coroutine bound for another thread's loop: that loop (or trio run), once known.
        self.loop: asyncio.AbstractEventLoop | TrioToken | None = None


class After(Slot):
    """The slot of a future that starts once others are done (a ``then()`` callback):
    a wait for it looks whether they can still finish (see abandon_if_it_cannot_finish)."""

    __slots__ = ("after",)

    def __init__(self, item: object, after: tuple[Future[Any], ...]) -> None:
        super().__init__(item)
        self.after = after


class Members(After):
    """The slot of a future made of others (``collect_all``): they are its one item, so a
    thread that waits for it can first wait for each, running queued ones itself."""

    __slots__ = ()

    def __init__(self, futs: list[Future[Any]]) -> None:
        super().__init__(futs, tuple(futs))


def _awaited_by(fut: Future[Any]) -> list[Future[Any]]:
    """``fut``, and the futures it waits for to start, and theirs (a chain of ``then()``
    callbacks, the members of ``collect_all``), those not done; iterative, as a chain
    may be long."""
    found: list[Future[Any]] = []
    seen: set[int] = set()
    todo = [fut]
    while todo:
        each = todo.pop()
        if id(each) in seen or each._state >= DONE:
            continue
        seen.add(id(each))
        found.append(each)
        handle = each._handle
        if isinstance(handle, After):
            todo.extend(handle.after)
    return found


def take(fut: Future[Any]) -> Any:  # Any: a call record, a coroutine or a callback
    """Take a QUEUED future's call, coroutine or callback; ``None`` if someone else did.

    The handle is a one-item list, and ``list.pop`` is atomic: of a worker, a waiter
    running the call inline, a loop starting the task, and ``cancel()``, exactly one
    wins, without a lock. The winner sets the state it means (RUNNING or CANCELLED).
    """
    handle: Any = fut._handle
    if not handle or not isinstance(handle, list):  # testing first: raising costs more
        return None
    try:
        return cast(object, handle.pop())
    except IndexError:
        return None
