"""Nested fork/join: fib(18) forking both children, on 4 threads; ms per fib(18).

forkwait runs with ``configure(max_threads=4)``. The anchor is the issue's: a 4-thread
pool that runs unstarted children inline, built the way the standard library allows
(a ``ThreadPoolExecutor`` whose join takes a child back with ``cancel()`` and runs it
when no worker has started it; the issue measured 375 ms for it on this machine). The
floor is the least such a pool needs, written by hand: 4 workers on a queue, a claim
flag per job, and a join that runs a child inline when no worker claimed it, else
blocks on the child's one-shot event.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from queue import SimpleQueue
from time import perf_counter
from typing import Any

from forkwait import configure, fork, wait

from ._harness import Config, Contenders, Scenario

N = 18
FIB_N = 2584
THREADS = 4


class _Job:
    __slots__ = ("args", "claimed", "done", "error", "fn", "value")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.claimed = False
        self.value: Any = None
        self.error: BaseException | None = None
        # A pre-acquired lock is the cheapest one-shot event: released once it is done.
        self.done = allocate_lock()
        self.done.acquire()


class HelpingPool:
    """A fixed pool whose ``join`` runs unclaimed jobs inline instead of waiting."""

    def __init__(self, threads: int) -> None:
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._claim_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"bench-helping-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Job:
        job = _Job(fn, args)
        self._queue.put(job)
        return job

    def join(self, job: _Job) -> Any:
        if self._claim(job):
            self._run(job)
        else:
            job.done.acquire()
            job.done.release()  # so that any other joiner passes too
        if job.error is not None:
            raise job.error
        return job.value

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _claim(self, job: _Job) -> bool:
        with self._claim_lock:
            if job.claimed:
                return False
            job.claimed = True
            return True

    @staticmethod
    def _run(job: _Job) -> None:
        try:
            job.value = job.fn(*job.args)
        except BaseException as exc:
            job.error = exc
        job.done.release()

    def _work(self) -> None:
        get = self._queue.get
        while (job := get()) is not None:
            if self._claim(job):
                self._run(job)
            del job  # an idle worker must not keep the last job alive


def _fib_forkwait(n: int) -> int:
    if n < 2:
        return n
    a = fork(_fib_forkwait, n - 1)
    b = fork(_fib_forkwait, n - 2)
    return wait(a) + wait(b)


def _timed(fib: Callable[[int], int]) -> Callable[[int], float]:
    def measure(repeats: int) -> float:
        start = perf_counter()
        for _ in range(repeats):
            if fib(N) != FIB_N:
                raise AssertionError(f"fib({N}) gave a wrong answer")
        return (perf_counter() - start) / repeats

    return measure


def _join_or_run(child: Future[int], fn: Callable[[int], int], arg: int) -> int:
    """The stdlib's rule 1: a child no worker has started is taken back and run here."""
    if child.cancel():
        return fn(arg)
    return child.result()


@contextmanager
def _fib(_: Config) -> Iterator[Contenders]:
    executor = ThreadPoolExecutor(THREADS, thread_name_prefix="bench-fib")
    pool = HelpingPool(THREADS)
    submit, join = pool.submit, pool.join

    def fib_executor(n: int) -> int:
        if n < 2:
            return n
        a = executor.submit(fib_executor, n - 1)
        b = executor.submit(fib_executor, n - 2)
        return _join_or_run(a, fib_executor, n - 1) + _join_or_run(b, fib_executor, n - 2)

    def fib_helping(n: int) -> int:
        if n < 2:
            return n
        a = submit(fib_helping, n - 1)
        b = submit(fib_helping, n - 2)
        return join(a) + join(b)  # type: ignore[no-any-return]

    configure(max_threads=THREADS)
    try:
        yield Contenders(
            anchors=[("ThreadPoolExecutor(4), join runs unstarted children", _timed(fib_executor))],
            forkwait=_timed(_fib_forkwait),
            floor=("hand-written minimal helping pool", _timed(fib_helping)),
        )
    finally:
        configure(max_threads=40)  # forkwait's default
        pool.close()
        executor.shutdown()


def scenarios() -> list[Scenario]:
    return [Scenario(f"7 fib({N}) fork/wait, {THREADS} threads", "ms", 1.0, _fib)]
