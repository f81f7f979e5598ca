"""After many fork/wait cycles, threads, tasks and futures return to their baseline."""

from __future__ import annotations

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.timeout(120)


def test_ten_thousand_cycles_leave_nothing_behind() -> None:
    """15,000 cycles (sync and async callers, sync and async callees): threads, pending
    tasks and Future objects return to baseline, in a fresh process."""
    result = run_script(
        """
        import asyncio, gc, sys, threading, time, weakref
        import forkwait
        from forkwait import Future, fork, wait
        from forkwait._threads import pool
        from forkwait._runtime import runtime

        pool.idle_seconds = 0.2  # let idle workers retire quickly for the check

        async def anoop(x):
            return x

        def live_futures():
            gc.collect()
            return sum(1 for o in gc.get_objects() if type(o) is Future)

        def settle(baseline):
            deadline = time.monotonic() + 10
            while threading.active_count() > baseline and time.monotonic() < deadline:
                time.sleep(0.05)
            return threading.active_count()

        def runtime_tasks():
            async def count():
                return len(asyncio.all_tasks()) - 1  # not this one
            return asyncio.run_coroutine_threadsafe(count(), runtime.loop()).result()

        wait(fork(anoop, 0)); wait(fork(abs, 0))  # start the runtime and one worker
        baseline = settle(2)  # main thread + runtime thread
        sample = []
        n = 2500
        for i in range(n):
            fut = fork(abs, -i)
            assert wait(fut) == i
            fut2 = fork(anoop, i)
            assert wait(fut2) == i
            if i % 100 == 0:
                sample.append(weakref.ref(fut))

        async def from_async():
            for i in range(n):
                assert await fork(abs, -i) == i
                assert await fork(anoop, i) == i
            return len(asyncio.all_tasks())

        print("tasks left in async caller:", asyncio.run(from_async()) - 1)
        import uvloop
        print("tasks left on uvloop caller:", uvloop.run(from_async()) - 1)
        print("tasks left on runtime:", runtime_tasks())
        del fut, fut2
        print("live futures:", live_futures())
        from forkwait._future import _lists
        print("waiter lists left:", len(_lists))
        print("sampled futures alive:", sum(ref() is not None for ref in sample))
        print("threads above baseline:", settle(baseline) - baseline)
        """,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "tasks left in async caller: 0",
        "tasks left on uvloop caller: 0",
        "tasks left on runtime: 0",
        "live futures: 0",
        "waiter lists left: 0",
        "sampled futures alive: 0",
        "threads above baseline: 0",
    ], result.stdout + result.stderr


def test_a_failed_forks_frames_go_with_it_without_a_garbage_collection() -> None:
    """The exception's traceback holds the call's frames (and their locals: a big tensor,
    say); forkwait's frames that caught it must not also hold the future, or the three
    keep one another alive in a cycle until the cyclic collector runs."""
    result = run_script(
        """
        import gc, threading, weakref
        from forkwait import fork

        class Big:
            pass

        refs, started = [], threading.Event()

        def fail():
            big = Big()
            refs.append(weakref.ref(big))
            started.set()
            raise ValueError("boom")

        async def fail_async():
            fail()

        def freed(func):
            refs.clear()
            started.clear()
            fut = fork(func)
            assert started.wait(10)  # running in a worker (or on the runtime's loop)
            assert isinstance(fut.exception(timeout=10), ValueError)
            del fut
            return refs[0]() is None

        gc.disable()  # what reference counting alone frees
        print(freed(fail), freed(fail_async))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
