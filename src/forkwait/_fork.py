"""``fork()``: capture the call, choose where it runs, submit it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from . import _hosts
from ._callables import is_async_callable
from ._compiled import running_loop, speedups
from ._config import settings
from ._future import Future, allocate_future, new_future, python_await
from ._hooks import Observer, current_observer, get_observer
from ._hosts import (
    UNRESOLVED,
    After,
    Host,
    Slot,
    await_any,
    current_host,
    drive,
    driver,
    get_call_frame,
    get_ident,
    settle_closed,
    settle_failed,
    spawn,
    take,
    thread_host,
    thread_state,
    trio_token,
)
from ._state import QUEUED, RUNNING
from ._threads import call_in_a_worker, module_pool_for, pool, pool_for
from ._torch import bind as bind_torch_state
from ._torch import is_module_call, is_plain_module

_CO_COROUTINE = inspect.CO_COROUTINE
_FunctionType = types.FunctionType
_CoroutineType: Any = types.CoroutineType  # Any: the test below narrows nothing
_is_awaitable: Callable[[object], bool] = inspect.isawaitable  # a plain bool: no narrowing

P = ParamSpec("P")
T = TypeVar("T")

_copy_context = contextvars.copy_context
_modules = sys.modules


@overload
def fork(func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...
@overload
def fork(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...
def fork(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
    """Start ``func(*args, **kwargs)`` and return its ``Future`` at once.

    A coroutine function runs as a task on the event loop; any other callable runs in a
    worker thread. Every keyword goes to ``func``. The loop is the calling thread's
    running loop, else the one a forked sync function works for, else the default
    runtime (a background loop started on first use). ::

        fut = fork(model, batch)      # runs in a worker thread
        out = await fork(fetch, url)  # runs as a task
    """
    observer = get_observer()
    if observer is not None and not thread_state.observing:
        return _observed_fork(observer, func, args, kwargs)  # in a scope or a trace
    # Plain functions are the common case: test their code flags here, not in a call.
    if (
        func.__code__.co_flags & _CO_COROUTINE
        if type(func) is _FunctionType
        else not is_plain_module(func) and is_async_callable(func)
    ):
        fut = allocate_future(Future)
        fut._state = RUNNING
        fut._waiters = None
        fut._func = func
        try:
            # Without keywords, no copy of the empty kwargs dict is made for the call.
            coro = func(*args, **kwargs) if kwargs else func(*args)
        except Exception as exc:  # bad arguments: the waiter gets them, as for sync calls
            fut._handle = None
            fut._set_exception(exc)
            return fut
        if type(coro) is not _CoroutineType and not _is_awaitable(coro):
            # It only looked like a coroutine function: what it returned is the value,
            # as for a sync callable.
            fut._handle = None
            fut._set_result(coro)
            return fut
        loop = running_loop()
        if loop is not None:
            # The hot path: a task on the caller's own loop, which copies the context;
            # driver(fut, coro), inlined.
            body = drive(fut, coro)
            body.send(None)
            fut._handle = loop.create_task(body)
            return fut
        trio_host = _hosts._trio_host  # trio_token(), inlined once it is loaded
        if trio_host is not None or "trio" in _modules:
            token = trio_token() if trio_host is None else trio_host.current_token()
            if token is not None:  # the trio run of this thread: a system task of it
                _hosts._trio_host.start(token, fut, coro, _copy_context(), False)
                return fut
        fut._state = QUEUED
        fut._handle = Slot(coro)  # see take; cancel() before the task starts closes it
        spawn(thread_host(), fut, coro, _copy_context(), queued=True)
        return fut
    offload = settings.offload
    if offload is not None and not thread_state.observing:  # configure(offload=...)
        return offload.submit(func, args, kwargs)
    fut = allocate_future(Future)
    fut._state = QUEUED
    fut._waiters = None  # made on first use: most sync calls are waited on inline
    fut._func = func
    is_module = False
    if "torch" in _modules:  # the forker's grad mode, inference mode and autocast go along
        is_module = is_module_call(func)
        func = bind_torch_state(func)
    host: Host = running_loop()  # current_host(), inlined:
    if host is None:
        frame = get_call_frame()  # inside a forked call in this thread: what it works for
        host = frame[0]
        if host is UNRESOLVED or frame[3] != get_ident() or "trio" in _modules:
            host = thread_host()
    fut._handle = [(func, args, kwargs, _copy_context(), host)]  # see take
    if is_module:  # as many at once as torch.jit.fork runs
        module_pool_for(host).submit(fut)
    else:  # thread limits are per event loop, as anyio's are; pool_for(host), inlined for None
        (pool if host is None else pool_for(host)).submit(fut)
    return fut


_unobserved_fork = fork  # the Python one: the compiled fork would only hand over to it


def _observed_fork(
    observer: Observer, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Future[Any]:
    """``fork`` under an observer: it may wrap ``func`` (to time it), and sees the future."""
    is_async = is_async_callable(func)
    wrapped = observer.forked(func, is_async)
    runner = observer.runner()
    if runner is None and not is_async:
        runner = settings.offload  # configure(offload=...): the call leaves this process
    try:
        if runner is not None:  # sequential mode, or an offload target
            fut: Future[Any] = runner.run(func, wrapped, args, kwargs, is_async)
        else:
            thread_state.observing = True  # the fork below is this one, not one to observe
            try:
                fut = _unobserved_fork(wrapped, *args, **kwargs)
            finally:
                thread_state.observing = False
    except BaseException as exc:  # a call that cannot be pickled for its target, say
        observer.not_created(exc)
        raise
    observer.created(fut)
    return fut


def _fork_returned(fut: Future[Any], returned: object, loop: asyncio.AbstractEventLoop) -> None:
    """A function with a coroutine's code flags returned ``returned``, not a coroutine."""
    if not _is_awaitable(returned):  # the value, as for a sync callable
        fut._handle = None
        fut._set_result(returned)
        return
    fut._handle = loop.create_task(driver(fut, cast("Awaitable[Any]", returned)))


def chain(
    fut: Future[Any], fn: Callable[[Future[Any]], Any], context: contextvars.Context
) -> Future[Any]:
    """The future behind ``fut.then(fn)``: QUEUED until ``fut`` is done, so cancellable."""
    child = new_future(QUEUED, fn)
    child._handle = After(fn, (fut,))
    if "torch" in _modules:  # as torch's then(): fn runs under the caller's torch state
        fn = bind_torch_state(fn)
    host = current_host()  # the loop an awaitable from fn goes to: the caller's
    observer = get_observer()
    runner = observer.runner() if observer is not None else None
    in_order = runner is not None and runner.runs_in_order  # sequential mode: no workers

    def run_fn(done: Future[Any]) -> None:
        depth = thread_state.then_depth
        if depth >= _MAX_NESTED_THEN:  # a long chain: go on with a fresh stack
            if not in_order:
                call_in_a_worker(run_fn, done)
                return
            # Sequential mode: in this thread still, a turn of its loop (or trio run)
            # later; a sync call run inline there hides that loop (see _sequential).
            here = running_loop() or trio_token() or thread_state.hidden_host
            if isinstance(here, asyncio.AbstractEventLoop):
                here.call_soon(run_fn, done)
                return
            if here is not None:
                here.run_sync_soon(run_fn, done)
                return
        if take(child) is None:
            return  # child.cancel() came first
        child._state = RUNNING
        thread_state.then_depth = depth + 1
        try:
            try:
                value = context.run(fn, done)
            except BaseException as exc:
                child._set_exception(exc)
                return
            if inspect.isawaitable(value):
                spawn(host, child, value, context, queued=False)
            else:
                child._set_result(value)
        finally:
            thread_state.then_depth = depth

    fut.add_done_callback(run_fn)
    return child


#: Settling a then() future runs the callback of the next link of its chain on the same
#: stack: past this many links a worker thread goes on, before Python's recursion limit.
_MAX_NESTED_THEN = 16


if speedups is not None and not TYPE_CHECKING:
    # The hot path in C: a coroutine function forked from a task, nothing observing.
    # Every other call goes on to the fork above, which stays the reference.
    python_fork = fork
    fork = functools.update_wrapper(speedups.Fork(), python_fork)
    speedups.setup(
        future=Future,
        observer_var=current_observer,
        fork=python_fork,
        await_=python_await,
        settle_failed=settle_failed,
        settle_closed=settle_closed,
        fork_returned=_fork_returned,
        await_any=await_any,
    )
