"""The C fast paths (``forkwait._speedups``), or ``None`` to run in pure Python.

They are built at install where a C compiler is found. ``FORKWAIT_PURE_PYTHON=1`` in
the environment turns them off: forkwait behaves the same, a little slower.
"""

from __future__ import annotations

import asyncio
import os
from asyncio import events
from collections.abc import Callable
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("FORKWAIT_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:  # not built: no compiler at install, or another interpreter
        return None
    if not _speedups.in_main_interpreter():  # its state is the main interpreter's
        return None
    return _speedups


speedups = _load()

#: ``asyncio.events._get_running_loop``; the C one reads what it reads without its
#: system call (a getpid() per call made inside a loop, on Python 3.11).
running_loop: Callable[[], asyncio.AbstractEventLoop | None] = (
    events._get_running_loop if speedups is None else speedups.running_loop
)
