"""Where fork and wait report what they do: the hook that tracing listens on.

An observer is installed in a context variable, so it sees every fork and wait made
in that context, including those of nested forks in worker threads and on other loops
(forked calls run in copies of the forking context). Outside a trace nobody listens,
and fork and wait pay one context-variable read.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._future import Future


class Observer(Protocol):
    """What a tracer implements to see forks and waits."""

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        """``fork(func, ...)`` was called; return what to run instead.

        Return ``func``, or a wrapper that notes where and when the call runs (an
        ``async def`` one when ``is_async``). The future's ``_func`` is what this returns.
        """
        ...

    def waiting(self, fut: Future[Any]) -> Callable[[], object] | None:
        """Someone starts waiting on ``fut``; the returned function runs when they stop."""
        ...


current_observer: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "forkwait_observer", default=None
)
get_observer = current_observer.get
