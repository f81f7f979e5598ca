"""trio as a host: forked coroutines as system tasks of the run, and futures awaited in trio.

trio has no detached tasks, so a fork made without a scope becomes a *system task* of
the current ``trio.run``: it runs beside the app's tasks, a failure goes to its future
(never to the run, which would end in ``TrioInternalError``), and forks still running
when the run's main task returns are cancelled, with a warning, as the default
runtime's are at interpreter exit.

Imported only once the app has imported trio (see ``_hosts.trio_token``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import types
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

import sniffio
import trio

from ._callables import describe
from ._future import awaiting_itself_error, handing_over
from ._hooks import get_observer
from ._hosts import (
    LOOK_AGAIN_SECONDS,
    HostedTask,
    OnItsWay,
    Slot,
    abandon_if_it_cannot_finish,
    cancelled_on_its_way,
    close_awaitable,
    fail_to_start,
    loop_that_may_close,
    take,
)
from ._state import DONE, FAILED, RUNNING

if TYPE_CHECKING:
    from ._future import Future

logger = logging.getLogger("forkwait")

_sniffio_thread = sniffio.thread_local
_current_token = trio.lowlevel.current_trio_token
_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_get_ident = threading.get_ident
_RunFinishedError = trio.RunFinishedError
_Cancelled = trio.Cancelled
_checkpoint = trio.lowlevel.checkpoint
_CancelScope = trio.CancelScope
_spawn_system_task = trio.lowlevel.spawn_system_task
_FunctionType = types.FunctionType
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled


def current_token() -> trio.lowlevel.TrioToken | None:
    """The token of the trio run in this thread, or ``None`` if trio does not run here."""
    # trio marks its thread for sniffio while it runs: a thread-local read, where
    # current_trio_token() raises (slowly) everywhere else.
    if getattr(_sniffio_thread, "name", None) != "trio":
        return None
    try:
        return _current_token()
    except RuntimeError:
        return None


class TrioTask(HostedTask):
    """A forked coroutine's system task, as ``Future.cancel()`` sees it."""

    __slots__ = ("cancelled", "scope", "token", "trio_task")

    def __init__(self, scope: trio.CancelScope, token: trio.lowlevel.TrioToken) -> None:
        self.scope = scope
        self.token = token
        #: The system task, once it has started (a call that awaits its own future
        #: would wait forever: it is refused).
        self.trio_task: trio.lowlevel.Task | None = None
        #: Whether cancel() reached it: read before the first step, where the scope's
        #: own cancel_called would look at the clock.
        self.cancelled = False

    def cancel_soon(self) -> bool:
        if current_token() is self.token:
            self.cancel_here()
            return True
        return call_soon(self.token, self.cancel_here)

    def cancel_here(self) -> None:
        self.cancelled = True
        self.scope.cancel()


def call_soon(token: trio.lowlevel.TrioToken, fn: Any, *args: Any) -> bool:
    """Run ``fn(*args)`` in the run's thread; ``False`` if the run has ended."""
    try:
        token.run_sync_soon(fn, *args)
    except _RunFinishedError:
        return False
    return True


def spawn(
    token: trio.lowlevel.TrioToken,
    fut: Future[Any],
    awaitable: Awaitable[Any],
    context: contextvars.Context,
    queued: bool,
) -> None:
    """Run ``awaitable`` as ``fut``'s system task in the run of ``token``, from any thread."""
    if current_token() is token:
        start(token, fut, awaitable, context, queued)
        return
    if queued:
        handle: Slot = fut._handle
        handle.loop = token  # where cancel() finds the task if it loses the race
    else:  # the same, for the call that made the awaitable and owns fut
        fut._handle = OnItsWay(awaitable, token)
    if not call_soon(token, start, token, fut, awaitable, context, queued):
        fail_to_start(fut, awaitable, queued, f"its trio run ({token!r}) has ended")


def start(
    token: trio.lowlevel.TrioToken,
    fut: Future[Any],
    awaitable: Awaitable[Any],
    context: contextvars.Context,
    queued: bool,
) -> None:
    """Start ``fut``'s system task, in the run's thread; ``queued`` as for ``spawn``."""
    if queued:
        if take(fut) is None:
            return  # cancel() won, and closed the coroutine
        fut._state = RUNNING
    elif cancelled_on_its_way(fut, awaitable):
        return
    scope = _CancelScope()
    fut._handle = task = TrioTask(scope, token)
    func = fut._func
    name = func.__qualname__ if type(func) is _FunctionType else describe(func)
    try:
        _spawn_system_task(_drive, fut, awaitable, task, name=name, context=context)
    except RuntimeError as exc:  # the run is ending: its system nursery takes no more
        close_awaitable(awaitable)
        fut._handle = None
        fut._set_exception(exc)


async def _drive(fut: Future[Any], awaitable: Awaitable[Any], task: TrioTask) -> None:
    """The body of a fork's system task: await ``awaitable``, settle ``fut``, never raise
    (a system task that raises ends the whole run), except to pass on the run's own
    cancellation."""
    if task.cancelled:  # fut.cancel() before the task's first step: never start
        close_awaitable(awaitable)
        fut._handle = None
        fut._set_cancelled()
        return
    task.trio_task = _current_task()
    scope = task.scope
    value: Any = None
    try:
        with scope:
            value = await awaitable
    except (_Cancelled, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and exc.split(_Cancelled)[1] is not None:
            close_awaitable(awaitable)  # a group with real failures: the call failed
            fut._handle = None
            fut._set_exception(exc)
            return
        # Not our scope's (that one is caught by the `with`): the run's main task has
        # returned and trio cancels its system tasks (a nursery in the call makes that
        # a group of cancellations).
        close_awaitable(awaitable)
        fut._handle = None
        logger.warning(
            "forkwait: fork(%s) was still running when its trio run ended, and was cancelled",
            describe(fut._func),
        )
        fut._set_cancelled()
        raise
    except BaseException as exc:
        close_awaitable(awaitable)
        fut._handle = None
        fut._set_exception(exc)
        return
    fut._handle = None
    if scope.cancelled_caught:  # fut.cancel()
        close_awaitable(awaitable)
        fut._set_cancelled()
    else:
        fut._set_result(value)


class TrioWaiter:
    """A trio task awaiting a future: a done callback that reschedules it, exactly once."""

    __slots__ = ("aborted", "fut", "marked", "task", "thread", "token", "waiting", "woken")

    #: It raises the failure it is woken with: woken before done callbacks (see _drain).
    takes_failure = True

    def __init__(self, fut: Future[Any], token: trio.lowlevel.TrioToken) -> None:
        self.fut = fut
        self.task = _current_task()
        self.token = token
        self.thread = _get_ident()
        self.aborted = False  # the task stopped waiting (cancelled)
        self.waiting = False  # the task is suspended, so it may be rescheduled
        self.woken = False
        self.marked = False  # it took the failure as retrieved

    def __call__(self, fut: Future[Any]) -> None:
        if _get_ident() == self.thread:
            # In the run's thread, as are abort() and abandon(): the flags need no lock.
            if self.aborted or self.woken:
                return
            self.woken = True
            if fut._state == FAILED:
                fut._mark_retrieved()  # now, as asyncio's waiters do: this task raises it
                self.marked = True
            if self.waiting:
                _reschedule(self.task)
            # Else the task has not suspended yet: it sees `woken` and does not.
            return
        # A failure is this task's now, not once its run wakes it: a scope that
        # judges it meanwhile must not also raise it (see owes_failure).
        failed = fut._state == FAILED
        if failed:
            handing_over(fut, 1)
        if not call_soon(self.token, self._wake_across, failed) and failed:
            handing_over(fut, -1)  # the run ended: nobody is left to wake

    def _wake_across(self, failed: bool) -> None:
        if failed:
            handing_over(self.fut, -1)
        self(self.fut)  # now in the run's thread

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        # The awaiting task is cancelled: it stops waiting, the call goes on.
        self.abandon()
        return trio.lowlevel.Abort.SUCCEEDED

    def abandon(self) -> None:
        self.aborted = True
        self.fut._remove_waiter(self)
        if self.marked:
            self.fut._restore_unretrieved()  # taken, but never raised: report it again


def wait_in_trio(fut: Future[Any], token: trio.lowlevel.TrioToken) -> Generator[Any, None, Any]:
    """``await fut`` in a trio task of the run of ``token``: the value, or the call's exception.

    A generator for ``Future.__await__`` to ``yield from``: no coroutine of its own.
    """
    observer = get_observer()
    stopped = observer.waiting(fut) if observer is not None else None
    handle = fut._handle
    # A task of this very run: no os.fork() stranded it, and no app's loop may close
    # under it; it is on the run's queue (or running), so let it run first, below.
    here = type(handle) is TrioTask and handle.token is token
    watched = False
    try:
        if not here:
            abandon_if_it_cannot_finish(fut)  # a task of a loop closed already, say
        if fut._state >= DONE:
            yield from _checkpoint().__await__()
            return fut._outcome()
        if not here and loop_that_may_close(fut) is not None:
            _look_again_later(fut)  # that loop may close while this task waits
            watched = True
        # Registered before the fork's task runs: trio may run this task after whoever
        # judges failures next (a scope, a task group's keeper), and the waiter marks a
        # failure retrieved the moment the call ends.
        waiter = TrioWaiter(fut, token)
        if here and handle.trio_task is waiter.task:
            raise awaiting_itself_error(fut)
        try:
            if not fut._add_waiter(waiter):  # finished meanwhile
                yield from _checkpoint().__await__()
                return fut._outcome()
            if here:
                # It often finishes in that one step, and then the value is there
                # after one batch, not two.
                yield from _checkpoint().__await__()
            if not waiter.woken:
                waiter.waiting = True
                yield from _wait_task_rescheduled(waiter.abort).__await__()
        except BaseException:
            if not waiter.aborted:
                waiter.abandon()  # cancelled at the checkpoint
            raise
        return fut._outcome()
    finally:
        if watched:
            _stop_looking(fut)
        if stopped is not None:
            stopped()


#: Futures of apps' asyncio loops that trio tasks await (each once per awaiting task),
#: and the one thread that looks at them every second (trio has no timers outside its
#: tasks): a loop closed meanwhile fails its futures, and so wakes their awaiters.
_watched: dict[Future[Any], int] = {}
_watched_lock = threading.Lock()
_watcher: threading.Thread | None = None


def _look_again_later(fut: Future[Any]) -> None:
    """Watch ``fut`` for the trio task about to await it; ``_stop_looking`` after."""
    global _watcher
    with _watched_lock:
        _watched[fut] = _watched.get(fut, 0) + 1
        if _watcher is None:
            _watcher = threading.Thread(target=_look, name="forkwait-loop-watch", daemon=True)
            _watcher.start()


def _stop_looking(fut: Future[Any]) -> None:
    with _watched_lock:
        left = _watched.pop(fut, 1) - 1
        if left > 0:
            _watched[fut] = left


def _look() -> None:
    global _watcher
    pause = threading.Event()  # never set: a timer
    while True:
        pause.wait(LOOK_AGAIN_SECONDS)
        with _watched_lock:
            futs = list(_watched)
            if not futs:
                _watcher = None
                return
        while futs:  # popped, so that none is kept through the pause: it may be gone
            fut = futs.pop()
            if fut._state < DONE:
                abandon_if_it_cannot_finish(fut)
            del fut


def _forget_watcher_in_child() -> None:
    """In a child of ``os.fork``: the parent's watcher thread is not here, and its lock
    may have been held as the parent forked."""
    global _watched_lock, _watcher
    _watched_lock = threading.Lock()
    _watched.clear()
    _watcher = None


os.register_at_fork(after_in_child=_forget_watcher_in_child)
