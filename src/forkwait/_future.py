"""``Future[T]``: one thread-safe state, awaitable from any loop, blockable from any thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from asyncio import events as _events
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

from ._callables import describe
from ._state import CANCELLED, DONE, FAILED, QUEUED, RUNNING
from ._state import state_lock as _state_lock
from ._threads import block_until_done

T = TypeVar("T")
S = TypeVar("S")

logger = logging.getLogger("forkwait")

_LockType = type(_state_lock)
_get_running_loop = _events._get_running_loop
_AsyncioFuture = asyncio.Future


class CancelledError(concurrent.futures.CancelledError):
    """The forked call was cancelled, so it has no value.

    A subclass of ``concurrent.futures.CancelledError`` (an ``Exception``), so that it
    is not mistaken for the awaiting task's own cancellation.
    """


class _Unretrieved:
    """Logs a failed future's exception if it is collected before anybody asked for it.

    Kept apart from ``Future`` so that only failed futures pay for a finalizer.
    """

    __slots__ = ("exc", "name")

    def __init__(self, exc: BaseException, name: str) -> None:
        self.exc: BaseException | None = exc
        self.name = name

    def __del__(self) -> None:
        exc = self.exc
        if exc is not None:
            logger.warning(
                "Future exception was never retrieved: fork(%s) raised %r",
                self.name,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )


class Future(Generic[T]):
    """A handle to one forked call: awaitable, blockable and chainable.

    ``fork`` makes them; await one from any event loop, or block on it with ``wait``
    or ``result()`` from any thread.

        fut = fork(load, path)
        data = await fut          # async code
        data = wait(fut)          # sync code
    """

    __slots__ = (
        "__weakref__",
        "_call",
        "_func",
        "_state",
        "_task",
        "_traceback",
        "_unretrieved",
        "_value",
        "_waiters",
    )

    _state: int
    _value: Any
    _traceback: TracebackType | None
    _waiters: list[Any] | None
    _func: object
    _task: asyncio.Task[None] | None
    # While QUEUED: the sync call's record (a worker or a waiter runs it), or the
    # coroutine waiting for its task to be created.
    _call: Any
    _unretrieved: _Unretrieved | None

    def __init__(self) -> None:
        raise TypeError(
            "Future objects are made by forkwait.fork(func, *args), not constructed directly"
        )

    # -- state, never blocking ------------------------------------------------------

    def done(self) -> bool:
        """Whether the call has finished: a value, an exception, or cancelled."""
        return self._state >= DONE

    def cancelled(self) -> bool:
        """Whether the call was cancelled before it produced a value."""
        return self._state == CANCELLED

    def __repr__(self) -> str:
        state = ("queued", "running", "done", "failed", "cancelled")[self._state]
        detail = ""
        if self._state == DONE:
            detail = f" value={self._value!r}"
        elif self._state == FAILED:
            detail = f" exception={self._value!r}"
        return f"<forkwait.Future {state} fork({describe(self._func)}){detail}>"

    # -- results ---------------------------------------------------------------------

    def _outcome(self) -> T:
        """The value of a finished future, or raises its exception or ``CancelledError``."""
        state = self._state
        if state == DONE:
            return cast(T, self._value)
        if state == FAILED:
            unretrieved = self._unretrieved
            if unretrieved is not None:
                unretrieved.exc = None
                self._unretrieved = None
            # Re-raise the call's own exception, with its original traceback each time
            # (as asyncio does), so repeated retrieval does not grow it.
            raise self._value.with_traceback(self._traceback)
        raise CancelledError(f"fork({describe(self._func)}) was cancelled")

    def result(self, timeout: float | None = None) -> T:
        """Block until the call finishes and return its value, or raise its exception.

        For sync code; in async code use ``await fut``. ``TimeoutError`` after
        ``timeout`` seconds (the call keeps running).
        """
        if self._state < DONE:
            block_until_done(self, timeout, "result")
        return self._outcome()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Block until the call finishes; its exception, or ``None`` if it returned."""
        if self._state < DONE:
            block_until_done(self, timeout, "exception")
        state = self._state
        if state == CANCELLED:
            raise CancelledError(f"fork({describe(self._func)}) was cancelled")
        if state == FAILED:
            unretrieved = self._unretrieved
            if unretrieved is not None:
                unretrieved.exc = None
                self._unretrieved = None
            return cast(BaseException, self._value)
        return None

    def __await__(self) -> Generator[Any, None, T]:
        if self._state < DONE:
            loop = _get_running_loop()
            if loop is None:
                raise RuntimeError(
                    "await on a forkwait.Future needs a running asyncio event loop in "
                    "this thread; from sync code use forkwait.wait(fut)"
                )
            waiter = loop.create_future()
            if self._add_waiter(waiter):
                try:
                    yield from waiter.__await__()
                except BaseException:
                    # The awaiting code was cancelled: the forked call goes on (spec),
                    # and this waiter must not stay on a long-lived future.
                    self._remove_waiter(waiter)
                    raise
        return self._outcome()

    # -- cancellation ------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call: ``True`` if it will not produce a value.

        A queued call never starts; a running task is cancelled; a sync call already
        running in a thread cannot be stopped, and this returns ``False``.
        """
        call: object = None
        waiters: list[Any] | None = None
        with _state_lock:
            state = self._state
            if state == QUEUED:
                call = self._call
                self._call = None
                self._state = CANCELLED
                waiters = self._waiters
                self._waiters = None
        if state == QUEUED:
            close = getattr(call, "close", None)  # a coroutine that never got its task
            if close is not None:
                close()
            if waiters:
                _wake_all(self, waiters)
            return True
        if state == CANCELLED:
            return True
        task = self._task
        if state == RUNNING and task is not None:
            loop = task.get_loop()
            if loop is _get_running_loop():
                task.cancel()
            else:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # its loop is closed; the task will never finish
                    return False
            return True
        return False

    # -- callbacks ---------------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(fut)`` once the future is done; at once if it already is.

        ``fn`` runs in the thread that finishes the call (the loop's thread for a task, a
        worker thread for a sync call). An exception in ``fn`` is logged, not raised.
        """
        if not callable(fn):
            raise TypeError(f"add_done_callback() expects a callable taking the future, got {fn!r}")
        if not self._add_waiter(fn):
            _run_callback(fn, self)

    @overload
    def then(self, fn: Callable[[Future[T]], Awaitable[S]]) -> Future[S]: ...
    @overload
    def then(self, fn: Callable[[Future[T]], S]) -> Future[S]: ...
    def then(self, fn: Callable[[Future[T]], Any]) -> Future[Any]:
        """A new future for ``fn(fut)``, run once this one is done (``torch.futures``' ``then``).

        ``fn`` runs in the thread that finishes this future, in the context of the code
        that called ``then``; if it returns an awaitable, that is awaited on the event
        loop that thread works for. Its exception goes to the new future.

            total = fork(load, path).then(lambda f: len(f.result()))
        """
        if not callable(fn):
            raise TypeError(f"then() expects a callable taking the future, got {fn!r}")
        from ._fork import chain

        return chain(self, fn, contextvars.copy_context())

    # -- internals used by fork, the pool and the hosts -----------------------------

    def _add_waiter(self, waiter: object) -> bool:
        """Register ``waiter`` for completion; ``False`` if the future is already done."""
        with _state_lock:
            if self._state >= DONE:
                return False
            waiters = self._waiters
            if waiters is None:
                self._waiters = [waiter]
            else:
                waiters.append(waiter)
            return True

    def _remove_waiter(self, waiter: object) -> None:
        with _state_lock:
            waiters = self._waiters
            if waiters is not None:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass

    def _set_result(self, value: Any) -> None:
        with _state_lock:
            if self._state >= DONE:
                return
            self._value = value
            self._state = DONE
            waiters = self._waiters
            self._waiters = None
        if waiters:
            _wake_all(self, waiters)

    def _set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._set_cancelled()
            return
        unretrieved = _Unretrieved(exc, describe(self._func))
        with _state_lock:
            if self._state >= DONE:
                unretrieved.exc = None
                return
            self._value = exc
            self._traceback = exc.__traceback__
            self._unretrieved = unretrieved
            self._state = FAILED
            waiters = self._waiters
            self._waiters = None
        if waiters:
            _wake_all(self, waiters)

    def _set_cancelled(self) -> None:
        with _state_lock:
            if self._state >= DONE:
                return
            self._state = CANCELLED
            waiters = self._waiters
            self._waiters = None
        if waiters:
            _wake_all(self, waiters)


_new_future = Future.__new__


def new_future(state: int, func: object) -> Future[Any]:
    """A fresh future in ``state`` for a call of ``func`` (``Future`` has no public constructor)."""
    fut: Future[Any] = _new_future(Future)  # pyright: ignore[reportUnknownVariableType]
    fut._state = state
    fut._value = None
    fut._traceback = None
    fut._waiters = None
    fut._func = func
    fut._task = None
    fut._call = None
    fut._unretrieved = None
    return fut


def _wake_all(fut: Future[Any], waiters: list[Any]) -> None:
    """Wake everything waiting on ``fut``: blocked threads, awaiting tasks, callbacks."""
    waiter: Any
    for waiter in waiters:
        if type(waiter) is _LockType:
            waiter.release()
        elif isinstance(waiter, _AsyncioFuture):
            _wake_asyncio(waiter)
        else:
            _run_callback(waiter, fut)


def _wake_asyncio(waiter: Any) -> None:
    loop = waiter.get_loop()
    if loop is _get_running_loop():
        if not waiter.done():
            waiter.set_result(None)
        return
    try:
        loop.call_soon_threadsafe(_resolve_waiter, waiter)
    except RuntimeError:
        pass  # that loop is closed: nobody is left to wake


def _resolve_waiter(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():  # the awaiting task may have been cancelled meanwhile
        waiter.set_result(None)


def _run_callback(fn: Callable[[Any], object], fut: Future[Any]) -> None:
    try:
        fn(fut)
    except Exception:
        logger.exception("Exception in done callback %r of %r", fn, fut)
