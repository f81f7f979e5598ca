"""What crosses to another process: the call, pickled at fork; its outcome, pickled back.

The call is pickled in the forking thread, so a callable or an argument that cannot
travel fails at ``fork`` with a ``TypeError`` that names it, not later in a worker.
``pickle`` comes first (fast); ``cloudpickle`` (what Dask uses) takes what it refuses,
such as lambdas and functions defined inside other functions or in ``__main__``.
The worker pickles the outcome itself, the same way, so a value or an exception that
cannot come back is reported as such, naming its type.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._callables import describe

if TYPE_CHECKING:
    from ._future import Future
    from ._hosts import Remote

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _dumps(obj: object, imports_main: bool = False) -> bytes:
    """``obj`` pickled; ``imports_main``: the receiver imports the main script (a worker
    process of ours), so what pickle sends by name from ``__main__`` it finds."""
    try:
        packed: bytes | None = pickle.dumps(obj, _PROTOCOL)
    except Exception:
        packed = None
    # pickle names functions and classes by module; one from __main__ (a script, a
    # notebook, `python -c`) may not exist under that name in the worker, so those go
    # by value, as cloudpickle sends them.
    if packed is None or b"__main__" in packed:
        import cloudpickle  # type: ignore[import-untyped]  # only when pickle will not do

        try:
            return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
        except Exception:
            if packed is None or not imports_main or not _main_has_a_file():
                raise
        # By value it does not go (a script's function that uses a lock among the
        # script's globals): by name then, as a process pool sends it. The worker
        # imports the script, which has it unless it is defined under the main guard.
    return packed


def _main_has_a_file() -> bool:
    """Whether workers can import ``__main__`` (a script's file): not under ``python -c``,
    a REPL or a notebook."""
    return getattr(sys.modules.get("__main__"), "__file__", None) is not None


def pack_call(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    where: str,
    imports_main: bool = False,
) -> bytes:
    """``(func, args, kwargs)`` as bytes, or a ``TypeError`` naming the part that cannot go;
    ``imports_main`` as for ``_dumps``."""
    try:
        return _dumps((func, args, kwargs), imports_main)
    except Exception as exc:
        culprit = _unpicklable_part(func, args, kwargs)
        raise TypeError(
            f"fork({describe(func)}) cannot send {culprit} to {where}: it cannot be pickled "
            f"({type(exc).__name__}: {exc}). Pass values that pickle (plain data, arrays, "
            f"tensors, module-level functions), make the object picklable (__reduce__), "
            f"or fork this call outside forkwait.offload(...) so that it runs in a thread."
        ) from exc


def _unpicklable_part(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts: list[tuple[str, object]] = [(f"the callable {describe(func)}", func)]
    parts += [(f"argument {i}", arg) for i, arg in enumerate(args)]
    parts += [(f"keyword argument {name!r}", arg) for name, arg in kwargs.items()]
    for label, part in parts:
        try:
            _dumps(part)
        except Exception:
            return f"{label} ({type(part).__qualname__} object)"
    return "the call"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text.

    It is the ``__cause__`` of the exception that came back, so a printed traceback
    shows where the call failed in the worker.
    """

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


class Ran:
    """Where and when an offloaded call ran: its process or worker, and wall-clock times."""

    __slots__ = ("ended", "started", "where")

    def __init__(self, where: str, started: float, ended: float) -> None:
        self.where = where
        self.started = started
        self.ended = ended


def run_packed(packed: bytes, where: str | None = None) -> bytes:
    """In the worker: run the packed call; its outcome, with where and when it ran, packed."""
    started = time.time()
    func: Any = None  # until the call is unpacked
    try:
        func, args, kwargs = pickle.loads(packed)
        value = func(*args, **kwargs)
        if inspect.isawaitable(value):  # as in a thread: the result is never a coroutine
            value = asyncio.run(_await(value))
        outcome: tuple[bool, Any] = (True, value)
    except BaseException as exc:  # KeyboardInterrupt and SystemExit go to the waiter too
        outcome = (False, exc)
    ran = (where or f"process {os.getpid()}", started, time.time())
    ok, value = outcome
    pickled = False
    try:
        packed = _dumps((*outcome, ran, _traceback_text(outcome)))
        pickled = True
        if not ok:
            # An exception pickles as its class and its args; one whose __init__ takes
            # other arguments pickles but does not unpickle, and would come back as an
            # error without its message or traceback. Failures are rare: check them.
            pickle.loads(packed)
        return packed
    except Exception as exc:
        name = "unpacking the call" if func is None else describe(func)
        what = f"the value returned by {name}" if ok else f"the exception raised by {name}"
        how = "pickles but cannot be unpickled" if pickled else "cannot be pickled"
        fix = (
            "return (or raise) something that pickles"
            if ok or not pickled
            else "pass all of the exception's __init__ arguments on to "
            "super().__init__(...), or give it a __reduce__"
        )
        refused = TypeError(
            f"{what} ({type(value).__qualname__} object: {_shorten(value)}) {how} to come "
            f"back from {ran[0]} ({type(exc).__name__}: {exc}); {fix}"
        )
        return _dumps((False, refused, ran, _traceback_text(outcome)))


def _traceback_text(outcome: tuple[bool, Any]) -> str | None:
    ok, value = outcome
    if ok:
        return None
    return "".join(traceback.format_exception(value))


def _shorten(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 80 else text[:77] + "..."


async def _await(awaitable: Any) -> Any:
    return await awaitable


def settle_with_outcome(fut: Future[Any], handle: Remote, packed: bytes, came_from: str) -> None:
    """Finish ``fut`` with the outcome a worker sent, noting on ``handle`` where and when
    it ran; an outcome that cannot be unpickled here fails it, saying so."""
    try:
        ok, value, handle.ran = unpack_outcome(packed)
    except Exception as exc:
        refused = TypeError(
            f"the outcome of fork({describe(fut._func)}) came back from {came_from} but "
            f"cannot be unpickled here ({type(exc).__name__}: {exc})"
        )
        refused.__cause__ = exc
        fut._set_exception(refused)
        return
    if ok:
        fut._set_result(value)
    else:
        fut._set_exception(value)


def unpack_outcome(packed: bytes) -> tuple[bool, Any, Ran]:
    """The outcome ``run_packed`` sent: ``(True, value, ran)`` or ``(False, exc, ran)``."""
    ok, value, (where, started, ended), text = pickle.loads(packed)
    if not ok and text is not None and value.__cause__ is None:
        value.__cause__ = RemoteTraceback(text)
    return ok, value, Ran(where, started, ended)
