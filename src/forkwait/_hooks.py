"""Where fork and wait report what they do: the hook that scopes and tracing listen on.

An observer is installed in a context variable, so it sees every fork and wait made
in that context, including those of nested forks in worker threads and on other loops
(forked calls run in copies of the forking context). Observers stack (a scope inside
a trace sees the same forks as the trace). Outside them nobody listens, and fork and
wait pay one context-variable read.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._future import Future


class Observer:
    """What a scope or a tracer overrides to see forks and waits; each default does nothing."""

    __slots__ = ()

    #: Whether forks made here belong to this observer (a scope), and so not to the
    #: scopes around it: a failure inside an inner scope is the inner scope's to raise.
    claims_forks = False

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        """``fork(func, ...)`` was called; return what to run instead.

        Return ``func``, or a wrapper that notes where and when the call runs (an
        ``async def`` one when ``is_async``). The future's ``_func`` is what this returns.
        """
        return func

    def created(self, fut: Future[Any]) -> None:
        """``fork`` made ``fut`` (after ``forked``), before returning it."""

    def created_inside(self, fut: Future[Any]) -> None:
        """``created``, for a fork that an observer installed inside this one claims."""
        self.created(fut)

    def not_created(self, exc: BaseException) -> None:
        """``fork`` raised ``exc`` after ``forked`` (a call that cannot be offloaded, say):
        no future came of it."""

    def waiting(self, fut: Future[Any]) -> Callable[[], object] | None:
        """Someone starts waiting on ``fut``; the returned function runs when they stop."""
        return None

    def interrupt_with(self, wake: Callable[[], object]) -> bool:
        """A thread blocks in a sync wait here: call ``wake()`` (once) if it must stop
        waiting (its scope was cancelled); ``False`` if it must not even start."""
        return True

    def stop_interrupting(self, wake: Callable[[], object]) -> None:
        """The wait that ``interrupt_with`` registered ``wake`` for is over."""

    def interrupted(self) -> bool:
        """Whether a wait registered with ``interrupt_with`` must end in ``CancelledError``."""
        return False

    #: Its runner runs every call in order, in the forking thread (sequential mode): it
    #: wins over an offload target, inside or around it, as debugging needs.
    runs_in_order = False

    def runner(self) -> Any:
        """What runs forked calls instead of the loops and threads: sequential mode, or an
        offload target (``run(func, wrapped, args, kwargs, is_async) -> Future``)."""
        return None


class Chain(Observer):
    """Two observers as one: ``outer`` (installed first) sees everything ``inner`` does."""

    __slots__ = ("claims_forks", "inner", "outer")

    def __init__(self, outer: Observer, inner: Observer) -> None:
        self.outer = outer
        self.inner = inner
        self.claims_forks = outer.claims_forks or inner.claims_forks

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        return self.inner.forked(self.outer.forked(func, is_async), is_async)

    def created(self, fut: Future[Any]) -> None:
        if self.inner.claims_forks:
            self.outer.created_inside(fut)
        else:
            self.outer.created(fut)
        self.inner.created(fut)

    def created_inside(self, fut: Future[Any]) -> None:
        self.outer.created_inside(fut)
        self.inner.created_inside(fut)

    def not_created(self, exc: BaseException) -> None:
        self.outer.not_created(exc)
        self.inner.not_created(exc)

    def waiting(self, fut: Future[Any]) -> Callable[[], object] | None:
        stops = [stop for stop in (self.outer.waiting(fut), self.inner.waiting(fut)) if stop]
        if not stops:
            return None
        return lambda: [stop() for stop in stops]

    def interrupt_with(self, wake: Callable[[], object]) -> bool:
        return self.outer.interrupt_with(wake) and self.inner.interrupt_with(wake)

    def stop_interrupting(self, wake: Callable[[], object]) -> None:
        self.outer.stop_interrupting(wake)
        self.inner.stop_interrupting(wake)

    def interrupted(self) -> bool:
        return self.outer.interrupted() or self.inner.interrupted()

    def runner(self) -> Any:
        inner, outer = self.inner.runner(), self.outer.runner()
        if outer is not None and outer.runs_in_order:
            return outer  # sequential mode around an offload block
        return inner or outer


current_observer: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "forkwait_observer", default=None
)
get_observer = current_observer.get


def install(observer: Observer) -> contextvars.Token[Observer | None]:
    """Make ``observer`` see the forks and waits of this context, on top of any other."""
    outer = get_observer()
    return current_observer.set(observer if outer is None else Chain(outer, observer))
