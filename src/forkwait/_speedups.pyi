"""The hot path of fork(coroutine function) and await, in C (see _speedups.c)."""

from asyncio import AbstractEventLoop
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from typing import Any

class FutureCore:
    """The fields and the await of forkwait.Future, in C."""

    def __await__(self) -> Generator[Any, None, Any]: ...

class Driver(Coroutine[Any, Any, None]):
    """Driver(fut, awaitable): a task's coroutine that settles fut."""

    def __init__(self, fut: FutureCore, awaitable: Awaitable[Any], /) -> None: ...
    def send(self, value: Any, /) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ..., /) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Generator[Any]: ...

class Fork:
    """forkwait.fork, with its hot path in C."""

    def __call__(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

def running_loop() -> AbstractEventLoop | None:
    """asyncio.events._get_running_loop(), without its system call."""

def in_main_interpreter() -> bool:
    """Whether this is the main interpreter, the only one the fast paths serve."""

def setup(
    *,
    future: type[FutureCore],
    observer_var: ContextVar[Any],
    fork: Callable[..., Any],
    await_: Callable[[Any], Generator[Any, None, Any]],
    settle_failed: Callable[[Any, Any, BaseException], None],
    settle_closed: Callable[[Any, Any], None],
    fork_returned: Callable[[Any, object, Any], None],
    await_any: Callable[[Awaitable[Any]], Coroutine[Any, Any, Any]],
) -> None:
    """Wire the fast paths to the Python code they hand the rest to."""
