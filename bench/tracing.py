"""Row 14: what tracing costs outside a trace, against the fork + wait it rides on.

Outside ``forkwait.trace()`` (and scopes), fork and wait each ask the context whether
anybody listens: one context-variable read. This row times that read against a sync
``wait(fork(noop))``; the ratio is the share of the operation that tracing costs when
unused. Target: at most 5%.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from forkwait import fork, wait
from forkwait._hooks import get_observer

from ._harness import Config, Contenders, Scenario
from ._work import noop


def _fork_wait(n: int) -> float:
    start = perf_counter()
    for _ in range(n):
        wait(fork(noop))
    return (perf_counter() - start) / n


def _hooks_unused(n: int) -> float:
    # What fork and wait do when nobody traces: read the observer, find None (twice).
    start = perf_counter()
    for _ in range(n):
        get_observer()
        get_observer()
    return (perf_counter() - start) / n


@contextmanager
def _build(_: Config) -> Iterator[Contenders]:
    yield Contenders(anchors=[("wait(fork(noop)), sync", _fork_wait)], forkwait=_hooks_unused)


def scenarios() -> list[Scenario]:
    return [Scenario("14 tracing hooks outside a trace, share of fork+wait", "us", 0.05, _build)]
