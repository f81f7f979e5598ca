"""The observer hook that tracing builds on: it sees every fork and wait in its context."""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from forkwait import Future, fork, wait
from forkwait._hooks import Observer, current_observer

pytestmark = pytest.mark.timeout(20)


class Recorder(Observer):
    """A minimal tracer: notes forks, where each call runs, and waits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def note(self, what: str, name: str) -> None:
        with self._lock:
            self.events.append((what, name, threading.current_thread().name))

    def forked(self, func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        name = func.__name__
        self.note("fork", name)
        if is_async:

            @functools.wraps(func)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                self.note("start", name)
                try:
                    return await func(*args, **kwargs)
                finally:
                    self.note("end", name)

            return timed_async

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.note("start", name)
            try:
                return func(*args, **kwargs)
            finally:
                self.note("end", name)

        return timed

    def waiting(self, fut: Future[Any]) -> Callable[[], object]:
        name = fut._func.__name__  # type: ignore[attr-defined]
        self.note("wait", name)
        return lambda: self.note("waited", name)

    def names(self, what: str) -> list[str]:
        return [name for kind, name, _ in self.events if kind == what]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    token = current_observer.set(rec)
    yield rec
    current_observer.reset(token)


async def leaf_async() -> int:
    await anyio.lowlevel.checkpoint()
    return 1


def leaf_sync() -> int:
    return 2


def parent() -> int:
    return wait(fork(leaf_async)) + wait(fork(leaf_sync))


def test_every_fork_and_wait_is_seen_including_nested_ones(recorder: Recorder) -> None:
    """Forks and waits made inside forked calls, in workers and on the loop, reach it."""
    assert wait(fork(parent)) == 3
    assert sorted(recorder.names("fork")) == ["leaf_async", "leaf_sync", "parent"]
    assert sorted(recorder.names("start")) == ["leaf_async", "leaf_sync", "parent"]
    assert sorted(recorder.names("end")) == ["leaf_async", "leaf_sync", "parent"]
    assert sorted(recorder.names("wait")) == ["leaf_async", "leaf_sync", "parent"]
    assert sorted(recorder.names("waited")) == ["leaf_async", "leaf_sync", "parent"]
    threads = {name: thread for kind, name, thread in recorder.events if kind == "start"}
    assert threads["leaf_async"] == "forkwait-runtime"
    # A sync call runs in a worker, or inline in the thread that waits for it first.
    assert threads["parent"] != "forkwait-runtime"


def test_the_wrapped_call_keeps_its_name_and_value(recorder: Recorder) -> None:
    """What the observer returns runs in place of func; the future still reads as func."""
    fut = fork(leaf_sync)
    assert fut.result() == 2
    assert "fork(leaf_sync)" in repr(fut)


@pytest.mark.anyio
async def test_await_is_a_wait(recorder: Recorder) -> None:
    """`await fut` reports the start and the end of the wait."""
    assert await fork(leaf_async) == 1
    assert recorder.names("wait") == ["leaf_async"]
    assert recorder.names("waited") == ["leaf_async"]


def test_the_observer_sees_only_its_own_context() -> None:
    """Forks outside the context that installed the observer are not reported."""
    rec = Recorder()
    context = contextvars.copy_context()
    context.run(current_observer.set, rec)
    assert wait(fork(parent)) == 3  # outside
    assert rec.events == []
    assert context.run(lambda: wait(fork(leaf_sync))) == 2  # inside
    assert rec.names("fork") == ["leaf_sync"]
