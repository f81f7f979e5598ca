"""The default runtime: one event loop in a background thread for plain sync code.

Started on first use, uvloop where installed, stopped at interpreter exit, and
forgotten in a child made by ``os.fork`` (its thread does not exist there), so the
child starts its own on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from typing import Any

from ._config import settings, uvloop_installed

logger = logging.getLogger("forkwait")

# How long interpreter exit waits for the runtime's cancelled tasks to wind down.
_EXIT_GRACE_SECONDS = 1.0


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        try:
            import uvloop  # imported here: `import forkwait` must not import uvloop
        except (ImportError, RuntimeError) as exc:
            # First imported during interpreter exit (an atexit hook forking a
            # coroutine), uvloop fails to load: asyncio's loop does the job as well.
            logger.debug("forkwait: uvloop could not be loaded (%r); using asyncio", exc)
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class DefaultRuntime:
    """Owns the background loop and its thread."""

    __slots__ = ("_abandoned", "_atexit", "_lock", "_loop", "_loop_name", "_stranded", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_name: str | None = None
        # Loops inherited through os.fork: kept referenced, never run or closed, so
        # that collecting them does not warn about an unclosed loop in the child.
        self._abandoned: list[Any] = []
        # Of those, the loops whose thread the child has not: their tasks never finish.
        self._stranded: list[Any] = []
        self._atexit = False
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The runtime's loop, started on first use."""
        loop = self._loop
        if loop is not None:
            return loop
        return self._start()

    def current_loop(self) -> asyncio.AbstractEventLoop | None:
        """The runtime's loop if it runs, without starting it."""
        return self._loop

    def running_loop_name(self) -> str | None:
        """``"uvloop"`` or ``"asyncio"`` while the runtime runs or starts, else ``None``."""
        return self._loop_name

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            with settings.lock:  # configure(loop=...) sees the choice from now on
                name = settings.loop or ("uvloop" if uvloop_installed() else "asyncio")
                self._loop_name = name
            started: list[asyncio.AbstractEventLoop] = []
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(name, started, ready),
                name="forkwait-runtime",
                daemon=True,  # never holds up exit; atexit below stops it cleanly
            )
            thread.start()
            ready.wait()
            if not started:
                self._loop_name = None
                raise RuntimeError(f"forkwait could not start its default {name} event loop")
            self._thread = thread
            self._loop = started[0]
            if name == "uvloop" and not type(self._loop).__module__.startswith("uvloop"):
                self._loop_name = "asyncio"  # uvloop could not be loaded (see _new_loop)
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
            return started[0]

    def _run(
        self, name: str, started: list[asyncio.AbstractEventLoop], ready: threading.Event
    ) -> None:
        try:
            loop = _new_loop(name)
        except BaseException:
            ready.set()
            raise
        asyncio.set_event_loop(loop)
        started.append(loop)
        ready.set()
        try:
            loop.run_forever()
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def stop(self) -> None:
        """Stop the loop and join its thread; the next use starts a new one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._loop_name = None
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            return
        thread.join(timeout=_EXIT_GRACE_SECONDS + 5.0)

    def stranded(self, loop: object) -> bool:
        """Whether ``loop`` ran in a thread of the parent that ``os.fork()`` copied this
        process from: none of its tasks will ever run here."""
        return loop in self._stranded

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._loop is not None:
            self._abandoned.append(self._loop)
            if self._thread is not threading.current_thread():  # else it runs on here
                self._stranded.append(self._loop)
        self._loop = self._thread = None
        self._loop_name = None


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still pending when the runtime stops, and say how many there were."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    logger.warning(
        "forkwait: %d forked call(s) still running when the default runtime stopped were cancelled",
        len(tasks),
    )
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=_EXIT_GRACE_SECONDS))


runtime = DefaultRuntime()
