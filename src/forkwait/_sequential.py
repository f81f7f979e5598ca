"""``forkwait.sequential()``: run forked calls one at a time, in fork order, for debugging.

As ``torch.jit.fork`` does in eager Python, a fork made inside runs its call at once,
in the forking thread, before ``fork`` returns: nothing runs in parallel, and a
debugger or a print shows the calls in the order they were forked. Values and
exceptions are those of parallel mode; the future comes back already finished.

A coroutine function forked from sync code runs to its end on an event loop of its own
in the forking thread. Forked from async code (the forking thread runs an asyncio loop
or a trio run), it cannot finish before ``fork`` returns: it becomes a task there that
starts only when the call forked before it has finished, so calls still run one at a
time and in fork order. A sync call forked while such a coroutine is pending takes its
turn the same way, then runs in the forking thread as sync code.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import sys
import types
from asyncio import events
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

from ._compiled import running_loop
from ._future import Future, new_future
from ._hooks import Observer, current_observer, install
from ._hosts import Slot, close_awaitable, spawn, thread_state, trio_token
from ._state import QUEUED, RUNNING
from ._threads import interrupted_here

_AsyncioLoop = asyncio.AbstractEventLoop


class Sequential(Observer):
    """The mode's observer: it makes fork run calls in order (see ``run_in_order``)."""

    __slots__ = ("_last",)

    runs_in_order = True

    def __init__(self) -> None:
        #: By loop and forking coroutine: the coroutine forked there last, which the next
        #: one waits for. Per loop: a sync call running inline may run a loop of its own
        #: meanwhile. Per forker: a coroutine that waits for one it forked must not
        #: queue that one behind the siblings queued behind itself.
        self._last: dict[tuple[int, int], Future[Any]] = {}

    def runner(self) -> Sequential:
        return self

    def run(
        self,
        unwrapped: Callable[..., Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> Future[Any]:
        """Run ``func(*args, **kwargs)`` now (or, for a coroutine in async code, queue it
        after the one forked before), and return its future; ``func`` is ``unwrapped``
        as the observers wrapped it."""
        host = running_loop() or trio_token()
        hidden = thread_state.hidden_host
        if (
            host is None
            and hidden is not None
            and not isinstance(hidden, asyncio.AbstractEventLoop)
        ):
            # Inside a sync call run inline on a trio run: its coroutines are trio's, and
            # no loop of ours could run them to their end here; they go to that run.
            host = hidden
        if is_async and host is not None:
            return self._queue_after_last(host, func, args, kwargs)
        if host is not None:
            last = self._last.get((id(host), _forker.get()))
            if last is not None and not last.done():  # a coroutine forked before is pending
                return self._queue_awaitable(host, func, _sync_turn(func, args, kwargs))
        fut = new_future(RUNNING, func)
        context = contextvars.copy_context()  # as a forked call: its own copy
        try:
            value = context.run(_call_as_sync_code, func, args, kwargs)
            if inspect.isawaitable(value):  # a coroutine, or a sync call that returned one
                if host is not None:
                    # As in parallel mode, the loop the call works for awaits it: a loop
                    # of our own here would block that one, which the awaitable may need.
                    return self._queue_awaitable(host, func, value, context)
                value = context.run(_run_to_end, value)
        except BaseException as exc:
            fut._set_exception(exc)
            if interrupted_here(fut):
                # Ctrl-C, which lands in the main thread, here running everything: it
                # stops the program, as it would the same calls made without fork.
                fut._mark_retrieved()
                raise
        else:
            fut._set_result(value)
        return fut

    def _queue_after_last(
        self,
        host: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        """A task on ``host`` (this thread's loop, or the one a sync call running inline
        hid) that starts once the coroutine forked before it, by the same code, is done."""
        try:
            coro = func(*args, **kwargs)
        except Exception as exc:  # bad arguments: the waiter gets them, as in parallel mode
            fut = new_future(RUNNING, func)
            fut._set_exception(exc)
            return fut
        return self._queue_awaitable(host, func, coro)

    def _queue_awaitable(
        self,
        host: Any,
        func: Callable[..., Any],
        coro: Any,
        context: contextvars.Context | None = None,
    ) -> Future[Any]:
        """Queue ``coro`` on ``host`` after the coroutine forked before it, in ``context``
        (that of the sync call that made it), else in a copy of this one."""
        key = (id(host), _forker.get())
        fut = new_future(QUEUED, func)
        body: Any = _after(self._last.get(key), coro, next(_serials))
        body.send(None)  # to its first suspension, inside the try that closes coro
        fut._handle = Slot(body)
        spawn(host, fut, body, context or contextvars.copy_context(), queued=True)
        self._last[key] = fut
        return fut


#: The queued coroutine running in this context (0: none), whose forks queue together.
_forker: contextvars.ContextVar[int] = contextvars.ContextVar("forkwait_sequential", default=0)
_serials = itertools.count(1)


@types.coroutine
def _after(previous: Future[Any] | None, coro: Any, serial: int) -> Generator[Any, None, Any]:
    """``coro`` once ``previous`` is done. ``_queue_awaitable`` starts it, so that a turn
    cancelled or dropped before it comes closes ``coro`` (no "never awaited" warning); a
    generator, as a started native coroutine cannot be awaited (by trio's driver)."""
    try:
        yield  # the task's first step resumes here, in the task's own context
        _forker.set(serial)
        if previous is not None:
            from ._wait import collect_all

            yield from collect_all([previous]).__await__()  # finished, whatever its outcome
    except BaseException:
        close_awaitable(coro)
        raise
    if not inspect.isawaitable(coro):
        return coro  # a false coroutine function's value, as fork() gives it
    return (yield from coro.__await__())


async def _sync_turn(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A sync call's turn in the queue: run in the loop's thread, as sync code."""
    value = _call_as_sync_code(func, args, kwargs)
    if inspect.isawaitable(value):  # as in parallel mode: the loop awaits what it returned
        return await value
    return value


def _call_as_sync_code(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``func(*args, **kwargs)`` in this thread as if no event loop ran here, so that the
    call's own waits block as they would in a worker thread."""
    loop = running_loop()
    token = trio_token()
    sniffio = sys.modules.get("sniffio")
    library = getattr(sniffio.thread_local, "name", None) if sniffio is not None else None
    hidden_before = thread_state.hidden_host
    if loop is not None or token is not None:
        thread_state.hidden_host = loop or token
    events._set_running_loop(None)
    if library is not None:
        sniffio.thread_local.name = None  # type: ignore[union-attr]
    try:
        return func(*args, **kwargs)
    finally:
        events._set_running_loop(loop)
        if library is not None:
            sniffio.thread_local.name = library  # type: ignore[union-attr]
        thread_state.hidden_host = hidden_before


def _run_to_end(awaitable: Any) -> Any:
    """Run a coroutine to its end on a loop of its own, in this thread."""
    outer = running_loop()
    events._set_running_loop(None)  # hidden for the inner loop; put back after
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_await(awaitable))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        events._set_running_loop(outer)


async def _await(awaitable: Any) -> Any:
    return await awaitable


@contextmanager
def sequential() -> Generator[Sequential]:
    """Run the calls forked inside one at a time, in fork order, each before ``fork``
    returns (sync calls in the forking thread; from async code, coroutines run as tasks
    one after another): for deterministic debugging, with the values and exceptions of
    parallel mode. ::

        with forkwait.sequential():
            result = main()      # every fork in main() runs at once, in order
    """
    mode = Sequential()
    token = install(mode)
    try:
        yield mode
    finally:
        current_observer.reset(token)
