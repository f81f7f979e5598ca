"""``forkwait.scope()``: structured concurrency for forks, with anyio's rules.

Every fork made inside a scope, directly or from nested forks in worker threads and
tasks, belongs to it, unless an inner scope claims it (as anyio's nested task groups
do); leaving the scope waits for all of them. Until the body is
done, code may still retrieve a failure with ``wait`` or ``await``; a failure nobody
retrieved by then cancels the siblings, and the scope raises an ``ExceptionGroup``.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._future import owes_failure
from ._hooks import Observer, current_observer, install
from ._hosts import Slot, current_host, take, thread_state
from ._state import QUEUED, RUNNING

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._future import Future


class Scope(Observer):
    """Forks made inside belong to it, and leaving it waits for them.

    ``forkwait.scope()`` makes one::

        async with forkwait.scope():      # or `with forkwait.scope():` in sync code
            fork(fetch, url)
            fork(save, path)
        # both are done here; a failure nobody retrieved is raised in an ExceptionGroup
    """

    __slots__ = (
        "_body",
        "_cancelled",
        "_futures",
        "_host",
        "_inside",
        "_interrupts",
        "_lock",
        "_task_group",
        "_token",
        "_watch",
    )

    def __init__(self, task_group: TaskGroup | None = None) -> None:
        self._task_group = task_group
        self._futures: list[Future[Any]] = []
        # Forks of inner scopes, which cancel() reaches too (see created_inside).
        self._inside: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()  # appends and pruning of _futures
        self._interrupts: list[Callable[[], object]] = []
        self._cancelled = False
        self._token: contextvars.Token[Observer | None] | None = None
        self._body: Any = None  # the async body's anyio CancelScope
        self._host: Any = None
        # While leaving: the done callback that a fork made meanwhile (by a fork still
        # running) gets, so that its failure ends the wait too (see _settling).
        self._watch: Callable[[Future[Any]], None] | None = None

    def __repr__(self) -> str:
        done = sum(fut.done() for fut in self._futures)
        state = " cancelled" if self._cancelled else ""
        return f"<forkwait.scope{state}: {done} of {len(self._futures)} forks done>"

    @property
    def cancel_called(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel every fork of the scope, and the body of an ``async with`` scope.

        Pending tasks are cancelled and queued sync calls never start; sync calls
        already running finish, and a sync call of the scope blocked in ``wait`` gets
        ``forkwait.CancelledError``. Forks made afterwards are cancelled at once.
        """
        if self._cancelled:
            return
        self._cancelled = True
        with self._lock:
            inside = list(self._inside)
        for fut in [*self._futures, *inside]:
            fut.cancel()
        while self._interrupts:
            try:
                wake = self._interrupts.pop()
            except IndexError:
                break
            wake()
        body = self._body
        if body is not None:
            if _in_host_thread(self._host):
                body.cancel()
            else:
                _call_in(self._host, body.cancel)

    # -- the observer: forks of the scope, and waits that its cancellation interrupts --

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        if is_async:
            return func  # a task that is cancelled before its first step never starts
        # A sync call may be taken by a worker before cancel() reaches it (and a task
        # group's cancellation reaches the scope only when its tasks run): check at start.
        tg = self._task_group

        def unless_cancelled(*args: Any, **kwargs: Any) -> Any:
            if self._cancelled or (tg is not None and _cancel_called(tg)):
                raise _cancelled_error(func)
            return func(*args, **kwargs)

        # __wrapped__ only: its name is describe()'s, as a module has no __name__.
        functools.update_wrapper(unless_cancelled, func, assigned=(), updated=())
        unless_cancelled.__qualname__ = describe(func)
        unless_cancelled.__name__ = getattr(func, "__name__", unless_cancelled.__qualname__)
        return unless_cancelled

    claims_forks = True

    def created_inside(self, fut: Future[Any]) -> None:
        # A fork of an inner scope: that scope waits for it and raises its failure; this
        # one only cancels it with the rest, as anyio's outer cancel scopes do.
        if not self._cancelled:
            with self._lock:
                self._inside.add(fut)
            if not self._cancelled:  # checked again: cancel() may have listed them first
                return
        fut.cancel()

    def created(self, fut: Future[Any]) -> None:
        with self._lock:
            futures = self._futures
            futures.append(fut)
            count = len(futures)
            if count >= 64 and count & (count - 1) == 0:
                # At 64, 128, 256...: forget forks that are done and owe nothing (no
                # failure left to raise), so a long-lived scope holds no finished values.
                self._futures = [f for f in futures if not f.done() or owes_failure(f)]
        if self._cancelled:
            fut.cancel()
        elif self._task_group is not None:
            self._supervise(fut)
        watch = self._watch
        if watch is not None:
            fut.add_done_callback(watch)

    # -- attached to an anyio TaskGroup -------------------------------------------------

    def _supervise(self, fut: Future[Any]) -> None:
        """Give ``fut`` a task in the task group that lives and dies with it."""
        tg = self._task_group
        assert tg is not None
        if _in_host_thread(self._host):
            if not _start_or_cancel(tg, self._keep, fut):
                raise RuntimeError(
                    f"fork({describe(fut._func)}) in forkwait.scope(task_group=tg) found the "
                    f"task group inactive (it has exited, or was never entered), so the call "
                    f"was cancelled; enter the scope inside `async with tg:`"
                )
        else:  # a worker thread (nested fork, or a scope entered there): not thread-safe
            _call_in(self._host, lambda: _start_or_cancel(tg, self._keep, fut))

    async def _keep(self, fut: Future[Any]) -> None:
        """The task group's task for ``fut``: done when it is; cancelled with the task
        group, cancelling it; raising its failure into the task group, as anyio's own
        tasks do, unless somebody retrieved it (an ``await`` of the fork)."""
        import anyio
        import anyio.lowlevel

        from ._wait import collect_all

        try:
            await collect_all([fut])  # done, without retrieving its outcome
        except anyio.get_cancelled_exc_class():
            self.cancel()  # the task group is cancelled: so are all of the scope's forks
            with anyio.CancelScope(shield=True):
                await collect_all([fut])  # a running sync call finishes first
            if not owes_failure(fut):
                raise
            # It failed all the same (a running sync call cannot be stopped): the task
            # group gets the failure, as from a task of its own that fails late.
        else:
            if owes_failure(fut):
                # Let a task that is awaiting this fork, and steps next, retrieve it first;
                # shielded: the group cancelled meanwhile (another fork failing at once)
                # must still get this failure.
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
        if owes_failure(fut):
            fut._mark_retrieved()
            raise fut._value.with_traceback(fut._traceback)

    def interrupt_with(self, wake: Callable[[], object]) -> bool:
        self._interrupts.append(wake)
        return not self._cancelled  # checked after appending: cancel() pops what it sees

    def stop_interrupting(self, wake: Callable[[], object]) -> None:
        try:
            self._interrupts.remove(wake)
        except ValueError:
            pass  # cancel() took it

    def interrupted(self) -> bool:
        return self._cancelled

    # -- entering and leaving ----------------------------------------------------------

    def __enter__(self) -> Scope:
        if self._task_group is None and _in_async_code():
            raise RuntimeError(
                "a sync `with forkwait.scope():` in async code would block the event loop "
                "when it waits for its forks; write `async with forkwait.scope():`"
            )
        self._open()
        if self._task_group is not None:
            self._attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        from ._future import CancelledError
        from ._threads import block_until_done

        own_cancel = self._cancelled  # before the body ended: cancel(), or a fork's failure
        outer = self._close()
        if self._task_group is not None:
            return False  # the task group waits for the forks, and raises their failures
        if exc is not None:
            self.cancel()
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C: stop the forks, then go
                return False
        # A wait in the body that a cancellation interrupted (or a wait for a cancelled
        # fork) is no error of the body's: it goes on as it is, or ends here.
        cancelled = isinstance(exc, CancelledError)
        if thread_state.hidden_host is not None:  # sequential mode: see there
            self._refuse_waiting_on_the_hidden_loop()
        try:
            while (settling := self._settling()) is not None:
                settling.wait()
        except CancelledError:  # a scope around this one was cancelled: so is this one,
            self.cancel()  # and, as with anyio's task groups, its forks end before it does
            while (settling := self._settling()) is not None:
                block_until_done(settling, None, "wait")  # not interrupted again
            # The body's error and its forks' failures first, as anyio's groups report
            # them; else the cancellation goes on.
            self._raise(None if cancelled else exc)
            raise
        except BaseException:  # Ctrl-C while waiting: stop the forks, then go
            self.cancel()
            raise
        if cancelled:
            self._raise(None)
            # The scope's own cancellation ends here, unless one around it was cancelled
            # too: then it goes on to that one, as with trio's and anyio's cancel scopes.
            return own_cancel and not (outer is not None and outer.interrupted())
        return self._raise(exc)

    def _refuse_waiting_on_the_hidden_loop(self) -> None:
        """Sequential mode, in a sync call run in a loop's thread: a fork of the scope
        that this very loop has yet to run would keep the exit waiting for good; cancel
        the forks and raise, as a ``wait`` for it does."""
        from ._threads import refuse_waiting_on_the_hidden_loop

        for fut in list(self._futures):
            try:
                refuse_waiting_on_the_hidden_loop(fut)
            except RuntimeError:
                self.cancel()
                raise

    async def __aenter__(self) -> Scope:
        import anyio

        self._open()
        self._attach()
        if self._task_group is None:
            self._body = anyio.CancelScope()
            self._body.__enter__()
        return self

    def _attach(self) -> None:
        self._host = current_host()  # where the body and the task group live

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        import anyio

        self._close()
        if self._task_group is not None:
            return False  # the task group waits for the forks, and raises their failures
        cancelled_exc = anyio.get_cancelled_exc_class()
        if exc is not None:
            self.cancel()  # a failing or cancelled body stops the forks, as in anyio
        body, self._body = self._body, None
        # Our own cancellation of the body ends here (anyio's scope knows which it was),
        # before waiting for the forks, which that cancellation must not interrupt.
        swallowed = bool(body.__exit__(exc_type, exc, tb))
        if swallowed:
            exc = None
        outer_cancel: BaseException | None = None
        while (settling := self._settling()) is not None:
            try:
                with anyio.CancelScope(shield=outer_cancel is not None):
                    await settling
            except cancelled_exc as cancel:  # the code around the scope is cancelled
                outer_cancel = cancel
                self.cancel()
        if outer_cancel is not None:
            # The body's error and the failures first (as anyio's groups): else the
            # cancellation goes on.
            self._raise(exc)
            raise outer_cancel
        return self._raise(exc) or swallowed

    def _open(self) -> None:
        if self._token is not None:
            raise RuntimeError("a forkwait.scope() can be entered only once")
        self._token = install(self)

    def _close(self) -> Observer | None:
        """Uninstall the scope; the observer it was entered under, if any."""
        token = self._token
        assert token is not None
        try:
            current_observer.reset(token)
        except ValueError:  # left in another context than entered (a bug of the caller)
            raise RuntimeError(
                "forkwait.scope() was exited in another context than it was entered in"
            ) from None
        outer = token.old_value
        return outer if isinstance(outer, Observer) else None

    def _settling(self) -> Future[None] | None:
        """A future done once every pending fork is done, or one fails unretrieved;
        ``None`` if none is pending. A failure nobody retrieved cancels the others first."""
        settled = _settled_future()
        # Watch the forks made from now on (by forks still running) before listing the
        # pending ones, so that none falls in between: a failure of either kind ends
        # the wait, and the next round lists the new forks.
        self._watch = lambda fut: _finish_if_failed(settled, fut)
        # Pending first: a fork that fails after this list is made is in it, and its
        # failure then finishes the future returned (no wake-up lost in between).
        pending = [fut for fut in list(self._futures) if not fut.done()]
        if not self._cancelled and self._failures(mark=False):
            self.cancel()
        if not pending:
            self._watch = None
            return None
        _finish_when_done_or_failed(settled, pending)
        return settled

    def _failures(self, *, mark: bool) -> list[BaseException]:
        """The exceptions of forks that failed and that nobody retrieved."""
        failed: list[BaseException] = []
        for fut in list(self._futures):
            if owes_failure(fut):
                if mark:
                    fut._mark_retrieved()
                failed.append(fut._value.with_traceback(fut._traceback))
        return failed

    def _raise(self, exc: BaseException | None) -> bool:
        """Raise what the scope ends with: the body's exception and the failures
        nobody retrieved, grouped as anyio does; ``False`` (do not suppress) if none.

        A cancellation of the body is not an error: it goes on as it is (with trio and
        anyio, the cancel scope that raised it delivers it again at the next checkpoint).
        """
        errors = self._failures(mark=True)
        if exc is not None and not _is_cancellation(exc):
            errors.insert(0, exc)
        if not errors:
            return False
        raise BaseExceptionGroup(f"{len(errors)} error(s) in a forkwait.scope()", errors) from None


def _is_cancellation(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    import anyio

    try:
        return isinstance(exc, anyio.get_cancelled_exc_class())
    except Exception:  # no async library runs here: sync code
        return False


def _cancel_called(tg: TaskGroup) -> bool:
    try:
        return tg.cancel_scope.cancel_called
    except RuntimeError:  # trio reads its clock for a deadline, only in its own thread
        return False


def _cancelled_error(func: Callable[..., Any]) -> BaseException:
    from ._future import CancelledError

    return CancelledError(f"fork({describe(func)}) was cancelled with its scope before it started")


def _in_async_code() -> bool:
    """Whether an event loop (asyncio's, or a trio run) runs in this thread."""
    from ._compiled import running_loop
    from ._hosts import trio_token

    return running_loop() is not None or trio_token() is not None


def _in_host_thread(host: Any) -> bool:
    """Whether this thread runs ``host`` (an asyncio loop, or a trio run's token)."""
    from ._compiled import running_loop
    from ._hosts import trio_token

    if host is None:
        return False
    return running_loop() is host or trio_token() is host


def _start_or_cancel(tg: TaskGroup, keep: Callable[[Future[Any]], Any], fut: Future[Any]) -> bool:
    """Start ``fut``'s keeper in ``tg``; ``False`` if ``tg`` is not active, and then
    cancel the fork, as nobody would supervise it."""
    name = f"forkwait keeper of fork({describe(fut._func)})"
    try:
        tg.start_soon(keep, fut, name=name)
    except RuntimeError:  # anyio: "This task group is not active"
        fut.cancel()
        return False
    return True


def _as_asyncio(fn: Callable[[], object]) -> None:
    # A callback from another thread runs in that thread's context, where sniffio (and
    # so anyio) cannot tell that asyncio runs it: say so, for this callback only.
    try:
        import sniffio
    except ImportError:  # anyio without sniffio takes any running loop for asyncio
        fn()
        return
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        fn()
    finally:
        sniffio.current_async_library_cvar.reset(token)


def _call_in(host: Any, fn: Callable[[], object]) -> None:
    """Run ``fn()`` in the thread of ``host`` (an asyncio loop or a trio run)."""
    import asyncio

    if isinstance(host, asyncio.AbstractEventLoop):
        try:
            host.call_soon_threadsafe(_as_asyncio, fn)
        except RuntimeError:
            pass  # its loop is closed: the body is long gone
    elif host is not None:
        from ._trio import call_soon

        call_soon(host, fn)


def _settled_future() -> Future[None]:
    """What a scope's exit waits on: see ``_finish_when_done_or_failed``."""
    from ._future import new_future

    settled = new_future(QUEUED, _finish_when_done_or_failed)
    # cancel() takes its one item; so does the callback that finishes it (take() tells
    # "taken" by the item it pops, so any but None)
    settled._handle = Slot(_finish)
    return settled


def _finish(settled: Future[None]) -> None:
    if take(settled) is not None:
        settled._state = RUNNING
        settled._set_result(None)


def _finish_if_failed(settled: Future[None], fut: Future[Any]) -> None:
    if owes_failure(fut):
        _finish(settled)


def _finish_when_done_or_failed(settled: Future[None], futures: list[Future[Any]]) -> None:
    """Finish ``settled`` once all of ``futures`` are done, or one fails and nobody
    retrieved it."""
    total = len(futures)
    finished = itertools.count(1)  # next() on it is atomic: one callback sees `total`

    def one_done(fut: Future[Any]) -> None:
        if owes_failure(fut) or next(finished) == total:
            _finish(settled)

    for fut in futures:
        fut.add_done_callback(one_done)


def scope(*, task_group: TaskGroup | None = None) -> Scope:
    """A scope for forks: leaving it waits for every fork made inside, and raises the
    failures nobody retrieved in an ``ExceptionGroup`` (``with`` or ``async with``).

    With ``task_group``, the forks belong to that anyio task group instead: each runs
    under a task of the group, so the group waits for it, cancels it with its cancel
    scope, and gets its failure (unless somebody awaited the fork); leaving the scope
    then does not wait. ::

        async with forkwait.scope() as s:
            fork(crawl, site)             # forks of forks belong to the scope too
            if deadline_passed:
                s.cancel()

        async with anyio.create_task_group() as tg:
            with forkwait.scope(task_group=tg):
                fork(crawl, site)         # lives and dies with tg
    """
    if task_group is not None:
        import anyio.abc

        if not isinstance(task_group, anyio.abc.TaskGroup):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"forkwait.scope(task_group=...) takes an anyio TaskGroup (from "
                f"anyio.create_task_group()), got {type(task_group).__qualname__} object "
                f"{task_group!r}"
            )
    return Scope(task_group)
