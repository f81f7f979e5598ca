"""forkwait: ``torch.jit.fork``'s fork/wait model for plain Python, really in parallel.

from forkwait import fork, wait

fut = fork(model, batch)    # starts at once, runs in a worker thread
out = wait(fut)             # sync code; in async code: out = await fut
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import Configuration, configure
from ._fork import fork
from ._future import CancelledError, Future, InvalidStateError
from ._wait import collect_all, wait, wait_all

if TYPE_CHECKING:
    from ._offload import offload
    from ._scope import Scope, scope
    from ._sequential import sequential
    from ._trace import Trace, trace

# Loaded on first use (PEP 562): `import forkwait` stays as light as anyio's own import.
_LAZY = {
    "offload": "._offload",
    "Scope": "._scope",
    "scope": "._scope",
    "sequential": "._sequential",
    "Trace": "._trace",
    "trace": "._trace",
}

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
    "offload",
    "scope",
    "sequential",
    "trace",
    "wait",
    "wait_all",
]

__version__ = "0.1.0"


def _claim(obj: Any) -> Any:
    # Show the public names as forkwait.X, not forkwait._future.X (as trio does).
    if getattr(obj, "__module__", "").startswith("forkwait._"):
        obj.__module__ = __name__
    return obj


def _claim_eager_names() -> None:
    for name in __all__:
        if name not in _LAZY:
            _claim(globals()[name])


_claim_eager_names()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forkwait' has no attribute {name!r}")
    value = _claim(getattr(importlib.import_module(module, __name__), name))
    globals()[name] = value
    return value
