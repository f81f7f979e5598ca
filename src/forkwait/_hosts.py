"""Which event loop runs a call, and starting a coroutine there from any thread.

A host is an asyncio event loop, or ``None`` for the default runtime (resolved only
when a coroutine actually needs it, so sync-only programs never start it).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from asyncio import events as _events
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._runtime import runtime
from ._state import QUEUED, RUNNING, state_lock

if TYPE_CHECKING:
    from ._future import Future

Host = asyncio.AbstractEventLoop | None

_get_running_loop = _events._get_running_loop

#: Per thread: ``host``, the loop a forked sync function in this thread works for.
thread_state = threading.local()


def thread_host() -> Host:
    """The loop that a thread without a running loop works for (spec rule 2), else ``None``."""
    host: Host = getattr(thread_state, "host", None)
    if host is not None:
        return host
    # An anyio worker thread (to_thread.run_sync) works for the loop that started it.
    # anyio keeps that in a private thread-local; only look if anyio is loaded at all.
    anyio_loop = sys.modules.get("anyio._core._eventloop")
    if anyio_loop is not None:
        token = getattr(getattr(anyio_loop, "threadlocals", None), "current_token", None)
        native = getattr(token, "native_token", None)
        if isinstance(native, asyncio.AbstractEventLoop):
            return native
    return None


def current_host() -> Host:
    """The loop that work forked from this thread goes to (spec rules 1-3)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop
    return thread_host()


async def drive(fut: Future[Any], awaitable: Awaitable[Any]) -> None:
    """Await ``awaitable`` as the body of ``fut``'s task and settle ``fut`` with the outcome."""
    try:
        value = await awaitable
    except GeneratorExit:
        # The task was destroyed unfinished (its loop closed): it will never end.
        fut._set_cancelled()
        raise
    except BaseException as exc:
        # KeyboardInterrupt and SystemExit included: they belong to the waiter, not to
        # the loop that happened to run the call.
        fut._set_exception(exc)
    else:
        fut._set_result(value)
    finally:
        fut._handle = None  # the finished task is no longer needed for cancel()


def spawn(
    host: Host, fut: Future[Any], awaitable: Awaitable[Any], context: contextvars.Context
) -> None:
    """Run ``awaitable`` as ``fut``'s task on ``host``'s loop, from any thread."""
    loop = host if host is not None else runtime.loop()
    if loop is _get_running_loop():
        _start(fut, awaitable, context)
        return
    try:
        loop.call_soon_threadsafe(_start, fut, awaitable, context)
    except RuntimeError as exc:  # that loop is closed
        _close(awaitable)
        fut._fail_unless_done(
            RuntimeError(f"cannot run the forked call: its event loop {loop!r} is closed")
        )
        del exc


def _start(fut: Future[Any], awaitable: Awaitable[Any], context: contextvars.Context) -> None:
    state_lock.acquire()
    try:
        state = fut._state
        if state == QUEUED:
            fut._state = RUNNING
    finally:
        state_lock.release()
    if state > RUNNING:  # cancelled before it started
        _close(awaitable)
        return
    loop = _get_running_loop()
    assert loop is not None
    fut._handle = loop.create_task(drive(fut, awaitable), context=context)


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None and asyncio.iscoroutine(awaitable):
        close()
