"""``wait``, ``wait_all`` and ``collect_all``: block in sync code, an awaitable in async code."""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from typing import Any, Generic, TypeVar

from ._compiled import running_loop
from ._future import Future, new_future, observed_wait
from ._hooks import get_observer
from ._hosts import Members, take, trio_token
from ._state import DONE, FAILED, QUEUED, RUNNING
from ._threads import block, interrupted_here, run_inline, run_queued, seconds

T = TypeVar("T")

_modules = sys.modules


class _Waiting(Generic[T]):
    """What ``wait`` returns in async code: awaits once, warns if never awaited.

    It is a coroutine too (``send``, ``throw``, ``close``), so that asyncio runs it as a
    task of its own (``ensure_future``, ``wait_for``): a task cancelled before its first
    step has awaited it, as it would have a coroutine, and no warning follows.
    """

    __slots__ = ("_awaited", "_source", "_steps", "_what", "_where")

    def __init__(self, source: Awaitable[T], what: str, where: _Where) -> None:
        self._source = source
        self._what = what
        self._where = where  # the caller's file and line, for the warning
        self._awaited = False
        self._steps: Generator[Any, None, T] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        if self._awaited:
            raise RuntimeError(f"the awaitable from {self._what} can be awaited only once")
        self._awaited = True
        return self._source.__await__()

    def _stepping(self) -> Generator[Any, None, T]:
        steps = self._steps
        if steps is None:
            steps = self._steps = self.__await__()
        return steps

    def send(self, value: Any) -> Any:
        return self._stepping().send(value)

    def throw(self, *exc: Any) -> Any:
        return self._stepping().throw(*exc)

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()
        elif not self._awaited:  # closed before it started, as a coroutine may be
            self._awaited = True
            _close(self._source)

    def __del__(self) -> None:
        if not self._awaited:
            _close(self._source)  # ours says it better than "coroutine ... never awaited"
            filename, lineno, module, registry = self._where
            warnings.warn_explicit(
                f"{self._what} was called in async code but never awaited; "
                f"write `value = await {self._what}`",
                RuntimeWarning,
                filename,
                lineno,
                module,
                registry,
            )


def _close(source: object) -> None:
    if isinstance(source, Coroutine):
        source.close()


#: Where a warning points: file, line, module and the module's warnings registry.
_Where = tuple[str, int, str, dict[Any, Any]]


def _caller() -> _Where:
    """Where the code that called the caller is, for a warning about it, as
    ``warnings.warn`` would find it (its filters by module, once per line)."""
    frame = sys._getframe(2)
    found: dict[str, Any] = frame.f_globals
    registry: dict[Any, Any] = found.setdefault("__warningregistry__", {})
    return frame.f_code.co_filename, frame.f_lineno, found.get("__name__", "<unknown>"), registry


def _not_a_future(future: object, api: str) -> TypeError:
    hint = ""
    if hasattr(future, "__await__"):
        hint = "; to wait for a plain awaitable, just `await` it"
    return TypeError(
        f"{api}() expects a forkwait.Future from fork(), got "
        f"{type(future).__qualname__} object {future!r}{hint}"
    )


def wait(future: Future[T], timeout: float | None = None) -> T:
    """The value of ``future``: blocks in sync code; in async code, ``await wait(fut)``.

    Raises the call's own exception, ``TimeoutError`` after ``timeout`` seconds (the
    call keeps running), or ``forkwait.CancelledError`` if it was cancelled. One
    signature cannot be typed for both uses: type checkers see the sync one, so typed
    async code writes ``await fut`` (the same wait without a timeout). ::

        value = wait(fork(compute, 3))           # sync code
        value = await wait(fork(compute, 3))     # async code
    """
    if not isinstance(future, Future):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise _not_a_future(future, "wait")
    if timeout is not None:
        timeout = seconds(timeout, "wait")
    if running_loop() is None and not ("trio" in _modules and trio_token() is not None):
        if get_observer() is not None:
            return observed_wait(future, timeout, "wait")
        # future.result(timeout), inlined: the sync hot path.
        state = future._state
        if state == QUEUED and timeout is None and type(future._handle) is list:
            run_inline(future)  # rule 1, as block() would, one call sooner
            state = future._state
        if state < DONE:
            block(future, timeout)  # no loop runs here: checked above
            state = future._state
        if state == DONE:
            value: T = future._value  # typed by assignment: a cast() would be a call
            return value
        try:
            return future._outcome()
        finally:
            del future  # this frame is in the traceback: see Future._outcome
    source = future if timeout is None else _with_timeout(future, timeout)
    # In async code the value arrives through the awaitable; typed as T for sync
    # callers, whose use is the common one (async code has `await fut`).
    return _Waiting(source, "forkwait.wait(fut)", _caller())  # type: ignore[return-value]


async def _with_timeout(future: Future[T], limit: float) -> T:
    import anyio  # on the timeout path only; anyio's fail_after works on any backend

    try:
        with anyio.fail_after(limit):
            return await future
    except TimeoutError as exc:
        if _raised_by(future, exc):
            raise  # the call's own
        if not future.done():
            raise TimeoutError(
                f"{future!r} did not finish within {limit} seconds; it keeps running"
            ) from None
    # It finished as the wait timed out: not a timeout (as for a sync wait).
    return future._outcome()


def _raised_by(future: Future[Any], exc: BaseException) -> bool:
    """Whether ``exc`` is ``future``'s own failure, not the deadline's."""
    return future._state == FAILED and future._value is exc


def wait_all(futures: Iterable[Future[T]], timeout: float | None = None) -> list[T]:
    """The values of ``futures``, in their order (``torch.futures.wait_all``).

    Blocks in sync code; in async code, ``await wait_all(futs)``. ``timeout`` bounds
    the whole wait. ::

        sizes = wait_all([fork(len, s) for s in words])
    """
    futs = _futures_of(futures)
    if timeout is not None:
        timeout = seconds(timeout, "wait_all")
    if running_loop() is None and trio_token() is None:
        if timeout is None:
            if get_observer() is None:  # a scope's or trace's waits go through result()
                ran = run_queued(futs)
                if ran is not None and interrupted_here(ran):
                    ran.result()  # Ctrl-C: now, not once the futures before it are done
            return [fut.result() for fut in futs]
        deadline = time.monotonic() + timeout
        values: list[T] = []
        for fut in futs:
            try:
                values.append(fut.result(max(deadline - time.monotonic(), 0.0)))
            except TimeoutError:
                if fut.done():
                    raise  # the call's own
                raise _gave_up(fut, timeout) from None
        return values

    async def gather() -> list[T]:
        if timeout is None:
            return [await fut for fut in futs]
        import anyio

        values: list[T] = []
        try:
            with anyio.fail_after(timeout):
                for fut in futs:
                    values.append(await fut)
                return values
        except TimeoutError as exc:
            if len(values) < len(futs) and _raised_by(futs[len(values)], exc):
                raise  # the call's own
        # The deadline came before the rest were done, or as the one awaited finished
        # (not a timeout, as for a sync wait): those done give their outcomes.
        for fut in futs[len(values) :]:
            if not fut.done():
                raise _gave_up(fut, timeout)
            values.append(fut._outcome())
        return values

    return _Waiting(gather(), "forkwait.wait_all(futures)", _caller())  # type: ignore[return-value]


def _futures_of(futures: Iterable[Future[T]]) -> list[Future[T]]:
    """``futures`` as a list, or a ``TypeError`` for anything but an iterable of futures."""
    if isinstance(futures, Future):
        raise TypeError(
            "wait_all() takes an iterable of futures, got one future; write "
            "wait_all([fut]), or wait(fut)"
        )
    try:
        each = iter(futures)
    except TypeError:
        raise TypeError(
            f"wait_all() takes an iterable of forkwait futures, got "
            f"{type(futures).__qualname__} object {futures!r}"
        ) from None
    futs = list(each)  # a generator's own errors (a bad fork in it) come through as they are
    for fut in futs:
        if not isinstance(fut, Future):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise _not_a_future(fut, "wait_all")
    return futs


def _gave_up(fut: Future[Any], timeout: float) -> TimeoutError:
    return TimeoutError(
        f"wait_all() gave up after {timeout} seconds: {fut!r} had not finished "
        f"(the calls keep running)"
    )


def collect_all(futures: Iterable[Future[T]]) -> Future[list[Future[T]]]:
    """A future that finishes once all of ``futures`` have, with them as its value.

    As ``torch.futures.collect_all``: failed and cancelled futures are in the list like
    the others, never raised, so the caller inspects each. Cancelling the collected
    future leaves the others running. ::

        done = collect_all([fork(load, p) for p in paths]).wait()
        loaded = [f.value() for f in done if not f.cancelled() and f.exception() is None]
    """
    futs = list(futures)
    for fut in futs:
        if not isinstance(fut, Future):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise _not_a_future(fut, "collect_all")
    collected = new_future(QUEUED, collect_all)
    collected._handle = Members(futs)  # cancel() takes it, as for then()'s future
    total = len(futs)
    finished = itertools.count(1)  # next() on it is atomic: one callback sees `total`

    def one_done(_: Future[T]) -> None:
        if next(finished) == total and take(collected) is not None:
            collected._state = RUNNING
            collected._set_result(futs)

    if not futs:
        take(collected)
        collected._set_result(futs)
    for fut in futs:
        fut.add_done_callback(one_done)
    return collected
