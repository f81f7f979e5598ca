"""Sorting ``func`` into coroutine functions and sync callables, and the errors that teach."""

from __future__ import annotations

import functools
import inspect
import types
from asyncio import coroutines as _asyncio_coroutines
from collections.abc import Awaitable
from typing import Any

_CO_COROUTINE = inspect.CO_COROUTINE
_FunctionType = types.FunctionType
_MethodType = types.MethodType
_partial = functools.partial
# asyncio.iscoroutinefunction honours this marker (AsyncMock and some compiled
# functions set it); inspect.iscoroutinefunction does not on 3.11.
_IS_COROUTINE_MARKER: object = getattr(_asyncio_coroutines, "_is_coroutine", object())


def is_async_callable(func: Any, api: str = "fork") -> bool:
    """Whether calling ``func`` gives a coroutine to run as a task; ``TypeError`` if not callable.

    Unwraps bound methods and ``functools.partial`` and looks at an object's
    ``__call__``, which ``inspect.iscoroutinefunction`` alone misses.
    """
    while True:
        if type(func) is _FunctionType:
            return bool(func.__code__.co_flags & _CO_COROUTINE)
        if type(func) is _MethodType:
            func = func.__func__
            continue
        if isinstance(func, _partial):
            func = func.func
            continue
        if getattr(func, "_is_coroutine", None) is _IS_COROUTINE_MARKER:
            return True
        if not callable(func):
            raise not_callable_error(func, api)
        if isinstance(func, type):
            return False  # calling a class constructs an instance
        call = type(func).__call__
        if type(call) is _FunctionType:
            return bool(call.__code__.co_flags & _CO_COROUTINE)
        return False  # builtins, C callables, slot wrappers


def not_callable_error(obj: object, api: str) -> TypeError:
    """The ``TypeError`` for ``fork(obj)`` when ``obj`` is not callable; closes a coroutine."""
    if inspect.iscoroutine(obj):
        name = getattr(obj, "__qualname__", "f")
        # Closing it keeps Python from also warning "coroutine ... was never awaited".
        obj.close()
        return TypeError(
            f"{api}() expects a callable, got coroutine object {obj!r}. "
            f"Pass the function and its arguments, not the result of calling it:\n"
            f"  {api}({name}(x))   # wrong\n"
            f"  {api}({name}, x)   # right"
        )
    kind, shown = type(obj).__qualname__, repr(obj)
    if isinstance(obj, Awaitable):
        return TypeError(
            f"{api}() expects a callable, got awaitable {kind} "
            f"object {shown}; it is already running or ready to be awaited: await it "
            f"directly, or fork the function that makes it: {api}(func, *args)"
        )
    return TypeError(
        f"{api}() expects a callable, got {kind} object {shown}. "
        f"Pass the function and its arguments separately: {api}(func, *args, **kwargs)"
    )


def describe(func: Any) -> str:
    """A short human name for ``func``: its qualified name, or its type's."""
    while isinstance(func, _partial):
        func = func.func
    name = getattr(func, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(func).__qualname__
