"""``Future[T]``: one thread-safe state, awaitable from any loop, blockable from any thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import sys
import threading
import weakref
from _thread import allocate_lock
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, cast, overload

from . import _hosts
from ._callables import describe
from ._compiled import running_loop, speedups
from ._hooks import get_observer
from ._hosts import (
    LOOK_AGAIN_SECONDS,
    HostedTask,
    OnItsWay,
    Remote,
    Slot,
    abandon_if_it_cannot_finish,
    loop_that_may_close,
    take,
    thread_state,
    trio_token,
)
from ._state import CANCELLED, DONE, FAILED, QUEUED, RUNNING
from ._threads import block_until_done, seconds
from ._torch import clean_up as clean_torch_state
from ._torch import is_fresh as is_fresh_torch_state

T = TypeVar("T")
S = TypeVar("S")

logger = logging.getLogger("forkwait")

_LockType = type(allocate_lock())  # what a thread blocked in wait waits on
# The waiter lists being filled, by future. dict.setdefault is atomic, so threads
# that register the first waiters of one future at once all get the same list;
# draining removes the entry. A future has its list only once somebody waits on it:
# most are never waited on while pending (fan-outs, calls run inline).
_lists: dict[Future[Any], list[Any]] = {}
_first_list = _lists.setdefault
_modules = sys.modules
_AsyncioFuture = asyncio.Future
_Task: Any = asyncio.Task
# How many takers of a failure may still give it back: an awaiting task handed the
# failure and cancelled before it raised it, or a thread interrupted as it was woken.
# The failure is reported again only if the last taker gives it back. Failed futures
# only, so kept apart from Future's slots.
_takers: weakref.WeakKeyDictionary[Future[Any], int] = weakref.WeakKeyDictionary()
_takers_lock = threading.Lock()
# Failures on their way to tasks that await them in other threads' loops (or trio
# runs): already theirs to raise, so nobody judges them unretrieved meanwhile (see
# owes_failure); still reported if the hand-off never runs (its loop closed first).
_handing: weakref.WeakKeyDictionary[Future[Any], int] = weakref.WeakKeyDictionary()


def owes_failure(fut: Future[Any]) -> bool:
    """Whether ``fut`` failed and nobody took its failure, nor is about to."""
    return fut._state == FAILED and fut._unretrieved is not None and not _handing.get(fut)


def handing_over(fut: Future[Any], count: int) -> None:
    """A failure of ``fut`` set out (+1) to, or reached (-1), an awaiter in another thread."""
    with _takers_lock:
        _handing[fut] = _handing.get(fut, 0) + count


class CancelledError(concurrent.futures.CancelledError):
    """The forked call was cancelled, so it has no value.

    A subclass of ``concurrent.futures.CancelledError`` (an ``Exception``), so that it
    is not mistaken for the awaiting task's own cancellation.
    """


class InvalidStateError(concurrent.futures.InvalidStateError, RuntimeError):
    """The future is not in the state this needs: ``value()`` before the call finished.

    Also a ``RuntimeError``, which is what ``torch.futures.Future.value()`` raises.
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


if TYPE_CHECKING or speedups is None:

    class _FutureCore:
        """Without the C fast paths, Future's fields are slots of its own."""

        __slots__ = ()

else:
    # Future's fields, and the await, in C.
    _FutureCore = speedups.FutureCore


class Future(_FutureCore, Generic[T]):
    """A handle to one forked call: awaitable, blockable and chainable.

    ``fork`` makes them; await one from any event loop, or block on it with ``wait``
    or ``result()`` from any thread. ::

        fut = fork(load, path)
        data = await fut          # async code
        data = wait(fut)          # sync code
    """

    # In C, where built: all of them, so that a collection need not walk Python slots.
    __slots__ = (
        (
            "__weakref__",
            "_func",
            "_handle",
            "_state",
            "_traceback",
            "_unretrieved",
            "_value",
            "_waiters",
        )
        if speedups is None
        else ()
    )

    # Always set.
    _state: int
    _func: object
    # Blocked threads' locks, awaiting tasks' asyncio futures and done callbacks; None
    # until the first one comes (see _lists).
    _waiters: list[Any] | None
    # While QUEUED: the sync call's record (a worker or a waiter runs it), or the
    # coroutine waiting for its task. While RUNNING: the task, if it is one.
    _handle: Any
    # Set once the call finishes; never read before.
    _value: Any
    _traceback: TracebackType | None
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

    def __reduce__(self) -> NoReturn:
        # The default would copy the slots: a copy of a pending future that no call
        # ever finishes, and in another process a waiter that blocks for good.
        raise TypeError(
            f"a forkwait.Future (of fork({describe(self._func)})) cannot be pickled or "
            f"copied: it is a handle to a call in this process; pass its value instead "
            f"(wait(fut) first)"
        )

    def __repr__(self) -> str:
        state = self._state
        detail = ""
        if state == DONE:
            detail = f" value={self._value!r}"
        elif state == FAILED:
            detail = f" exception={self._value!r}"
        name = ("queued", "running", "done", "failed", "cancelled")[state]
        return f"<forkwait.Future {name} fork({describe(self._func)}){detail}>"

    # -- results ---------------------------------------------------------------------

    def _outcome(self) -> T:
        """The value of a finished future, or raises its exception or ``CancelledError``."""
        state = self._state
        if state == DONE:
            value: T = self._value  # typed by assignment: a cast() would be a call
            return value
        if state == FAILED:
            self._mark_retrieved()
            try:
                # Re-raise the call's own exception, with its original traceback each
                # time (as asyncio does), so repeated retrieval does not grow it.
                raise self._value.with_traceback(self._traceback)
            finally:
                # This frame is in the traceback the raise gives the exception: it must
                # not hold the future, or the future, the exception and the call's
                # frames keep one another alive until a garbage collection.
                del self
        raise self._cancelled_error()

    def _mark_retrieved(self) -> None:
        """Somebody takes the failure to raise it (see _restore_unretrieved)."""
        if self._state != FAILED:
            return
        with _takers_lock:
            _takers[self] = _takers.get(self, 0) + 1
            unretrieved = self._unretrieved
            if unretrieved is not None:
                unretrieved.exc = None  # before it is dropped, so that it does not log
                self._unretrieved = None

    def _restore_unretrieved(self) -> None:
        """A taker of the failure gave up before raising it: unless another taker
        still has it (or raised it), report it again."""
        if self._state != FAILED:
            return
        with _takers_lock:
            left = _takers.get(self, 1) - 1
            _takers[self] = left
            if left <= 0 and self._unretrieved is None:
                self._unretrieved = _Unretrieved(self._value, describe(self._func))

    def _cancelled_error(self) -> CancelledError:
        return CancelledError(f"fork({describe(self._func)}) was cancelled")

    def result(self, timeout: float | None = None) -> T:
        """Block until the call finishes and return its value, or raise its exception.

        For sync code; in async code use ``await fut``. ``TimeoutError`` after
        ``timeout`` seconds (the call keeps running).
        """
        if timeout is not None:
            timeout = seconds(timeout, "Future.result")
        if get_observer() is not None:
            return observed_wait(self, timeout, "result")
        state = self._state
        if state == DONE:
            value: T = self._value
            return value
        if state < DONE:
            block_until_done(self, timeout, "result")
        try:
            return self._outcome()
        finally:
            del self  # see _outcome

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Block until the call finishes; its exception, or ``None`` if it returned.

        Raises ``forkwait.CancelledError`` if the call was cancelled, as asyncio does.
        """
        if timeout is not None:
            timeout = seconds(timeout, "Future.exception")
        if self._state < DONE:
            block_until_done(self, timeout, "exception", get_observer())
        state = self._state
        if state == CANCELLED:
            raise self._cancelled_error()
        if state == FAILED:
            self._mark_retrieved()
            return cast(BaseException, self._value)
        return None

    def wait(self) -> T:
        """Block until the call finishes and return its value (``torch.futures.Future.wait``).

        ``result()`` without a timeout; in async code use ``await fut``.
        """
        if get_observer() is not None:
            return observed_wait(self, None, "wait")
        if self._state < DONE:
            block_until_done(self, None, "wait")
        try:
            return self._outcome()
        finally:
            del self  # see _outcome

    def value(self) -> T:
        """The value of a finished call, never blocking (``torch.futures.Future.value``).

        For use after ``wait()`` or inside a ``then()`` callback; raises the call's
        exception, and ``InvalidStateError`` if the call has not finished. ::

            total = fork(load, path).then(lambda f: len(f.value()))
        """
        if self._state < DONE:
            raise InvalidStateError(
                f"fork({describe(self._func)}) has not finished, so it has no value yet; "
                f"call fut.wait() first, or read value() inside a then() callback"
            )
        try:
            return self._outcome()
        finally:
            del self  # see _outcome

    def __await__(self) -> Generator[Any, None, T]:
        # One generator for the whole await: a finished future (the common case after
        # a fan-out) costs one frame, and a pending one a single bare yield.
        state = self._state
        if state < DONE:
            loop = running_loop()
            if loop is None:
                trio_host = _hosts._trio_host  # trio_token(), inlined once it is loaded
                token = trio_token() if trio_host is None else trio_host.current_token()
                if token is not None:  # and so forkwait._trio is loaded
                    waiting: Generator[Any, None, T] = _hosts._trio_host.wait_in_trio(self, token)
                    return (yield from waiting)
                raise RuntimeError(
                    "await on a forkwait.Future needs a running event loop (asyncio or "
                    "trio) in this thread; from sync code use forkwait.wait(fut)"
                )
            handle = self._handle
            if (
                type(handle) is not _Task
                or handle.get_loop() is not loop  # a task of another thread's loop
                or get_observer() is not None
            ):
                return (yield from self._wait_on(loop))
            # Its task is on this loop's ready queue: let it run first, as it often
            # finishes in that one step, and then the value is there after one turn of
            # the loop instead of two. Nothing is registered during the turn: if the
            # call fails meanwhile, this task retrieves the failure when it steps again,
            # before the loop runs anything queued later (a task group's keeper looks
            # one turn after that, see Scope._keep).
            yield  # a bare yield: the awaiting task steps again after the ones queued now
            state = self._state
            if state < DONE:
                return (yield from self._wait_after_the_turn(loop))
        else:
            observer = get_observer()
            if observer is not None:  # a wait that found the call finished is a wait too
                stopped = observer.waiting(self)
                if stopped is not None:
                    stopped()
        if state == DONE:
            value: T = self._value
            return value
        return self._outcome()

    def _wait_after_the_turn(self, loop: asyncio.AbstractEventLoop) -> Generator[Any, None, T]:
        """The task did not finish in its first step: wait for it through a waiter."""
        _refuse_awaiting_itself(self, loop)
        abandon_if_it_cannot_finish(self)  # a task of a closed loop never finishes, say
        waiter: asyncio.Future[T] = loop.create_future()
        if not self._add_waiter(waiter):
            return self._outcome()
        return (yield from self._await_waiter(waiter))

    def _await_waiter(self, waiter: asyncio.Future[T]) -> Generator[Any, None, T]:
        try:
            return (yield from waiter)
        except asyncio.CancelledError:
            self._abandon(waiter)  # cancelled, maybe just after the waiter got the outcome
            raise

    def _abandon(self, waiter: asyncio.Future[Any]) -> None:
        """The awaiting task stopped (cancelled): if the failure was handed to its waiter,
        nobody raises it now, so it is unretrieved again."""
        self._remove_waiter(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            self._restore_unretrieved()
        waiter.cancel()

    def _wait_on(self, loop: asyncio.AbstractEventLoop) -> Generator[Any, None, T]:
        """Await the outcome through a waiter future of ``loop``."""
        _refuse_awaiting_itself(self, loop)
        abandon_if_it_cannot_finish(self)
        waiter: asyncio.Future[T] = loop.create_future()
        observer = get_observer()
        if observer is not None:
            stopped = observer.waiting(self)
            if stopped is not None:
                waiter.add_done_callback(lambda _: stopped())
        # The waiter receives the outcome itself (see _settle); if the awaiting task is
        # cancelled, only the waiter is, never the call, and a failure it was handed
        # is reported again (see _abandon).
        if not self._add_waiter(waiter):
            self._settle(waiter)  # finished meanwhile
        elif loop_that_may_close(self) not in (None, loop):
            _look_again_later(self, waiter, loop)  # its loop may close under it
        return self._await_waiter(waiter)

    # -- cancellation ------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call: ``True`` if it was cancelled, or asked to stop.

        A queued call never starts; a running task is cancelled; a sync call already
        running in a thread cannot be stopped, and this returns ``False``. As in asyncio,
        a running task gets the request at its next step (from another thread, once its
        loop runs it): it may still finish first, or refuse.
        """
        state = self._state
        if state == QUEUED:
            queued = take(self)  # races whoever would start it; one wins (see take)
            if queued is not None:
                if asyncio.iscoroutine(queued):  # a coroutine that never got its task
                    queued.close()
                self._set_cancelled()
                return True
            state = self._state  # started meanwhile
        if state == CANCELLED:
            return True
        if state > RUNNING:
            return False
        handle = self._handle
        if isinstance(handle, asyncio.Task):
            loop = handle.get_loop()
        elif isinstance(handle, (Slot, OnItsWay)) and handle.loop is not None:
            # Its loop took the coroutine and is making the task right now: cancel the
            # task once it exists, which a callback queued after that one will see (in
            # the loop's own thread too: the task is not there yet).
            host = handle.loop
            if not isinstance(host, asyncio.AbstractEventLoop):  # a trio run
                from ._trio import call_soon

                return call_soon(host, _cancel_task, self)
            try:
                host.call_soon_threadsafe(_cancel_task, self)
            except RuntimeError:  # its loop is closed; the task will never be made
                return False
            return True
        elif isinstance(handle, HostedTask):
            return handle.cancel_soon()
        elif isinstance(handle, Remote):
            return handle.cancel()  # in a worker process or on a Dask cluster
        else:
            return False  # a sync call running in a thread
        if loop is running_loop():
            _cancel_task(self)
        else:
            try:
                loop.call_soon_threadsafe(_cancel_task, self)
            except RuntimeError:  # its loop is closed; the task will never finish
                return False
        return True

    # -- callbacks ---------------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(fut)`` once the future is done; at once if it already is.

        ``fn`` runs in the thread that finishes the call (the loop's thread for a task, a
        worker thread for a sync call). An exception in ``fn`` is logged, not raised.
        """
        if not callable(fn):
            raise TypeError(f"add_done_callback() expects a callable taking the future, got {fn!r}")
        if getattr(fn, "__module__", None) == "asyncio.tasks":
            # asyncio.wait(): its callback would run in a worker thread, where it cannot
            # wake the loop, so the wait would hang.
            raise TypeError(
                f"asyncio.wait() takes asyncio futures and tasks, not {self!r}; pass "
                f"asyncio.ensure_future(fut) for each (a task of the running loop that "
                f"awaits it), or use asyncio.gather(*futs) or forkwait.wait_all(futs)"
            )
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
        loop that thread works for. Its exception goes to the new future. ::

            total = fork(load, path).then(lambda f: len(f.result()))
        """
        if not callable(fn):
            raise TypeError(f"then() expects a callable taking the future, got {fn!r}")
        from ._fork import chain

        return chain(self, fn, contextvars.copy_context())

    # -- internals used by fork, the pool and the hosts -----------------------------
    #
    # No lock: ``_waiters`` is a list (made on first use, see _lists), and the GIL
    # makes ``append``, ``pop(0)`` and ``remove`` atomic. A RUNNING future has exactly
    # one completer (the task's driver, or the thread that took the call), which stores
    # the outcome, then the state, then drains the list. Whoever appends checks the
    # state afterwards and drains too if it is done, so a waiter added as the call
    # finished is still woken; ``pop(0)`` hands each waiter to exactly one drainer.

    def _add_waiter(self, waiter: object) -> bool:
        """Register ``waiter`` for completion; ``False`` if the future is already done."""
        if self._state >= DONE:
            return False
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = _first_list(self, [])
        waiters.append(waiter)
        if self._state >= DONE:  # finished meanwhile: its completer may have missed us
            self._drain()
        elif len(waiters) >= _PRUNE_FROM and _should_prune(len(waiters)):
            self._prune(waiters)
        return True

    def _remove_waiter(self, waiter: object) -> bool:
        """Unregister ``waiter``; ``False`` if a drainer took it first (it is being woken)."""
        waiters = self._waiters
        if waiters is not None:
            try:
                waiters.remove(waiter)  # only our own waiters: compared by identity
            except ValueError:
                return False  # a drainer took it
            return True
        return False

    def _prune(self, waiters: list[Any]) -> None:
        """Drop the waiters of awaiting tasks that were cancelled (say, by a timeout);
        the others keep their order among themselves, behind any added meanwhile."""
        for _ in range(len(waiters)):
            try:
                waiter = waiters.pop(0)
            except IndexError:
                return
            if not _is_finished_waiter(waiter):
                waiters.append(waiter)
        if self._state >= DONE:  # as for any append: the completer may have missed these
            self._drain()

    def _set_result(self, value: Any) -> None:
        """Finish with ``value``; only the call's one completer calls this."""
        self._value = value
        self._state = DONE
        if self._waiters is not None:
            self._drain()

    def _set_exception(self, exc: BaseException) -> None:
        """Finish with ``exc``; only the call's one completer calls this."""
        if isinstance(exc, (asyncio.CancelledError, CancelledError)):
            # As in asyncio: a call that ends in a cancellation (its own, or a wait on
            # a cancelled future it did not handle) is cancelled, not failed.
            self._set_cancelled()
            return
        self._value = exc
        self._traceback = exc.__traceback__ = _from_the_call(exc.__traceback__)
        self._unretrieved = _Unretrieved(exc, describe(self._func))
        self._state = FAILED
        if self._waiters is not None:
            self._drain()

    def _set_cancelled(self) -> None:
        self._state = CANCELLED
        if self._waiters is not None:
            self._drain()

    def _drain(self) -> None:
        """Wake every registered waiter, each exactly once, in the order they came."""
        waiters = self._waiters
        if waiters is None:
            return
        _lists.pop(self, None)
        if self._state == FAILED:
            self._drain_failed(waiters)
            return
        while waiters:
            try:
                waiter = waiters.pop(0)
            except IndexError:  # another drainer took the last one
                return
            if type(waiter) is _AsyncioFuture and self._state == DONE:
                # The hot path, inlined: a task on this loop awaits the value.
                future: asyncio.Future[Any] = waiter  # pyright: ignore[reportUnknownVariableType]
                if future.get_loop() is running_loop():
                    if not future.done():
                        future.set_result(self._value)
                    continue
            self._wake_one(waiter)

    def _drain_failed(self, waiters: list[Any]) -> None:
        """``_drain`` for a failure: the blocked threads and awaiting tasks take it
        before any done callback runs, as a scope's judges whether anybody did."""
        taken: list[Any] = []
        while waiters:
            try:
                taken.append(waiters.pop(0))
            except IndexError:  # another drainer took the last one
                break
        for waiter in taken:
            if _takes_failure(waiter):
                self._wake_one(waiter)
        for waiter in taken:
            if not _takes_failure(waiter):
                self._wake_one(waiter)

    def _wake_one(self, waiter: Any) -> None:
        """Wake a blocked thread, an awaiting task or a done callback, in that order of cost."""
        if type(waiter) is _LockType:
            if self._state == FAILED:
                self._mark_retrieved()  # the blocked thread raises it (see block)
            waiter.release()
        elif isinstance(waiter, _AsyncioFuture):
            future: asyncio.Future[Any] = waiter  # pyright: ignore[reportUnknownVariableType]
            loop = future.get_loop()
            if loop is running_loop():
                self._settle(future)
                return
            # A failure is the awaiter's now, not once its loop runs the hand-off: a
            # scope that judges it meanwhile must not also raise it (see owes_failure).
            failed = self._state == FAILED
            if failed:
                handing_over(self, 1)
            try:
                loop.call_soon_threadsafe(self._settle_across, future, failed)
            except RuntimeError:  # that loop is closed: nobody is left to wake
                if failed:
                    handing_over(self, -1)
        elif type(waiter) is _hosts.trio_waiter:  # a trio task: rescheduled, never blocks
            try:
                waiter(self)
            except BaseException:  # as _run_callback: the other waiters still get woken
                logger.exception("Exception in done callback %r of %r", waiter, self)
        elif thread_state.serves_others and not _takes_failure(waiter):
            # Done callbacks may block; what wakes a waiter (a trio task, a thread
            # waiting in a scope) does not, and takes a failure before they run.
            from ._threads import call_in_a_worker

            call_in_a_worker(_run_callback, waiter, self)
        else:
            _run_callback(waiter, self)

    def _settle_across(self, waiter: asyncio.Future[Any], failed: bool) -> None:
        """``_settle``, in the loop of a waiter woken from another thread (see _wake_one)."""
        if failed:
            handing_over(self, -1)
        self._settle(waiter)

    def _settle(self, waiter: asyncio.Future[Any]) -> None:
        """Hand the outcome to an awaiting task's waiter, in that waiter's loop."""
        if waiter.done():  # the awaiting task was cancelled meanwhile
            return
        state = self._state
        if state == DONE:
            waiter.set_result(self._value)
        elif state == FAILED:
            self._mark_retrieved()  # the awaiter raises it
            exc = self._value.with_traceback(self._traceback)
            if isinstance(exc, StopIteration):
                # No coroutine can raise it (PEP 479), and asyncio refuses it: the
                # RuntimeError that awaiting a finished future with it gives, sooner.
                exc = _stop_iteration_error(self, exc)
            waiter.set_exception(exc)
        else:
            waiter.set_exception(self._cancelled_error())


#: Where forkwait's own modules are: their frames that caught a call's exception.
_OUR_FILES = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _from_the_call(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without forkwait's frames that caught the exception (keeping at least the
    last frame): they hold the future, which holds the exception, and so would keep it
    and the call's frames alive in a cycle until a garbage collection."""
    while (
        tb is not None
        and tb.tb_next is not None
        and tb.tb_frame.f_code.co_filename.startswith(_OUR_FILES)
    ):
        tb = tb.tb_next
    return tb


def _stop_iteration_error(fut: Future[Any], exc: StopIteration) -> RuntimeError:
    error = RuntimeError(
        f"fork({describe(fut._func)}) raised StopIteration, which cannot be raised into "
        f"a coroutine; it is this error's __cause__ (wait(fut) in sync code raises it)"
    )
    error.__cause__ = exc
    return error


def _takes_failure(waiter: object) -> bool:
    """Whether ``waiter`` raises the failure it is woken with: a blocked thread, an
    awaiting task (asyncio's or trio's), rather than a done callback."""
    return isinstance(waiter, (_LockType, _AsyncioFuture)) or getattr(
        type(waiter), "takes_failure", False
    )


_PRUNE_FROM = 32


def _should_prune(count: int) -> bool:
    # At 32, 64, 128...: pruning costs O(n^2) (pop(0) n times), so doing it only when
    # the list doubles keeps registration amortised O(n).
    return count >= _PRUNE_FROM and count & (count - 1) == 0


def _is_finished_waiter(waiter: object) -> bool:
    return isinstance(waiter, _AsyncioFuture) and waiter.done()


#: Future's own __await__. With the C fast paths, FutureCore's takes the common cases
#: and hands the rest to this one.
python_await: Callable[[Future[Any]], Generator[Any, None, Any]] = Future.__dict__["__await__"]
if speedups is not None:
    del Future.__await__

#: Makes an empty Future without the constructor that refuses users; fork fills it in.
allocate_future = cast("Callable[[type[Future[Any]]], Future[Any]]", Future.__new__)


def new_future(state: int, func: object) -> Future[Any]:
    """A fresh future in ``state`` for a call of ``func`` (``Future`` has no public constructor)."""
    fut = allocate_future(Future)
    fut._state = state
    fut._waiters = None
    fut._func = func
    fut._handle = None
    return fut


def _run_callback(fn: Callable[[Any], object], fut: Future[Any]) -> None:
    try:
        if "torch" in _modules and is_fresh_torch_state():
            # A worker's thread (or any fresh one): a callback that turns grad mode off
            # must not leave it off for the next call the thread runs, as no call may.
            try:
                fn(fut)
            finally:
                clean_torch_state(fn)
        else:
            fn(fut)
    except BaseException:
        # BaseExceptions too: raised here they would skip the other waiters and kill
        # the worker thread that happened to finish the call.
        logger.exception("Exception in done callback %r of %r", fn, fut)


def _refuse_awaiting_itself(fut: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
    handle = fut._handle
    if isinstance(handle, asyncio.Task) and asyncio.current_task(loop) is handle:
        raise awaiting_itself_error(fut)


def awaiting_itself_error(fut: Future[Any]) -> RuntimeError:
    """What a call that awaits its own future gets (on asyncio and in trio)."""
    return RuntimeError(
        f"fork({describe(fut._func)}) awaits its own future from inside the call: "
        f"it would wait forever; return the value instead of awaiting it"
    )


def _look_again_later(fut: Future[Any], waiter: asyncio.Future[Any], loop: Any) -> None:
    """For a task of ``loop`` awaiting ``fut`` of another loop: look every second whether
    that loop was closed meanwhile (which fails ``fut``, and so ends the await)."""

    def look() -> None:
        if waiter.done():
            return
        abandon_if_it_cannot_finish(fut)
        if not waiter.done():
            loop.call_later(LOOK_AGAIN_SECONDS, look)

    loop.call_later(LOOK_AGAIN_SECONDS, look)


def _cancel_task(fut: Future[Any]) -> None:
    """Cancel ``fut``'s task, in its loop's thread."""
    task: Any = fut._handle
    if isinstance(task, asyncio.Task):  # a subclass too, from a loop's task factory
        task.cancel()
    elif isinstance(task, HostedTask):
        task.cancel_here()
    elif isinstance(task, OnItsWay):  # this came before the hand-off that makes the task
        task.cancelled = True


def observed_wait(fut: Future[T], timeout: float | None, api: str) -> T:
    """A sync wait that tells the observer when it starts and stops, and that a
    cancelled scope interrupts."""
    observer = get_observer()
    stopped = observer.waiting(fut) if observer is not None else None
    try:
        if fut._state < DONE:
            block_until_done(fut, timeout, api, observer)
        return fut._outcome()
    finally:
        if stopped is not None:
            stopped()
