"""``forkwait.offload(target)``: where forked sync calls run, threads or beyond.

A target is an observer (see ``_hooks``) whose runner takes the forked sync calls;
coroutine functions still run as tasks on the loop. ``"threads"`` is the default;
``"processes"`` is a process pool (``_processes``); a ``distributed.Client`` or a
scheduler address is a Dask cluster (``_dask``). ``configure(offload=...)`` sets the
target for code outside any ``offload()``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._hooks import Observer, current_observer, install
from ._hosts import thread_state

if TYPE_CHECKING:
    from ._future import Future


class Target(Observer):
    """Where forked sync calls go: a runner for ``fork`` (see ``_observed_fork``)."""

    __slots__ = ()

    #: How ``configure()`` and error messages name it.
    name = "threads"

    def runner(self) -> Target:
        return self

    def run(
        self,
        func: Callable[..., Any],
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> Future[Any]:
        """Start the call (``wrapped`` is ``func`` as the observers wrapped it, for a
        call that runs in this process); coroutine functions go to the loop."""
        if is_async:
            return in_this_process(wrapped, args, kwargs)
        return self.submit(func, args, kwargs)

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Start a sync call where this target runs them."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<forkwait offload target {self.name}>"


class Threads(Target):
    """The default: sync calls run in this process's worker threads."""

    __slots__ = ()

    def run(
        self,
        func: Callable[..., Any],
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> Future[Any]:
        return in_this_process(wrapped, args, kwargs)


THREADS = Threads()


def in_this_process(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Future[Any]:
    """``fork(func, ...)`` on this process's loops and threads, whatever the default."""
    from ._fork import fork

    thread_state.observing = True  # the fork below is this one, not a new one
    try:
        return fork(func, *args, **kwargs)
    finally:
        thread_state.observing = False


def target_for(target: object, api: str) -> Target:
    """The target that ``target`` names; a clear error for anything else."""
    if isinstance(target, Target):
        return target
    if target == "threads":
        return THREADS
    if target == "processes":
        from ._processes import processes

        return processes
    if isinstance(target, str) and target.startswith("dask "):
        target = target[len("dask ") :]  # as configure() names the target it has
    if isinstance(target, str) and "://" in target:
        from ._dask import cluster_at

        return cluster_at(target, api)
    distributed = sys.modules.get("distributed")
    if distributed is not None and (
        isinstance(target, distributed.Client)  # an app's subclass too
        or type(target).__module__.split(".")[0] == "distributed"  # a LocalCluster: a hint
    ):
        from ._dask import cluster_of

        return cluster_of(target, api)
    raise ValueError(
        f"{api} takes 'threads', 'processes', a distributed.Client, or a Dask scheduler "
        f"address such as 'tcp://127.0.0.1:8786'; got {target!r}"
    )


@contextmanager
def offload(target: object) -> Generator[None]:
    """Send the sync calls forked inside to ``target``: ``"threads"`` (the default),
    ``"processes"``, a ``distributed.Client`` or a scheduler address. Coroutine
    functions still run on the loop, and the futures work as always. ::

        with forkwait.offload("processes"):
            futs = [fork(crunch, chunk) for chunk in chunks]   # pure-Python CPU work
        totals = forkwait.wait_all(futs)
    """
    token = install(target_for(target, "forkwait.offload()"))
    try:
        yield
    finally:
        current_observer.reset(token)
