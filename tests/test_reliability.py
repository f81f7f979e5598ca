"""Load, threads at once, faults, cancellation storms and hostile input: nothing lost,
nothing hung, every future done exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkwait
from forkwait import Future, fork, wait
from tests.conftest import run_script

pytestmark = pytest.mark.timeout(120)


# -- load ------------------------------------------------------------------------------


def test_twenty_thousand_pending_coroutine_forks_complete_within_the_memory_target() -> None:
    """Memory per pending fork stays within the core target (1.5x a pending task);
    `make soak` does the same with 100,000."""

    async def main() -> tuple[float, float]:
        gate = asyncio.Event()

        async def blocked(i: int) -> int:
            await gate.wait()
            return i

        count = 20_000
        per_fork = await _pending_bytes(lambda: [fork(blocked, i) for i in range(count)], count)
        futs = _held.pop()
        gate.set()
        values = [await fut for fut in futs]
        assert values == list(range(count))
        gate.clear()
        per_task = await _pending_bytes(
            lambda: [asyncio.ensure_future(blocked(i)) for i in range(count)], count
        )
        tasks = _held.pop()
        gate.set()
        await asyncio.gather(*tasks)
        return per_fork, per_task

    per_fork, per_task = asyncio.run(main())
    assert per_fork <= 1.5 * per_task, (per_fork, per_task)


_held: list[Any] = []


async def _pending_bytes(start: Any, count: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _held.append(start())
        for _ in range(3):  # every one starts and blocks on the gate
            await asyncio.sleep(0)
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def test_fifty_thousand_cycles_return_to_the_baseline() -> None:
    """The soak run in CI size: sync and async callers and callees, then the end state."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--cycles", "50000", "--pending", "0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "end state: back to baseline", result.stdout


# -- many threads at once ----------------------------------------------------------------


def test_sixteen_threads_forking_waiting_cancelling_and_adding_callbacks() -> None:
    """Shared futures under 16 threads for two seconds: every future ends once, every
    callback runs once, and no exception is lost."""
    shared: list[Future[int]] = []
    shared_lock = threading.Lock()
    callbacks: Counter[int] = Counter()
    added: Counter[int] = Counter()
    errors: list[BaseException] = []
    stop = time.monotonic() + 2.0

    def work(i: int) -> int:
        if i % 7 == 0:
            raise ValueError(i)
        return i

    counting = threading.Condition()

    def on_done(fut: Future[int]) -> None:
        with counting:  # two callbacks of one future may run at once, in two threads
            callbacks[id(fut)] += 1
            counting.notify_all()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                action = rng.random()
                if action < 0.4 or not shared:
                    fut = fork(work, rng.randrange(1000))
                    with shared_lock:
                        shared.append(fut)
                        added[id(fut)] += 1
                    fut.add_done_callback(on_done)
                    continue
                with shared_lock:
                    fut = rng.choice(shared)
                if action < 0.7:
                    try:
                        wait(fut, timeout=10)
                    except (ValueError, forkwait.CancelledError):
                        pass
                elif action < 0.85:
                    fut.cancel()
                else:
                    fut.add_done_callback(on_done)
                    with shared_lock:
                        added[id(fut)] += 1
        except BaseException as exc:  # anything else is a bug: keep it for the assert
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    forkwait.wait_all([forkwait.collect_all(shared)], timeout=30)
    assert all(fut.done() for fut in shared)
    # A callback added to a future runs once per adding; none twice, none missed.
    # The last callbacks run in worker threads just after the wait ends; the counter is
    # read under the lock that its writers hold.
    with counting:
        counting.wait_for(lambda: callbacks == added, timeout=10)
        assert callbacks == added
    for fut in shared:
        if not fut.cancelled() and fut.exception() is not None:
            assert isinstance(fut.exception(), ValueError)


# -- faults ------------------------------------------------------------------------------


def test_faults_in_callbacks_then_and_nested_forks_reach_someone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_: object) -> None:
        raise RuntimeError("in a callback")

    ran: list[str] = []
    fut = fork(abs, -1)
    fut.add_done_callback(boom)
    fut.add_done_callback(lambda _: ran.append("next callback"))
    assert wait(fut) == 1
    chained = fut.then(lambda f: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        wait(chained)

    def inner() -> None:
        raise KeyError("nested")

    def outer() -> None:
        wait(fork(inner))

    with pytest.raises(KeyError, match="nested"):
        wait(fork(outer))
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["next callback"]  # the failing callback stopped no other
    assert "in a callback" in caplog.text  # and it was logged, not lost


def test_sigint_interrupts_a_main_thread_blocked_in_wait() -> None:
    code = """
        import signal, threading, time
        from forkwait import fork, wait

        # Ctrl-C as in a terminal, even when the runner was started with SIGINT
        # ignored (a background job of a script, nohup): the child inherits that.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        started = threading.Event()

        def forever():
            started.set()
            time.sleep(60)

        fut = fork(forever)
        started.wait()
        print("blocking", flush=True)
        try:
            wait(fut)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-c", _dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "blocking\n"
        time.sleep(0.1)  # let it reach the blocking acquire: a signal before is fine too
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
        process.communicate()  # reap it and close its pipes, or a later test gets the warnings
    assert out == "interrupted\n", err
    assert process.returncode == 0, err


def test_exit_with_pending_sync_and_async_forks_reports_what_was_abandoned() -> None:
    result = run_script(
        """
        import asyncio, threading, time
        import forkwait
        from forkwait import fork

        forkwait.configure(max_threads=1)
        started = threading.Event()

        def blocking():
            started.set()
            time.sleep(60)

        async def sleepy():
            await asyncio.sleep(60)

        fork(blocking)
        started.wait()
        fork(blocking)  # queued behind the first: never starts
        fork(sleepy)
        print("leaving")
        """,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "leaving\n"
    assert "1 forked call(s) still running when the default runtime stopped" in result.stderr
    assert (
        "1 sync call(s) were still running in worker threads and 1 had not started "
        "(blocking); they were abandoned" in result.stderr
    )


def test_a_multiprocessing_fork_child_can_fork_and_wait() -> None:
    result = run_script(
        """
        import multiprocessing, os
        from forkwait import fork, wait

        async def twice(x):
            return 2 * x

        def child(queue):
            queue.put((wait(fork(abs, -3)), wait(fork(twice, 4))))

        if __name__ == "__main__":
            print(wait(fork(twice, 1)))  # the parent's runtime and a worker exist
            context = multiprocessing.get_context("fork")
            queue = context.Queue()
            process = context.Process(target=child, args=(queue,))
            process.start()
            print(queue.get(timeout=20))
            process.join(20)
            print(process.exitcode)
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2", "(3, 8)", "0"]


# -- cancellation storms -----------------------------------------------------------------


def test_ten_thousand_cancelled_futures_with_sync_and_async_waiters() -> None:
    """Each waiter gets the value or CancelledError, never both and never a hang."""
    count = 10_000
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    async def slow(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))
        return i

    futs = [fork(slow, i) if i % 2 else fork(time.sleep, 0) for i in range(count)]

    def sync_waiter(chunk: list[Future[Any]]) -> None:
        for fut in chunk:
            try:
                wait(fut, timeout=30)
                kind = "value"
            except forkwait.CancelledError:
                kind = "cancelled"
            with lock:
                outcomes[kind] += 1

    async def async_waiters() -> Counter[str]:
        seen: Counter[str] = Counter()

        async def one(fut: Future[Any]) -> None:
            try:
                await fut
                seen["value"] += 1
            except forkwait.CancelledError:
                seen["cancelled"] += 1

        await asyncio.wait_for(asyncio.gather(*(one(f) for f in futs)), 60)
        return seen

    threads = [threading.Thread(target=sync_waiter, args=(futs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for fut in futs[::3]:
        fut.cancel()
    async_seen = asyncio.run(async_waiters())
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert sum(outcomes.values()) == count
    assert sum(async_seen.values()) == count
    cancelled = sum(fut.cancelled() for fut in futs)
    assert outcomes["cancelled"] == async_seen["cancelled"] == cancelled


# -- hostile input -----------------------------------------------------------------------


def test_a_callable_whose_call_raises_gives_the_waiter_its_exception() -> None:
    class Raises:
        def __call__(self) -> None:
            raise LookupError("from __call__")

    with pytest.raises(LookupError, match="from __call__"):
        wait(fork(Raises()))


def test_an_object_lying_about_being_a_coroutine_function_gives_its_value() -> None:
    class Liar:
        _is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]

        def __call__(self) -> int:
            return 42

    assert wait(fork(Liar())) == 42


def test_a_result_whose_del_raises_is_reported_and_loses_nothing() -> None:
    unraisable: list[Any] = []
    deleted = threading.Event()

    class Hostile:
        def __del__(self) -> None:
            deleted.set()
            raise RuntimeError("from __del__")

    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        value = wait(fork(Hostile))
        assert isinstance(value, Hostile)
        del value
        gc.collect()
        # The worker that ran the call may hold the future a moment longer.
        assert deleted.wait(10)
        assert wait(fork(abs, -5)) == 5  # the next call is fine
    finally:
        sys.unraisablehook = hook
    assert [str(u.exc_value) for u in unraisable] == ["from __del__"]


def test_a_huge_argument_list() -> None:
    args = tuple(range(200_000))
    assert wait(fork(max, *args)) == 199_999
    kwargs = {f"k{i}": i for i in range(50_000)}
    assert wait(fork(lambda **kw: len(kw), **kwargs)) == 50_000


def test_recursion_deeper_than_the_thread_limit_in_sync_code(max_threads: Any) -> None:
    max_threads(1)

    def depth(n: int) -> int:
        return 0 if n == 0 else 1 + wait(fork(depth, n - 1))

    assert wait(fork(depth, 300)) == 300


def test_a_call_that_waits_on_its_own_future_is_told_so() -> None:
    box: list[Future[Any]] = []
    ready = threading.Event()

    def waits_on_itself() -> Any:
        ready.wait(10)
        return wait(box[0])

    box.append(fork(waits_on_itself))
    ready.set()
    with pytest.raises(RuntimeError, match="waits on its own future"):
        wait(box[0], timeout=10)


def test_a_task_that_awaits_its_own_future_is_told_so() -> None:
    async def main() -> None:
        box: list[Future[Any]] = []

        async def awaits_itself() -> Any:
            await asyncio.sleep(0)
            return await box[0]

        box.append(fork(awaits_itself))
        with pytest.raises(RuntimeError, match="awaits its own future"):
            await asyncio.wait_for(box[0], 10)

    asyncio.run(main())


def _future_of_a_closed_loop() -> Future[None]:
    """A fork whose task a loop, closed since, never finished."""

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def start() -> Future[None]:
        return fork(forever)

    loop = asyncio.new_event_loop()
    fut = loop.run_until_complete(start())
    loop.close()
    return fut


def test_awaiting_a_task_of_a_closed_loop_from_another_loop_says_so() -> None:
    fut = _future_of_a_closed_loop()

    async def from_another_loop() -> None:
        with pytest.raises(RuntimeError, match="its task was closed before the task ended"):
            await asyncio.wait_for(fut, 10)  # nobody waited on it before this

    asyncio.run(from_another_loop())


def test_wait_on_a_future_whose_loop_was_closed_says_so() -> None:
    fut = _future_of_a_closed_loop()
    with pytest.raises(RuntimeError, match="the event loop running its task was closed"):
        wait(fut, timeout=10)

    async def from_another_loop() -> None:
        with pytest.raises(RuntimeError, match="the event loop running its task was closed"):
            await fut

    asyncio.run(from_another_loop())


def test_waits_on_what_follows_a_future_whose_loop_was_closed_say_so() -> None:
    """A then() callback and collect_all start once their futures are done: a wait for
    them looks whether those can still finish, as a wait for the future itself does
    (they blocked for good)."""
    fut = _future_of_a_closed_loop()
    after = fut.then(lambda done: done.exception())
    collected = forkwait.collect_all([fut])
    assert isinstance(wait(after, timeout=10), RuntimeError)
    [member] = wait(collected, timeout=10)
    with pytest.raises(RuntimeError, match="the event loop running its task was closed"):
        wait(member)


def test_a_long_then_chain_on_a_future_whose_loop_was_closed_ends() -> None:
    """Looked at link by link, not by recursion: a chain longer than the stack is deep."""
    fut = _future_of_a_closed_loop()
    last = fut
    for _ in range(3000):
        last = last.then(lambda done: done.exception() or done.value())
    assert isinstance(wait(last, timeout=30), RuntimeError)


def test_awaits_of_what_follows_a_future_whose_loop_was_closed_say_so() -> None:
    fut = _future_of_a_closed_loop()

    async def from_another_loop() -> None:
        collected = await asyncio.wait_for(forkwait.collect_all([fut]), 10)
        assert isinstance(collected[0].exception(), RuntimeError)
        after = await asyncio.wait_for(fut.then(lambda done: done.exception()), 10)
        assert isinstance(after, RuntimeError)

    asyncio.run(from_another_loop())


def test_a_wait_for_collect_all_that_began_before_the_loop_closed_says_so() -> None:
    """Also while the waiter runs each member's wait itself (the members of a sync wait
    for collect_all)."""
    fut, close = _fork_on_a_loop_of_its_own()
    collected = forkwait.collect_all([fut])
    closer = threading.Thread(target=close)
    closer.start()
    [member] = wait(collected, timeout=30)
    closer.join(10)
    assert isinstance(member.exception(), RuntimeError)


def test_ctrl_c_in_a_sync_scopes_body_leaves_without_waiting_for_running_forks() -> None:
    """As Ctrl-C while the scope's exit waits does: the forks are cancelled, and the
    running sync call (which cannot be stopped) is not waited for."""
    release, started = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)

    def body() -> Future[None]:
        with forkwait.scope():
            fut = fork(slow)
            assert started.wait(10)
            raise KeyboardInterrupt(fut)  # as Ctrl-C landing in the body

    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            body()
        fut = caught.value.args[0]
        assert not fut.done()
    finally:
        release.set()
    assert wait(fut) is None


def test_a_sync_scope_left_by_generator_exit_still_waits_for_its_forks() -> None:
    """Only Ctrl-C leaves without waiting: a generator closed in the scope's body
    leaves it once its forks are done, as any other exception does."""
    closing = threading.Event()
    forks: list[Future[bool]] = []

    def body() -> Iterator[None]:
        with forkwait.scope():
            forks.append(fork(closing.wait, 10))
            yield

    gen = body()
    next(gen)
    closing.set()
    with pytest.raises(BaseExceptionGroup):
        gen.close()
    assert forks[0].done()


class OneWorkerHeld:
    """With ``max_threads(1)``: a fork that holds the one worker until ``release``, so
    that the next forks stay queued, for a waiter here to run."""

    def __init__(self) -> None:
        self.release, started = threading.Event(), threading.Event()

        def hold() -> None:
            started.set()
            self.release.wait(10)

        self.first = fork(hold)
        assert started.wait(10)


def interrupted() -> None:
    raise KeyboardInterrupt  # as Ctrl-C landing in the call that this thread runs


def test_ctrl_c_in_a_call_wait_all_runs_inline_stops_the_wait_at_once(max_threads: Any) -> None:
    """Not once the futures before it in the list are done: it is the waiter's own."""
    max_threads(1)
    held = OneWorkerHeld()
    first, release = held.first, held.release
    try:
        second = fork(interrupted)  # queued: the one worker is busy, so it runs here
        with pytest.raises(KeyboardInterrupt):
            forkwait.wait_all([first, second])
        assert not first.done()
    finally:
        release.set()
    assert wait(first) is None


@pytest.mark.parametrize("observed", [False, True])
def test_ctrl_c_in_a_then_parent_its_waiter_runs_stops_the_wait(
    max_threads: Any, observed: bool
) -> None:
    """A wait for a then() future runs the queued parent here: a Ctrl-C in it is this
    thread's own and stops the wait, as it did when a worker ran the parent and this
    thread got the signal; not only to the callback, which may ignore it."""
    max_threads(1)
    held = OneWorkerHeld()
    first, release = held.first, held.release
    try:
        with forkwait.trace() if observed else contextlib.nullcontext():
            child = fork(interrupted).then(lambda _: "the callback ignores it")
            with pytest.raises(KeyboardInterrupt):
                wait(child)
        assert not first.done()
    finally:
        release.set()
    assert wait(first) is None


def test_a_keyboard_interrupt_a_call_raises_is_its_outcome_where_outcomes_are_not_raised(
    max_threads: Any,
) -> None:
    """exception() and collect_all() hand it back, as any failure, even when this thread
    ran the call: only a wait for outcomes raises it early."""
    max_threads(1)
    held = OneWorkerHeld()
    first, release = held.first, held.release
    try:
        assert isinstance(fork(interrupted).exception(), KeyboardInterrupt)  # run here
        both = forkwait.collect_all([first, fork(interrupted)])
        release.set()
        held, failed = both.wait()
        assert held.done()
        assert isinstance(failed.exception(), KeyboardInterrupt)
    finally:
        release.set()


def test_a_worker_started_beyond_the_limit_after_the_pool_closed_leaves_at_once() -> None:
    """As the watchdog's start may race close() at exit: with nothing to do, it leaves
    rather than park where nobody would wake it (and be counted as busy at exit)."""
    from forkwait._threads import WorkerPool

    pool = WorkerPool(2)
    pool.idle_seconds = 60
    workers: list[threading.Thread] = []
    work = pool._work

    def recorded(starved: bool = False) -> None:
        workers.append(threading.current_thread())
        work(starved)

    pool._work = recorded  # type: ignore[method-assign]
    pool.close()
    assert pool._grow(starved=True)
    workers[0].join(10)
    assert not workers[0].is_alive()


def _fork_on_a_loop_of_its_own() -> tuple[Future[None], Any]:
    """A fork pending on an app's loop in another thread, and a function that closes
    that loop, the fork still unfinished."""

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def start() -> Future[None]:
        return fork(forever)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    fut = asyncio.run_coroutine_threadsafe(start(), loop).result(10)

    def close() -> None:
        deadline = time.monotonic() + 10
        while not fut._waiters and time.monotonic() < deadline:
            time.sleep(0.001)  # until the wait has begun: nothing signals that
        assert fut._waiters
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return fut, close


def test_a_wait_that_began_before_its_loop_closed_says_so() -> None:
    fut, close = _fork_on_a_loop_of_its_own()
    closer = threading.Thread(target=close)
    closer.start()
    with pytest.raises(RuntimeError, match="the event loop running its task was closed"):
        wait(fut, timeout=30)  # it blocked for good before
    closer.join(10)


def test_an_await_from_another_loop_that_began_before_the_loop_closed_says_so() -> None:
    fut, close = _fork_on_a_loop_of_its_own()

    async def from_another_loop() -> None:
        with pytest.raises(RuntimeError, match="the event loop running its task was closed"):
            await asyncio.wait_for(fut, 30)

    closer = threading.Thread(target=close)
    closer.start()
    asyncio.run(from_another_loop())
    closer.join(10)


def test_a_trio_await_that_began_before_the_loop_closed_says_so() -> None:
    import trio

    fut, close = _fork_on_a_loop_of_its_own()

    async def from_trio() -> None:
        with trio.fail_after(30), pytest.raises(RuntimeError, match="its task was closed"):
            await fut

    closer = threading.Thread(target=close)
    closer.start()
    trio.run(from_trio)
    closer.join(10)


def test_trio_awaits_of_an_app_loops_futures_share_one_watcher_thread() -> None:
    import trio
    import trio.testing

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 1

    async def start() -> list[Future[int]]:
        return [fork(held) for _ in range(50)]

    futs = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    watchers: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for fut in futs:
                nursery.start_soon(wait_for, fut)
            await trio.testing.wait_all_tasks_blocked()
            watchers.append(sum(t.name == "forkwait-loop-watch" for t in threading.enumerate()))
            loop.call_soon_threadsafe(release.set)

    async def wait_for(fut: Future[int]) -> None:
        assert await fut == 1

    try:
        trio.run(main)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert watchers == [1]


@pytest.mark.asyncio
async def test_a_task_factory_that_refuses_a_fork_fails_its_future() -> None:
    """A coroutine a worker thread forks onto this loop: the factory's error reaches the
    waiter, where it was only logged and the future never settled."""

    async def double(x: int) -> int:
        return 2 * x

    def forks_onto_the_loop() -> int:
        return wait(fork(double, 1), timeout=10)

    def refusing(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        raise TypeError("refused by the task factory")

    loop = asyncio.get_running_loop()
    loop.set_task_factory(refusing)
    try:
        with pytest.raises(TypeError, match="refused by the task factory"):
            await fork(forks_onto_the_loop)
    finally:
        loop.set_task_factory(None)


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


# -- randomized: programs with failures and cancels ----------------------------------------


@dataclass(frozen=True)
class Program:
    """A node of a random program: it forks its children, cancels the flagged ones at
    once, waits for all in a random order, and adds up what came back."""

    is_async: bool
    fails: bool
    value: int
    cancel: bool  # the parent cancels this one right after forking it
    children: tuple[Program, ...]


_program_leaves = st.builds(
    Program, st.booleans(), st.booleans(), st.integers(0, 9), st.booleans(), st.just(())
)
programs = st.recursive(
    _program_leaves,
    lambda kids: st.builds(
        Program,
        st.booleans(),
        st.booleans(),
        st.integers(0, 9),
        st.booleans(),
        st.lists(kids, max_size=3).map(tuple),
    ),
    max_leaves=12,
)


class Planned(Exception):
    pass


def _untouched(node: Program) -> bool:
    """No cancel anywhere below: its outcome is the one sequential mode gives."""
    return all(not c.cancel and _untouched(c) for c in node.children)


def _sequential_outcome(node: Program) -> tuple[str, Any]:
    def run(n: Program) -> int:
        total = n.value + sum(run(c) for c in n.children)
        if n.fails:
            raise Planned(n.value)
        return total

    with forkwait.sequential():
        fut = fork(run, node)
    return _outcome_of(fut)


def _outcome_of(fut: Future[Any]) -> tuple[str, Any]:
    try:
        return "value", wait(fut, timeout=30)
    except Planned as exc:
        return "error", exc.args
    except forkwait.CancelledError:
        return "cancelled", None


def _combine(node: Program, outcomes: list[tuple[str, Any]]) -> int:
    errors = [detail for kind, detail in outcomes if kind == "error"]
    if errors:
        raise Planned(*errors[0])
    if node.fails:
        raise Planned(node.value)
    return node.value + sum(detail for kind, detail in outcomes if kind == "value")


_seen: list[tuple[Program, tuple[str, Any]]] = []


def _order(node: Program, count: int) -> list[int]:
    order = list(range(count))
    random.Random(hash(node) & 0xFFFF).shuffle(order)
    return order


def run_program(node: Program) -> int:
    futs = [fork(run_async_program if c.is_async else run_program, c) for c in node.children]
    for child, fut in zip(node.children, futs, strict=True):
        if child.cancel:
            fut.cancel()
    outcomes: list[tuple[str, Any]] = [("value", 0)] * len(futs)
    for i in _order(node, len(futs)):
        outcomes[i] = _outcome_of(futs[i])
        _seen.append((node.children[i], outcomes[i]))
    return _combine(node, outcomes)


async def run_async_program(node: Program) -> int:
    futs = [fork(run_async_program if c.is_async else run_program, c) for c in node.children]
    for child, fut in zip(node.children, futs, strict=True):
        if child.cancel:
            fut.cancel()
    outcomes: list[tuple[str, Any]] = [("value", 0)] * len(futs)
    for i in _order(node, len(futs)):
        try:
            outcomes[i] = ("value", await asyncio.wait_for(asyncio.shield(_awaited(futs[i])), 30))
        except Planned as exc:
            outcomes[i] = ("error", exc.args)
        except forkwait.CancelledError:
            outcomes[i] = ("cancelled", None)
        _seen.append((node.children[i], outcomes[i]))
    return _combine(node, outcomes)


async def _awaited(fut: Future[Any]) -> Any:
    return await fut


@pytest.mark.timeout(180)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, limit=st.integers(1, 8))
def test_random_programs_with_failures_and_cancels_never_hang_and_agree_where_untouched(
    program: Program, limit: int
) -> None:
    """Every fork ends once (value, failure or cancelled), within the hard timeout; a
    subtree no cancel touched gives what sequential mode gives; a cancelled one ends
    cancelled, or with that same outcome if the cancel came too late."""
    forkwait.configure(max_threads=limit)
    _seen.clear()
    try:
        root = run_async_program if program.is_async else run_program
        fut = fork(root, program)
        outcome = _outcome_of(fut)
    finally:
        forkwait.configure(max_threads=40)
    if _untouched(program):
        assert outcome == _sequential_outcome(program)
    for node, seen in _seen:
        if _untouched(node):
            want = _sequential_outcome(node)
            assert seen == want or (node.cancel and seen == ("cancelled", None)), (node, seen)
        if not node.cancel:
            assert seen[0] != "cancelled", (node, seen)  # only its own cancel ends it so


def test_a_false_coroutine_function_gives_its_value_in_sequential_mode_too() -> None:
    class Liar:
        _is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]

        def __call__(self) -> int:
            return 7

    async def main() -> int:
        with forkwait.sequential():
            fut = fork(Liar())  # from async code: queued behind earlier coroutines
        return await fut

    assert asyncio.run(main()) == 7
