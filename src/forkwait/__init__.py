"""forkwait: ``torch.jit.fork``'s fork/wait model for plain Python, really in parallel.

from forkwait import fork, wait

fut = fork(model, batch)    # starts at once, runs in a worker thread
out = wait(fut)             # sync code; in async code: out = await fut
"""

from __future__ import annotations

from ._config import Configuration, configure
from ._fork import fork
from ._future import CancelledError, Future, InvalidStateError
from ._scope import Scope, scope
from ._trace import Trace, trace
from ._wait import collect_all, wait, wait_all

__all__ = [
    "CancelledError",
    "Configuration",
    "Future",
    "InvalidStateError",
    "Scope",
    "Trace",
    "collect_all",
    "configure",
    "fork",
    "scope",
    "trace",
    "wait",
    "wait_all",
]

__version__ = "0.1.0"


def _fixup_module_metadata() -> None:
    # Show the public names as forkwait.X, not forkwait._future.X (as trio does).
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("forkwait._"):
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
