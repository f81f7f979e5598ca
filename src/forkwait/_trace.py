"""``forkwait.trace()``: record every fork and wait, and show what ran when.

The tracer is an observer (see ``_hooks``): inside ``with trace()``, each fork's
callable is wrapped to note where and when it runs, and each wait notes who waited and
for how long, in worker threads and on other loops too (forked calls run in copies of
the forking context, which carries the tracer). Outside a trace nothing is recorded and
fork pays one context-variable read.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._hooks import Observer, current_observer, install
from ._state import CANCELLED, DONE, FAILED

if TYPE_CHECKING:
    from ._future import Future


@dataclass
class Call:
    """One forked call, as the trace saw it. Times are seconds since the trace began."""

    id: int
    name: str
    #: The call that forked this one, or ``None`` for a fork made by the traced code itself.
    parent: int | None
    is_async: bool
    forked_at: float
    forked_in: str  # the forking thread's name
    started_at: float | None = None
    ended_at: float | None = None
    thread: str | None = None  # the thread that ran it
    loop: str | None = None  # the event loop it ran on, for a coroutine
    outcome: str = "pending"  # "value", "exception", "cancelled" or "pending"
    detail: str = ""  # the value's type, or the exception's type and message
    future: Any = field(default=None, repr=False)


@dataclass
class Wait:
    """Somebody waited on a call: from ``started_at`` to ``ended_at``, in ``thread``."""

    call: int
    #: The call that waited, or ``None`` for the traced code itself.
    waiter: int | None
    thread: str
    started_at: float
    ended_at: float | None = None


def _text(exc: BaseException) -> str:
    """``str(exc)``, which a trace must not let raise, as the traceback module does not."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _loop_name() -> str | None:
    import sys

    from ._compiled import running_loop

    loop = running_loop()
    if loop is not None:
        return f"{type(loop).__module__.split('.')[0]} loop {id(loop):#x}"
    if "trio" in sys.modules:
        from ._hosts import trio_token

        token = trio_token()
        if token is not None:
            return f"trio run {id(token):#x}"
    return None


class Trace(Observer):
    """What ``forkwait.trace()`` recorded: the calls, the waits, and views of them.

    ``forkwait.trace()`` makes one::

        with forkwait.trace() as tr:
            wait(fork(load, path))
        print(tr.graph)              # the fork/wait graph, indented
        tr.save_html("trace.html")   # a timeline of threads, bars per call
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.waits: list[Wait] = []
        self._lock = threading.Lock()
        self._origin = time.perf_counter()
        # Calls offloaded to other processes report wall-clock times.
        self._origin_wall = time.time()
        self._by_future: dict[int, Call] = {}
        # By thread: the calls forked whose future fork has not returned yet; a stack,
        # since in sequential mode a fork runs its call (and its forks) before returning.
        self._pending: dict[int, list[Call]] = {}
        self.ended_at: float | None = None
        #: The thread that entered the trace, running the traced code.
        self.thread = threading.current_thread().name
        # The call of this trace running in this context: the parent of the forks it
        # makes. One variable per trace, as traces nest (`python -m forkwait trace` of a
        # script that traces) and each numbers its calls its own way. Set only while a
        # call runs, so no context keeps it after the trace.
        self._current_call: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            "forkwait_traced_call", default=None
        )

    def _now(self) -> float:
        return time.perf_counter() - self._origin

    # -- the observer --------------------------------------------------------------------

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        with self._lock:
            call = Call(
                id=len(self.calls) + 1,
                name=describe(func),
                parent=self._current_call.get(),
                is_async=is_async,
                forked_at=self._now(),
                forked_in=threading.current_thread().name,
            )
            self.calls.append(call)
            self._pending.setdefault(threading.get_ident(), []).append(call)
        return self._wrap(call, func, is_async)

    def created(self, fut: Future[Any]) -> None:
        stack = self._pending.get(threading.get_ident())
        call = stack.pop() if stack else None
        if call is not None:
            call.future = fut
            self._by_future[id(fut)] = call

    def not_created(self, exc: BaseException) -> None:
        stack = self._pending.get(threading.get_ident())
        call = stack.pop() if stack else None
        if call is not None:  # it never ran: the trace shows what fork raised instead
            call.outcome, call.detail = "exception", f"{type(exc).__name__} at fork: {_text(exc)}"

    def waiting(self, fut: Future[Any]) -> Callable[[], object] | None:
        call = self._by_future.get(id(fut))
        if call is None or call.future is not fut:
            return None  # a future forked outside the trace
        record = Wait(
            call=call.id,
            waiter=self._current_call.get(),
            thread=threading.current_thread().name,
            started_at=self._now(),
        )
        with self._lock:
            self.waits.append(record)

        def stopped() -> None:
            record.ended_at = self._now()

        return stopped

    def _wrap(self, call: Call, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        current_call = self._current_call

        def begin() -> contextvars.Token[int | None]:
            call.started_at = self._now()
            call.thread = threading.current_thread().name
            call.loop = _loop_name()
            return current_call.set(call.id)

        def end(token: contextvars.Token[int | None]) -> None:
            call.ended_at = self._now()
            current_call.reset(token)

        if is_async:

            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                token = begin()
                try:
                    return await func(*args, **kwargs)
                finally:
                    end(token)

            traced: Callable[..., Any] = traced_async
        else:

            def traced_sync(*args: Any, **kwargs: Any) -> Any:
                token = begin()
                try:
                    result = func(*args, **kwargs)
                except BaseException:
                    end(token)
                    raise
                if not inspect.isawaitable(result):
                    end(token)
                    return result
                # It returned an awaitable, which its loop awaits as the rest of the call
                # (see run_call): the call ends, and its forks have it as their parent,
                # until that is done.
                current_call.reset(token)
                return traced_rest(result)

            async def traced_rest(awaitable: Awaitable[Any]) -> Any:
                token = current_call.set(call.id)
                try:
                    return await awaitable
                finally:
                    end(token)

            traced = traced_sync
        functools.update_wrapper(traced, func, assigned=("__module__", "__name__", "__doc__"))
        traced.__qualname__ = call.name
        return traced

    # -- after the fact --------------------------------------------------------------------

    def _finish(self) -> None:
        self.ended_at = self._now()
        for call in self.calls:
            fut = call.future
            if fut is None:
                continue
            ran = getattr(fut._handle, "ran", None)  # an offloaded call: see _hosts.Remote
            if ran is not None and call.started_at is None:
                call.started_at = ran.started - self._origin_wall
                call.ended_at = ran.ended - self._origin_wall
                call.thread = ran.where
            state = fut._state
            if state == DONE:
                call.outcome, call.detail = "value", type(fut._value).__name__
            elif state == FAILED:
                exc = fut._value
                call.outcome, call.detail = "exception", f"{type(exc).__name__}: {_text(exc)}"
            elif state == CANCELLED:
                call.outcome, call.detail = "cancelled", ""
            call.future = None  # the trace outlives the futures; it keeps no value alive

    @property
    def graph(self) -> Graph:
        """The fork/wait graph; ``str()`` of it is an indented listing."""
        return Graph(self)

    def to_chrome_trace(self) -> dict[str, Any]:
        """Trace Event Format (Perfetto, chrome://tracing): a track per thread."""
        from ._trace_views import chrome_trace

        return chrome_trace(self)

    def save(self, path: str | Path) -> Path:
        """Write the Trace Event JSON to ``path`` (open it in https://ui.perfetto.dev)."""
        import json

        target = Path(path)
        target.write_text(json.dumps(self.to_chrome_trace(), indent=1))
        return target

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: forks and waits between the calls."""
        from ._trace_views import mermaid

        return mermaid(self)

    def to_html(self) -> str:
        """One self-contained HTML page: a timeline of threads with a bar per call."""
        from ._trace_views import html_timeline

        return html_timeline(self)

    def save_html(self, path: str | Path) -> Path:
        """Write ``to_html()`` to ``path``: open it in any browser, no network needed."""
        target = Path(path)
        target.write_text(self.to_html(), encoding="utf-8")
        return target


class Graph:
    """The fork/wait graph of a trace: calls nested under the call that forked them."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace

    def __str__(self) -> str:
        from ._trace_views import graph_text

        return graph_text(self._trace)

    def __repr__(self) -> str:
        return f"<forkwait trace graph: {len(self._trace.calls)} forks>"


@contextmanager
def trace() -> Generator[Trace]:
    """Record every fork and wait made inside, including nested forks in worker threads
    and on other loops. ::

        with forkwait.trace() as tr:
            main()
        print(tr.graph)
        tr.save("trace.json")        # Perfetto; or tr.save_html("trace.html")
    """
    tracer = Trace()
    token = install(tracer)
    try:
        yield tracer
    finally:
        current_observer.reset(token)
        tracer._finish()
