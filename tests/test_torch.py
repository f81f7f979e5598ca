"""torch.nn.Modules in worker threads, under the forking thread's torch state."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import forkwait
from forkwait import fork, wait
from forkwait._threads import module_pool_for
from tests.conftest import run_script

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def in_worker(func: Callable[[], T]) -> T:
    """Fork ``func`` and make sure a worker thread runs it, not this thread inline.

    Call it inside the torch state under test: ``fork`` captures the state.
    """
    started = threading.Event()

    def probe() -> tuple[T, int]:
        started.set()
        return func(), threading.get_ident()

    fut = fork(probe)
    assert started.wait(10), "no worker started the call"  # so wait() cannot run it inline
    value, ident = wait(fut)
    assert ident != threading.get_ident()
    return value


def grad_state() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


class Recorder(nn.Module):
    """A linear layer that notes which thread ran it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.threads: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.threads.append(threading.get_ident())
        return self.linear(x)

    def scaled(self, x: Tensor, *, factor: float) -> Tensor:
        self.threads.append(threading.get_ident())
        return self.linear(x) * factor


# -- modules run in worker threads ---------------------------------------------------


def test_forked_module_runs_in_a_worker_thread_with_the_same_value() -> None:
    model = Recorder()
    x = torch.randn(2, 4)
    started = threading.Event()
    release = threading.Event()

    def hold(*_: object) -> None:
        # Keep the module in its worker until this thread has seen it start elsewhere.
        started.set()
        release.wait(10)

    model.register_forward_pre_hook(hold)
    fut = fork(model, x)
    assert started.wait(10)
    release.set()
    out = wait(fut)
    torch.testing.assert_close(out, model.linear(x))
    assert len(model.threads) == 1
    assert model.threads[0] != threading.get_ident()


def test_forked_module_method_takes_keywords() -> None:
    model = Recorder()
    x = torch.randn(2, 4)
    out = in_worker(lambda: wait(fork(model.scaled, x, factor=2.0)))
    torch.testing.assert_close(out, model.linear(x) * 2.0)


def test_as_many_modules_run_at_once_as_torch_has_interop_threads() -> None:
    """Forked modules are all inside forward at the same time (threads, not a queue), as
    many as torch.jit.fork runs at once."""
    fork_modules_that_meet(torch.get_num_interop_threads())


def fork_modules_that_meet(count: int) -> None:
    """Fork ``count`` modules that each wait at one barrier until all of them are there."""
    barrier = threading.Barrier(count, timeout=20)

    class Meeting(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            barrier.wait()  # raises BrokenBarrierError unless all of them run at once
            return x + 1

    futs = [fork(Meeting(), torch.zeros(1)) for _ in range(count)]
    assert [float(v) for v in forkwait.wait_all(futs)] == [1.0] * count


class Held(nn.Module):
    """A module that notes when it enters and leaves forward, and stays until released."""

    def __init__(self, name: str, log: list[str], entered: threading.Semaphore) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.entered = entered
        self.release = threading.Event()

    def forward(self, x: Tensor) -> Tensor:
        self.log.append(f"enter {self.name}")
        self.entered.release()
        assert self.release.wait(10)
        self.log.append(f"leave {self.name}")
        return x + 1


@pytest.fixture
def unwatched() -> Iterator[None]:
    """Plain sync code's module pool without the watchdog, which would start a thread
    for a module that waits long enough: here what must wait, waits."""
    modules = module_pool_for(None)
    modules.watched = False
    yield
    modules.watched = True


def fork_one_more_than(count: int, observe: Callable[[], Any]) -> None:
    """Hold ``count`` forked modules in forward; one more forked waits for one to leave."""
    log: list[str] = []
    entered = threading.Semaphore(0)
    held = [Held(f"held {i}", log, entered) for i in range(count)]
    extra = Held("extra", log, entered)
    extra.release.set()
    with observe():
        futs = [fork(module, torch.zeros(1)) for module in held]
        for _ in held:
            assert entered.acquire(timeout=10)
        futs.append(fork(extra, torch.zeros(1)))
        # What must not happen cannot be waited for: give it a moment it would take.
        assert not entered.acquire(timeout=0.2), log
        held[0].release.set()
        assert float(wait(futs[0])) == 1.0  # not the extra's: a waiter may run it inline
        for module in held:
            module.release.set()
        assert [float(v) for v in forkwait.wait_all(futs)] == [1.0] * (count + 1)
    assert log.index("enter extra") > log.index("leave held 0"), log


@pytest.mark.usefixtures("unwatched")
@pytest.mark.parametrize("observe", ["plainly", "in a scope", "in a trace"])
def test_a_module_more_than_torch_interop_threads_waits_for_a_thread(observe: str) -> None:
    """As torch.jit.fork's tasks: more modules at once than cores would only share them."""
    observers = {
        "plainly": contextlib.nullcontext,
        "in a scope": forkwait.scope,
        "in a trace": forkwait.trace,
    }
    fork_one_more_than(torch.get_num_interop_threads(), observers[observe])


@pytest.mark.usefixtures("unwatched")
@pytest.mark.parametrize("how", ["wait", "result", "wait_all"])
def test_a_sync_waiter_leaves_a_module_to_the_pool_while_it_runs_all_it_may(how: str) -> None:
    """Rather than run it inline as a third call on two cores, which all three would share
    and each finish later (torch.jit.fork's caller does not run its tasks either)."""
    count = torch.get_num_interop_threads()
    log: list[str] = []
    entered = threading.Semaphore(0)
    held = [Held(f"held {i}", log, entered) for i in range(count)]
    futs = [fork(module, torch.zeros(1)) for module in held]
    for _ in held:
        assert entered.acquire(timeout=10)
    extra = fork(WhereRun())
    waits: dict[str, Callable[[], list[str]]] = {
        "wait": lambda: [wait(extra)],
        "result": lambda: [extra.result()],
        "wait_all": lambda: forkwait.wait_all([extra]),
    }
    ran_in: list[list[str]] = []
    waiter = threading.Thread(target=lambda: ran_in.append(waits[how]()), name="the waiter")
    try:
        waiter.start()
        # What must not happen cannot be waited for: give it a moment it would take.
        waiter.join(0.2)
        assert waiter.is_alive(), f"the waiter ran the call in {ran_in}"
        held[0].release.set()
        waiter.join(10)
        assert not waiter.is_alive()
        assert ran_in[0][0].startswith("forkwait-worker-"), ran_in
    finally:
        for module in held:
            module.release.set()
    assert [float(v) for v in forkwait.wait_all(futs)] == [1.0] * count


def test_a_waiter_runs_its_module_itself_when_the_pool_has_room() -> None:
    """Woken workers that will find nothing to take do not count as running: a lone
    fork and wait runs inline, in microseconds, rather than waiting for a thread."""
    for _ in range(3):
        wait(fork(WhereRun()))  # the pool's threads exist, and idle
    ran_in = [wait(fork(WhereRun())) for _ in range(50)]
    here = threading.current_thread().name
    assert ran_in.count(here) >= 45, ran_in


class Counted(nn.Module):
    """Computes for about a millisecond, noting how many run at once."""

    def __init__(self, inside: list[int], lock: threading.Lock) -> None:
        super().__init__()
        self.inside = inside
        self.lock = lock
        self.x = torch.randn(192, 192)

    def forward(self) -> Tensor:
        with self.lock:
            self.inside[0] += 1
            self.inside[1] = max(self.inside[1], self.inside[0])
        try:
            y = self.x
            for _ in range(4):
                y = torch.mm(y, self.x).tanh()
            return y
        finally:
            with self.lock:
                self.inside[0] -= 1


@pytest.mark.parametrize("before", ["nothing", "cancelled calls", "calls run inline"])
def test_an_ensemble_waited_from_sync_code_runs_no_more_modules_at_once_than_the_pool(
    before: str,
) -> None:
    """Four models forked and waited on: the waiter leaves them to the pool's woken
    threads rather than make a third one computing on two cores; also when the queue
    still holds calls cancelled or run by their waiters, which no worker popped yet."""
    cap = torch.get_num_interop_threads()
    lock = threading.Lock()
    inside = [0, 0]  # now, most
    models = [Counted(inside, lock) for _ in range(cap + 2)]
    for _ in range(30):
        for _ in range(cap):
            if before == "cancelled calls":
                fork(nn.Identity(), torch.zeros(1)).cancel()
            elif before == "calls run inline":
                wait(fork(nn.Identity(), torch.zeros(1)))
        forkwait.wait_all([fork(model) for model in models])
    assert inside == [0, cap]


class Flusher:
    """An argument whose finalizer waits, in the worker, after the call it was for."""

    def __init__(self, pending: forkwait.Future[None]) -> None:
        self.pending = pending

    def __del__(self) -> None:
        self.pending.result()


def test_a_worker_that_waits_between_calls_does_not_count_as_in_one() -> None:
    """Or the pool would look full for good, and lone waits leave their calls to it."""
    count = torch.get_num_interop_threads()
    started = threading.Barrier(count + 1, timeout=10)
    released = threading.Event()

    class Meeting(nn.Module):
        def forward(self, flusher: Flusher) -> int:
            started.wait()
            return 0

    pool = module_pool_for(None)
    futs = [fork(Meeting(), Flusher(fork(released.wait, 10))) for _ in range(count)]
    started.wait()
    assert forkwait.wait_all(futs) == [0] * count
    released.set()
    deadline = time.monotonic() + 10
    while len(pool._parked) < count:  # both finalizers done, and their workers idle
        assert time.monotonic() < deadline, "the workers did not go idle"
        time.sleep(0.01)  # nothing to wait on: they park on locks of their own
    assert not pool._busy


def test_a_module_waiting_on_a_module_runs_it_in_its_own_thread_when_the_pool_is_full() -> None:
    """A waiter that is one of the pool's threads adds no thread by running the call."""
    count = torch.get_num_interop_threads()
    running = threading.Barrier(count, timeout=20)
    waited = threading.Barrier(count, timeout=20)

    class Outer(nn.Module):
        def forward(self) -> tuple[str, str]:
            running.wait()  # all of them running: the pool is full
            inner = wait(fork(WhereRun()))
            waited.wait()  # none of them free to take another's call meanwhile
            return threading.current_thread().name, inner

    # With a timeout the waiter runs none of them itself: they all run in the pool.
    for outer, inner in forkwait.wait_all([fork(Outer()) for _ in range(count)], timeout=30):
        assert inner == outer


@pytest.mark.parametrize("how", ["wait", "collect_all", "wait_collect_all"])
def test_a_waiter_runs_a_module_left_to_a_full_pool_when_no_thread_can_start(how: str) -> None:
    """Its threads blocked on what forkwait cannot see, and no new thread possible (the
    system's thread limit, or an exit hook on Python 3.12): rather than hang, the waiter
    runs the call itself once the watchdog had its chance."""
    opened, gates = block_module_threads()
    go = threading.Event()
    job: list[forkwait.Future[bool]] = []
    waits: dict[str, Callable[[], bool]] = {
        "wait": lambda: wait(job[0]),
        "collect_all": lambda: forkwait.collect_all(job).wait()[0].result(),
        "wait_collect_all": lambda: wait(forkwait.collect_all(job))[0].result(),
    }
    ran: list[bool] = []
    waiter = threading.Thread(target=lambda: go.wait(10) and ran.append(waits[how]()))
    waiter.start()
    before = threading.stack_size(1 << 40)  # larger than memory: every start fails
    try:
        job.append(fork(Opener(opened)))
        go.set()
        waiter.join(10)
    finally:
        threading.stack_size(before)
        opened.set()
    assert not waiter.is_alive()
    assert ran == [True]
    assert forkwait.wait_all(gates, timeout=10) == [True] * len(gates)


@pytest.mark.usefixtures("unwatched")
def test_a_lower_thread_limit_caps_forked_modules_too(max_threads: Any) -> None:
    max_threads(1)
    fork_one_more_than(1, contextlib.nullcontext)


@pytest.mark.asyncio
async def test_modules_forked_from_async_code_share_torch_interop_threads() -> None:
    count = torch.get_num_interop_threads()
    inside = 0
    most = 0
    lock = threading.Lock()

    class Counted(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            try:
                return torch.relu(x @ x)  # long enough for the others to start, if allowed
            finally:
                with lock:
                    inside -= 1

    x = torch.randn(256, 256)
    modules = [Counted() for _ in range(4 * count)]
    for _ in range(5):
        outs = await asyncio.gather(*[fork(module, x) for module in modules])
        assert len(outs) == len(modules)
    assert most <= count


def test_modules_that_wait_for_each_other_get_threads_beyond_interop_threads() -> None:
    """A module may block on something forkwait cannot see (here a barrier): when the
    oldest queued module waits with no thread taking it, the watchdog starts one more."""
    fork_modules_that_meet(torch.get_num_interop_threads() + 2)
    for thread in threading.enumerate():
        if thread.name == "forkwait-watchdog":
            thread.join(10)  # nothing is queued now: it leaves
            assert not thread.is_alive()


def test_a_module_blocked_on_a_coroutine_that_forks_a_module_finishes() -> None:
    class Leaf(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x + 1

    class Bridge(nn.Module):
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__()
            self.loop = loop

        def forward(self, x: Tensor) -> Tensor:
            async def leaf() -> Tensor:
                return await fork(Leaf(), x)

            return asyncio.run_coroutine_threadsafe(leaf(), self.loop).result(timeout=20)

    async def main() -> list[Tensor]:
        loop = asyncio.get_running_loop()
        count = torch.get_num_interop_threads()
        return await asyncio.gather(*[fork(Bridge(loop), torch.zeros(1)) for _ in range(count)])

    assert [float(v) for v in asyncio.run(main())] == [1.0] * torch.get_num_interop_threads()


class Gate(nn.Module):
    """A module that blocks, on something forkwait cannot see, until ``opened`` is set."""

    def __init__(self, opened: threading.Event, entered: threading.Semaphore) -> None:
        super().__init__()
        self.opened = opened
        self.entered = entered

    def forward(self) -> bool:
        self.entered.release()
        return self.opened.wait(30)


class Opener(nn.Module):
    def __init__(self, opened: threading.Event) -> None:
        super().__init__()
        self.opened = opened

    def forward(self) -> bool:
        self.opened.set()
        return True


def block_module_threads() -> tuple[threading.Event, list[forkwait.Future[bool]]]:
    """Fill the module threads of this thread's host with calls that block until opened."""
    opened = threading.Event()
    entered = threading.Semaphore(0)
    count = torch.get_num_interop_threads()
    gates = [fork(Gate(opened, entered)) for _ in range(count)]
    for _ in range(count):
        assert entered.acquire(timeout=10)  # in async code too: they run in threads
    return opened, gates


class WhereRun(nn.Module):
    def forward(self) -> str:
        return threading.current_thread().name


def test_the_thread_the_watchdog_starts_takes_a_sync_waiters_calls_and_stays() -> None:
    """Module threads all blocked on what forkwait cannot see: a sync waiter leaves its
    call to the pool, whose watchdog starts one thread, which takes it and the next
    ones (rather than leave, and have each wait a period for another). Cancelled calls
    left in the queue hold up neither."""
    opened, gates = block_module_threads()
    ran_in: set[str] = set()
    for _ in range(20):
        ran_in.add(wait(fork(WhereRun())))
        fork(nn.Identity(), torch.zeros(1)).cancel()
    assert wait(fork(Opener(opened)), timeout=5)
    assert forkwait.wait_all(gates, timeout=10) == [True] * len(gates)
    assert len(ran_in) == 1, ran_in
    assert ran_in != {threading.current_thread().name}


@pytest.mark.asyncio
async def test_the_thread_the_watchdog_starts_stays_while_calls_are_queued() -> None:
    """Rather than leave after one call, and have each next one wait for another."""
    opened, gates = block_module_threads()
    outs = await asyncio.wait_for(
        asyncio.gather(*[fork(nn.Identity(), torch.full((1,), i)) for i in range(30)]), 5
    )
    assert [float(out) for out in outs] == list(range(30))
    opened.set()
    assert await forkwait.wait_all(gates, timeout=10) == [True] * len(gates)


def test_a_call_left_by_a_worker_over_the_limit_is_watched() -> None:
    """Workers that come back from a wait exceed the limit, and idle ones retire; the
    call one of them was handed stays queued, where the watchdog must see it."""
    count = torch.get_num_interop_threads()
    back = threading.Semaphore(0)
    handed = queue.Queue[int]()
    slept = threading.Event()

    async def sleeping() -> bool:  # on the runtime's loop: its waiter cannot run it
        return await asyncio.to_thread(slept.wait, 10)

    class Returning(nn.Module):
        def forward(self) -> int:
            assert wait(fork(sleeping))  # its thread gives its slot back meanwhile
            back.release()
            return handed.get(timeout=20)

    class Feeder(nn.Module):
        def forward(self) -> bool:
            for i in range(count):
                handed.put(i)
            return True

    async def more_modules() -> list[Tensor]:  # awaited, so they run in new threads
        return await asyncio.gather(*[fork(nn.Identity(), torch.zeros(1)) for _ in range(count)])

    returning = [fork(Returning()) for _ in range(count)]
    assert len(wait(fork(more_modules))) == count  # their threads now idle
    slept.set()
    for _ in range(count):
        assert back.acquire(timeout=10)
    feeder = fork(Feeder())  # handed to an idle worker that is over the limit
    assert sorted(forkwait.wait_all(returning, timeout=10)) == list(range(count))
    assert wait(feeder)


def test_nested_module_forks_finish_with_few_threads(max_threads: Any) -> None:
    """A module that forks modules and waits for them, three levels deep, does not
    starve the module threads: a blocked waiter gives its thread back."""
    max_threads(1)

    class Tree(nn.Module):
        def __init__(self, depth: int) -> None:
            super().__init__()
            self.children_ = nn.ModuleList([Tree(depth - 1) for _ in range(2)] if depth else [])

        def forward(self, x: Tensor) -> Tensor:
            futs = [fork(child, x) for child in self.children_]
            return x + 1 + sum((wait(fut) for fut in futs), torch.zeros_like(x))

    async def handler() -> Tensor:
        return await fork(Tree(3), torch.zeros(1))

    assert float(asyncio.run(handler())) == 15.0


# What the main program does before exit: a module forked and waited on, so its
# thread is idle; or modules stuck in calls that exit abandons, holding every thread.
_BEFORE_EXIT = {
    "idle": """
        print(float(wait(fork(torch.nn.Identity(), torch.ones(1)))))
    """,
    "stuck": """
        never = threading.Event()
        entered = threading.Semaphore(0)

        class Stuck(torch.nn.Module):
            def forward(self, x):
                entered.release()
                never.wait()

        for _ in range(torch.get_num_interop_threads()):
            fork(Stuck(), torch.ones(1))
        for _ in range(torch.get_num_interop_threads()):
            assert entered.acquire(timeout=10)
    """,
}


@pytest.mark.parametrize("threads", ["idle", "stuck"])
def test_an_exit_hook_can_still_fork_a_module(threads: str) -> None:
    """forkwait's exit hook lets the module threads go, and a later hook gets them back;
    abandoned calls keep theirs, and the watchdog starts one for the hook."""
    result = run_script(
        """
        import atexit
        import threading
        import torch

        def flush():
            from forkwait import fork, wait

            async def awaited():  # so no waiter can run it inline
                return await fork(torch.nn.Identity(), torch.ones(1))

            print(float(wait(fork(awaited), timeout=20)))

        atexit.register(flush)

        from forkwait import fork, wait
        """
        + _BEFORE_EXIT[threads],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("1.0\n1.0\n" if threads == "idle" else "1.0\n")


def test_module_threads_follow_torch_and_configure_also_in_a_child_of_os_fork() -> None:
    """The cap is torch.get_num_interop_threads() now, not when the pool was made; in a
    child of os.fork(), configure(max_threads=...) reaches the module threads."""
    result = run_script(
        """
        import os
        import torch
        import forkwait
        from forkwait import fork, wait
        from forkwait._threads import module_pool_for

        wait(fork(torch.nn.Identity(), torch.ones(1)))
        torch.set_num_interop_threads(4)
        wait(fork(torch.nn.Identity(), torch.ones(1)))
        print("parent", module_pool_for(None)._limit)
        pid = os.fork()
        if pid == 0:
            limit = -1
            try:
                forkwait.configure(max_threads=1)
                wait(fork(torch.nn.Identity(), torch.ones(1)), timeout=10)
                limit = module_pool_for(None)._limit
            finally:
                os._exit(limit)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "parent 4\nchild 1\n", result.stderr


def test_the_child_of_os_fork_runs_modules_in_threads_of_its_own() -> None:
    result = run_script(
        """
        import os
        import torch
        from forkwait import fork, wait

        async def awaited():  # so no waiter can run it inline
            return await fork(torch.nn.Identity(), torch.ones(1))

        assert float(wait(fork(awaited))) == 1.0  # the parent's module threads exist
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                ok = float(wait(fork(awaited), timeout=10)) == 1.0
            finally:
                os._exit(0 if ok else 1)
        print("child exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "child exit 0\n", result.stderr


async def _handler(model: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return await fork(model, x)


@pytest.mark.asyncio
async def test_async_code_awaits_a_module_under_inference_mode() -> None:
    out = await _handler(nn.Linear(4, 2), torch.randn(3, 4))
    assert torch.is_inference(out)
    assert not out.requires_grad


def test_a_failing_module_keeps_its_type_and_traceback() -> None:
    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise ValueError(f"cannot take shape {tuple(x.shape)}")

    with pytest.raises(ValueError, match=r"cannot take shape \(2,\)") as info:
        wait(fork(Broken(), torch.zeros(2)))
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "forward" in frames


def test_inputs_keep_their_device_and_dtype() -> None:
    x = torch.arange(4, dtype=torch.float64)
    out = wait(fork(torch.mul, x, 2))
    assert out.device == x.device
    assert out.dtype == torch.float64


# -- the forking thread's torch state applies in the worker ----------------------------


def test_grad_mode_of_a_fresh_thread_by_default() -> None:
    assert in_worker(grad_state) == (True, False)


def test_no_grad_applies_in_the_worker() -> None:
    model = nn.Linear(4, 2)
    with torch.no_grad():
        out = in_worker(lambda: model(torch.randn(1, 4)))
        state = in_worker(grad_state)
    assert state == (False, False)
    assert not out.requires_grad
    assert out.grad_fn is None


def test_enable_grad_inside_no_grad_applies_in_the_worker() -> None:
    # Under autocast too, so that the call is not in a fresh state and gets wrapped.
    with torch.autocast("cpu"), torch.no_grad(), torch.enable_grad():
        assert in_worker(grad_state) == (True, False)


def test_inference_mode_applies_in_the_worker() -> None:
    """Without it, a module forked under inference_mode() builds autograd graphs."""
    model = nn.Linear(4, 2)
    with torch.inference_mode():
        out = in_worker(lambda: model(torch.randn(1, 4)))
        state = in_worker(grad_state)
    assert state == (False, True)
    assert torch.is_inference(out)
    assert not out.requires_grad


def test_inference_mode_off_inside_inference_mode() -> None:
    with torch.autocast("cpu"), torch.inference_mode(), torch.inference_mode(False):
        assert in_worker(grad_state) == (True, False)


def test_autocast_applies_in_the_worker_with_its_dtype() -> None:
    """float16, not CPU autocast's default bfloat16: the dtype itself goes along."""
    linear = nn.Linear(4, 2)
    with torch.autocast("cpu", dtype=torch.float16):
        seen = in_worker(
            lambda: (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        )
        out = in_worker(lambda: linear(torch.randn(1, 4)))
    assert seen == (True, torch.float16)
    assert out.dtype == torch.float16


def _autocast_works_here(device: str) -> bool:
    """Whether ``torch.autocast(device)`` turns autocast on in this process, rather than
    warning that the device is missing (CUDA here) and staying off."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            with torch.autocast(device):
                return torch.is_autocast_enabled(device)
        except (AssertionError, RuntimeError, UserWarning):  # as torch reports it
            return False


@pytest.mark.parametrize(
    "device", [d for d in torch._C._autocast_supported_devices() if _autocast_works_here(d)]
)
def test_autocast_of_every_device_type_applies_in_the_worker(device: str) -> None:
    """Alone, with nothing else about the thread changed: torch's own "any autocast?"
    check misses some device types (an Apple GPU's, "mps"), which were left behind."""
    dtype = torch.get_autocast_dtype(device)
    torch.set_autocast_enabled(device, True)
    try:
        seen = in_worker(
            lambda: (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        )
    finally:
        torch.set_autocast_enabled(device, False)
    assert seen == (True, dtype)
    assert in_worker(lambda: torch.is_autocast_enabled(device)) is False  # and not after


def test_autocast_cache_flag_applies_in_the_worker() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        assert in_worker(torch.is_autocast_cache_enabled) is False


def test_autocast_turned_off_inside_autocast() -> None:
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autocast("cpu", enabled=False),
    ):
        assert in_worker(lambda: (torch.is_autocast_enabled("cpu"), grad_state())) == (
            False,
            (False, False),
        )


def test_state_carries_through_nested_forks() -> None:
    """A fork made inside a forked call under no_grad() runs under no_grad() too."""

    def outer() -> tuple[bool, bool]:
        return in_worker(grad_state)

    with torch.no_grad():
        assert in_worker(outer) == (False, False)


# -- modes and saved-tensor hooks, as torch.jit.fork carries them ------------------


def mode_stacks() -> tuple[int, int, bool]:
    """How many torch function and dispatch modes this thread has, and whether it has
    saved-tensor hooks."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack(), bool(hooks)


def device_made() -> str:
    return torch.zeros(1).device.type


class OpsSeen(TorchDispatchMode):
    """Notes the name of every aten op it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class PackedShapes(list[torch.Size]):
    """A saved-tensor pack hook that notes the shape of each tensor it packs."""

    def __call__(self, tensor: Tensor) -> Tensor:
        self.append(tensor.shape)
        return tensor


@pytest.fixture
def only_worker_held(max_threads: Any) -> Iterator[None]:
    """One worker thread, held busy: a call forked meanwhile stays queued, so that its
    waiter runs it inline."""
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)
    yield
    release.set()
    assert wait(blocker) is True


def test_a_torch_device_context_applies_in_the_worker() -> None:
    with torch.device("meta"):
        assert in_worker(device_made) == "meta"
    assert in_worker(lambda: (device_made(), mode_stacks())) == ("cpu", (0, 0, False))


def test_set_default_device_applies_in_the_worker() -> None:
    """torch keeps the default device per thread (as a mode): the forker's goes along."""
    torch.set_default_device("meta")
    try:
        assert in_worker(device_made) == "meta"
    finally:
        torch.set_default_device(None)
    assert in_worker(device_made) == "cpu"


def test_a_dispatch_mode_sees_the_ops_of_a_forked_call() -> None:
    """A FlopCounterMode-style mode counts what a forked module computes."""
    model = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with OpsSeen() as seen:
        in_worker(lambda: model(x))
    assert "aten.addmm.default" in seen.ops
    count = len(seen.ops)
    in_worker(lambda: model(x))
    assert len(seen.ops) == count  # gone with the forker's mode


def test_fake_tensor_mode_applies_in_the_worker() -> None:
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        made = in_worker(lambda: torch.ones(2) * 3)
    assert isinstance(made, FakeTensor)
    assert in_worker(mode_stacks) == (0, 0, False)


def test_saved_tensor_hooks_pack_what_a_forked_call_saves() -> None:
    packed = PackedShapes()

    def backward_through_a_product() -> Tensor:
        x = torch.ones(3, requires_grad=True)
        (x * x).sum().backward()
        assert x.grad is not None
        return x.grad

    with torch.autograd.graph.saved_tensors_hooks(packed, lambda tensor: tensor):
        grad = in_worker(backward_through_a_product)
    torch.testing.assert_close(grad, torch.full((3,), 2.0))
    assert packed == [torch.Size([3]), torch.Size([3])]  # x, twice, for x * x


def test_modes_carry_through_nested_forks() -> None:
    with torch.device("meta"):
        assert in_worker(lambda: in_worker(device_made)) == "meta"


@pytest.mark.usefixtures("only_worker_held")
def test_a_call_run_inline_by_a_waiter_with_modes_runs_without_them() -> None:
    """A waiter under a device context and a dispatch mode that runs a queued call itself
    runs it as it was forked, without either, and has both back afterwards."""
    fut = fork(lambda: (threading.get_ident(), device_made(), mode_stacks()))
    with torch.device("meta"), OpsSeen() as seen:
        ident, device, stacks = wait(fut)
        after = (device_made(), mode_stacks())
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert (device, stacks) == ("cpu", (0, 0, False))
    assert after == ("meta", (1, 1, False))
    assert seen.ops == ["aten.zeros.default"]  # the waiter's own zeros, not the call's


def leaves_a_device_context() -> tuple[int, int, bool]:
    torch.device("meta").__enter__()  # and no __exit__
    return mode_stacks()


def test_a_call_that_leaves_a_mode_does_not_leave_it_to_the_next_call(max_threads: Any) -> None:
    max_threads(1)
    first = in_worker(lambda: (threading.get_ident(), leaves_a_device_context()))
    second = in_worker(lambda: (threading.get_ident(), mode_stacks(), device_made()))
    assert first[0] == second[0], "expected one worker thread to run both calls"
    assert first[1] == (1, 0, False)
    assert second[1:] == ((0, 0, False), "cpu")


def test_a_call_forked_under_no_grad_that_leaves_a_mode_does_not_pass_it_on(
    max_threads: Any,
) -> None:
    """The same when the forker was not fresh (the call runs under its no_grad())."""
    max_threads(1)
    with torch.no_grad():
        first = in_worker(lambda: (threading.get_ident(), leaves_a_device_context()))
    second = in_worker(lambda: (threading.get_ident(), mode_stacks(), device_made()))
    assert first[0] == second[0], "expected one worker thread to run both calls"
    assert second[1:] == ((0, 0, False), "cpu")


@pytest.mark.usefixtures("only_worker_held")
def test_a_call_forked_under_no_grad_leaves_no_mode_to_its_inline_waiter() -> None:
    with torch.no_grad():
        fut = fork(lambda: (threading.get_ident(), leaves_a_device_context()))
        ident, _ = wait(fut)
        after = mode_stacks()
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert after == (0, 0, False)


@pytest.mark.usefixtures("only_worker_held")
@pytest.mark.parametrize("hooks_of", ["the forker", "the call"])
def test_a_waiter_with_saved_tensor_hooks_disabled_runs_a_call_with_hooks(hooks_of: str) -> None:
    """torch.func's transforms disable the hooks in their thread: a call forked under
    hooks, or forked from a fresh state and using hooks itself, run inline there, runs
    with them enabled, as in a worker, and the waiter's stay off."""
    packed = PackedShapes()

    def hooks(of: str) -> contextlib.AbstractContextManager[object]:
        if of != hooks_of:
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(packed, lambda tensor: tensor)

    def saves_a_tensor() -> int:
        with hooks("the call"):
            x = torch.ones(2, requires_grad=True)
            (x * x).sum()
        return threading.get_ident()

    with hooks("the forker"):
        fut = fork(saves_a_tensor)
    with torch.autograd.graph.disable_saved_tensors_hooks("off in this test"):
        ident = wait(fut)
        still_off = not torch._C._autograd._saved_tensors_hooks_is_enabled()
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert still_off
    assert packed == [torch.Size([2]), torch.Size([2])]  # x, twice, for x * x


@pytest.mark.usefixtures("only_worker_held")
def test_a_call_that_leaves_a_mode_does_not_leave_it_to_its_inline_waiter() -> None:
    fut = fork(lambda: (threading.get_ident(), leaves_a_device_context()))
    ident, inside = wait(fut)
    after = mode_stacks()
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert (inside, after) == ((1, 0, False), (0, 0, False))


def test_a_worker_gets_its_own_state_back_after_the_call(max_threads: Any) -> None:
    """The same worker thread runs a no_grad call, then a call from a fresh state."""
    max_threads(1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = in_worker(lambda: (threading.get_ident(), torch.is_autocast_enabled("cpu")))
    second = in_worker(
        lambda: (threading.get_ident(), torch.is_autocast_enabled("cpu"), grad_state())
    )
    assert first[0] == second[0], "expected one worker thread to run both calls"
    assert first[1] is True
    assert second[1:] == (False, (True, False))


def test_a_call_run_inline_by_its_waiter_gets_the_forkers_state(max_threads: Any) -> None:
    """A waiter under no_grad() that runs a queued call itself runs it with grad on, as
    it was forked, and keeps its own no_grad() afterwards."""
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)  # holds the only worker, so the next call stays queued
    fut = fork(lambda: (threading.get_ident(), grad_state()))
    with torch.no_grad():
        ident, state = wait(fut)
        assert not torch.is_grad_enabled()
    release.set()
    assert wait(blocker) is True
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert state == (True, False)


def test_a_call_run_inline_under_autocast_runs_without_it(max_threads: Any) -> None:
    """The same, for a waiter under autocast: the call was forked without it."""
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)
    fut = fork(lambda: (threading.get_ident(), torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ident, autocast_on = wait(fut)
        assert torch.is_autocast_enabled("cpu")
    release.set()
    assert wait(blocker) is True
    assert ident == threading.get_ident(), "expected the waiter to run the call inline"
    assert autocast_on is False


def test_a_waiter_under_autocast_keeps_its_own_after_running_a_call_that_changed_it(
    max_threads: Any,
) -> None:
    """A call run inline that turns another device type's autocast on (or the waiter's
    off) and leaves it so: the waiter gets its own back, as a worker does."""
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)

    def meddles() -> int:
        torch.set_autocast_enabled("mps", True)
        torch.set_autocast_enabled("xpu", True)
        return threading.get_ident()

    fut = fork(meddles)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert wait(fut) == threading.get_ident(), "expected it run inline"
            after = [torch.is_autocast_enabled(d) for d in ("cpu", "mps", "xpu")]
    finally:
        for device in ("mps", "xpu"):
            torch.set_autocast_enabled(device, False)
        release.set()
    assert wait(blocker) is True
    assert after == [True, False, False]


def leaves_grad_off() -> int:
    """A call that changes its thread's torch state and does not put it back."""
    torch.set_grad_enabled(False)
    torch.set_autocast_enabled("cpu", True)
    return threading.get_ident()


def test_a_call_that_leaves_grad_off_does_not_leave_it_to_the_next_call(
    max_threads: Any,
) -> None:
    max_threads(1)
    first = in_worker(leaves_grad_off)
    second = in_worker(
        lambda: (threading.get_ident(), grad_state(), torch.is_autocast_enabled("cpu"))
    )
    assert first == second[0], "expected one worker thread to run both calls"
    assert second[1:] == ((True, False), False)


def test_a_done_callback_that_leaves_grad_off_does_not_leave_it_to_the_next_call(
    max_threads: Any,
) -> None:
    """A callback runs in the worker that finished the call: it is held to what the
    calls there are held to."""
    max_threads(1)
    release = threading.Event()
    held = fork(release.wait, 10)  # the one worker runs it; its callbacks run there too
    ran_in: list[int] = []
    held.add_done_callback(lambda _: ran_in.append(leaves_grad_off()))
    after = fork(lambda: (threading.get_ident(), grad_state(), torch.is_autocast_enabled("cpu")))
    release.set()
    thread, grad, autocast = wait(after, timeout=10)  # with a timeout: never run inline here
    assert ran_in == [thread], "expected the worker that ran the callback to run the call"
    assert (grad, autocast) == ((True, False), False)


def test_a_call_that_leaves_grad_off_does_not_leave_it_to_its_inline_waiter(
    max_threads: Any,
) -> None:
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)
    fut = fork(leaves_grad_off)
    assert wait(fut) == threading.get_ident(), "expected the waiter to run the call inline"
    release.set()
    assert wait(blocker) is True
    assert grad_state() == (True, False)
    assert not torch.is_autocast_enabled("cpu")


def turns_autocast_on() -> int:
    torch.set_autocast_enabled("cpu", True)
    return threading.get_ident()


def test_autocast_a_call_under_no_grad_turned_on_does_not_reach_the_next_call(
    max_threads: Any,
) -> None:
    """Forked under no_grad, the call runs under the forker's state (see InState), which
    put back what it entered but not what the call itself turned on."""
    max_threads(1)
    with torch.no_grad():
        first = in_worker(turns_autocast_on)
    second = in_worker(lambda: (threading.get_ident(), torch.is_autocast_enabled("cpu")))
    assert second == (first, False)


def test_autocast_a_call_under_no_grad_turned_on_does_not_reach_its_inline_waiter(
    max_threads: Any,
) -> None:
    max_threads(1)
    release = threading.Event()
    blocker = fork(release.wait, 10)
    with torch.no_grad():
        fut = fork(turns_autocast_on)
        assert wait(fut) == threading.get_ident(), "expected the waiter to run the call inline"
    release.set()
    assert wait(blocker) is True
    assert not torch.is_autocast_enabled("cpu")


def leaves_it_all_on() -> tuple[int, bool]:
    """A call that turns on what it can and puts none of it back."""
    torch.set_grad_enabled(True)
    torch.set_autocast_enabled("cpu", True)
    torch.device("meta").__enter__()
    return threading.get_ident(), torch.is_inference_mode_enabled()


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_worker_is_fresh_after_a_call_forked_under_a_grad_mode(
    max_threads: Any, mode: Callable[[], Any]
) -> None:
    """A worker runs such a call without first asking torch for its own state (it is
    fresh between calls): so it must be fresh again after, whatever the call did."""
    max_threads(1)
    with mode():
        thread, inference = in_worker(leaves_it_all_on)
    second = in_worker(
        lambda: (
            threading.get_ident(),
            grad_state(),
            torch.is_autocast_enabled("cpu"),
            mode_stacks(),
            device_made(),
        )
    )
    assert inference is (mode is torch.inference_mode)
    assert second == (thread, (True, False), False, (0, 0, False), "cpu")


kept_guards: list[Any] = []


def keeps_inference_mode_on() -> int:
    guard = torch.inference_mode()
    guard.__enter__()  # and no __exit__: the guard lives on, and so does the mode
    kept_guards.append(guard)
    return threading.get_ident()


def keeps_saved_tensor_hooks_disabled() -> int:
    guard = torch.autograd.graph.disable_saved_tensors_hooks("disabled by an earlier call")
    guard.__enter__()
    kept_guards.append(guard)
    return threading.get_ident()


@pytest.mark.parametrize("leak", [keeps_inference_mode_on, keeps_saved_tensor_hooks_disabled])
def test_a_call_after_one_that_kept_a_guard_runs_under_its_forkers_state(
    max_threads: Any, leak: Callable[[], int]
) -> None:
    """clean_up cannot end a guard that a call kept alive: the next call forked under
    no_grad() still runs without inference mode and with saved-tensor hooks usable."""
    max_threads(1)

    def uses_hooks() -> tuple[int, bool, bool]:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            pass
        return (
            threading.get_ident(),
            torch.is_inference_mode_enabled(),
            torch.ones(1).is_inference(),
        )

    first = in_worker(leak)
    try:
        with torch.no_grad():
            second = in_worker(uses_hooks)
        assert second == (first, False, False)
    finally:  # ended in the worker that entered it: a guard restores its own thread
        in_worker(lambda: [g.__exit__(None, None, None) for g in kept_guards])
        kept_guards.clear()


def test_forking_a_module_does_not_look_through_its_getattr() -> None:
    """A module's ``__call__`` is sync: ``fork`` does not look for the coroutine marker,
    which ``Module.__getattr__`` would raise for (20-30 us when the caches are cold)."""
    looked_up: list[str] = []

    class Spied(nn.Linear):
        def __getattr__(self, name: str) -> Any:
            looked_up.append(name)
            return super().__getattr__(name)

    model = Spied(2, 2)
    with torch.inference_mode():
        out = wait(fork(model, torch.ones(1, 2)))
    assert out.shape == (1, 2)
    assert "_is_coroutine" not in looked_up


def test_then_callbacks_run_under_the_state_then_was_called_in() -> None:
    """As torch's Future.then: whichever thread finishes the future runs the callback."""
    release = threading.Event()
    with torch.inference_mode():
        fut = fork(release.wait, 10).then(lambda _: grad_state())
    release.set()
    assert fut.wait() == (False, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_current_cuda_device_and_stream_apply_in_the_worker() -> None:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        seen = in_worker(lambda: torch.cuda.current_stream())
    assert seen == stream


# -- torch-style conveniences --------------------------------------------------------


def test_future_wait_and_value_as_in_torch() -> None:
    fut = fork(torch.add, torch.ones(2), 1)
    torch.testing.assert_close(fut.wait(), torch.full((2,), 2.0))
    torch.testing.assert_close(fut.value(), torch.full((2,), 2.0))


def test_value_before_the_call_finished_says_to_wait() -> None:
    release = threading.Event()
    fut = fork(release.wait, 10)
    with pytest.raises(forkwait.InvalidStateError, match=r"call fut\.wait\(\) first"):
        fut.value()
    release.set()
    assert fut.wait() is True


def test_value_raises_the_calls_exception() -> None:
    fut = fork(torch.zeros(2).view, 3)
    with pytest.raises(RuntimeError, match="invalid for input of size 2"):
        fut.wait()
    with pytest.raises(RuntimeError, match="invalid for input of size 2"):
        fut.value()


def test_value_inside_then_as_in_torch() -> None:
    fut = fork(torch.ones, 3).then(lambda f: f.value().sum().item())
    assert fut.wait() == 3.0


def test_collect_all_gives_the_futures_once_all_are_done() -> None:
    release = threading.Event()
    slow = fork(lambda: (release.wait(10), torch.ones(1))[1])
    failing = fork(torch.zeros(2).view, 3)
    collected = forkwait.collect_all([slow, failing])
    assert not collected.done()
    release.set()
    done = collected.wait()
    assert done == [slow, failing]
    assert all(fut.done() for fut in done)
    assert isinstance(failing.exception(), RuntimeError)  # in the list, not raised


def test_collect_all_of_nothing_is_done_at_once() -> None:
    collected = forkwait.collect_all([])
    assert collected.done()
    assert collected.value() == []


def test_collect_all_rejects_what_is_not_a_future() -> None:
    with pytest.raises(TypeError, match=r"collect_all\(\) expects a forkwait\.Future"):
        forkwait.collect_all([fork(int), torch.ones(1)])  # type: ignore[list-item]


def test_cancelling_collect_all_leaves_the_calls_running() -> None:
    release = threading.Event()
    running = fork(release.wait, 10)
    collected = forkwait.collect_all([running])
    assert collected.cancel()
    assert collected.cancelled()
    assert not running.done()
    release.set()
    assert running.wait() is True


def test_nested_collect_all_waits_run_queued_members_instead_of_adding_threads(
    max_threads: Any,
) -> None:
    """Like wait_all, a wait on collect_all runs still-queued members itself, so nested
    fork/join does not start a thread for every blocked level."""
    max_threads(2)
    peak = 0

    def fib(n: int) -> int:
        nonlocal peak
        peak = max(peak, threading.active_count())
        if n < 2:
            return n
        done = forkwait.collect_all([fork(fib, n - 1), fork(fib, n - 2)]).wait()
        return sum(f.value() for f in done)

    baseline = threading.active_count()
    assert fib(14) == 377
    assert peak - baseline < 40  # was over 400 when each level blocked a thread


@pytest.mark.asyncio
async def test_collect_all_is_awaitable() -> None:
    futs = [fork(torch.full, (1,), float(i)) for i in range(3)]
    done = await forkwait.collect_all(futs)
    assert [float(f.value()) for f in done] == [0.0, 1.0, 2.0]


# -- torch is never imported by forkwait -----------------------------------------------


def test_fork_and_wait_do_not_import_torch() -> None:
    result = run_script(
        """
        import asyncio, sys
        import forkwait

        async def double(x):
            return 2 * x

        async def main():
            return await forkwait.fork(double, 2)

        assert forkwait.wait(forkwait.fork(sum, [1, 2])) == 3
        assert asyncio.run(main()) == 4
        print("torch" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_torch_imported_after_forkwait_is_picked_up() -> None:
    result = run_script(
        """
        import forkwait
        assert forkwait.wait(forkwait.fork(sum, [1, 2])) == 3  # workers exist before torch
        import torch

        with torch.inference_mode():
            out = forkwait.wait(forkwait.fork(torch.nn.Linear(2, 2), torch.ones(1, 2)))
        print(torch.is_inference(out))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def _forked_ops_recorded(every_thread: bool) -> list[Any]:
    """The addmm of 4 forked Linear modules that torch.profiler records, all run by
    worker threads (waited for with callbacks: a waiter runs queued calls itself)."""
    from torch.profiler import ProfilerActivity, profile

    models = [nn.Linear(8, 8) for _ in range(4)]
    x = torch.randn(2, 8)
    forkwait.wait_all([fork(model, x) for model in models])  # workers started before
    options: dict[str, Any] = {}
    if every_thread:
        options["experimental_config"] = torch._C._profiler._ExperimentalConfig(
            profile_all_threads=True
        )
    finished = threading.Semaphore(0)
    with profile(activities=[ProfilerActivity.CPU], **options) as prof:
        for model in models:
            fork(model, x).add_done_callback(lambda _: finished.release())
        for _ in models:
            assert finished.acquire(timeout=30)
    return [event for event in prof.events() if event.name == "aten::addmm"]


def test_the_profiler_sees_forked_modules_only_when_asked_to_record_every_thread() -> None:
    """What the migration page says: torch.profiler records the thread that started it,
    unlike TorchScript's fork, unless profile_all_threads is set."""
    assert _forked_ops_recorded(every_thread=False) == []
    assert len(_forked_ops_recorded(every_thread=True)) == 4


@pytest.mark.parametrize("device", ["mps", "maia"])
def test_the_autocast_check_sees_the_device_types_torchs_own_misses(device: str) -> None:
    """Asked through the dispatch keys, it answers as torch.is_autocast_enabled does."""
    from forkwait._torch import _autocast_off_probe

    autocast_off = _autocast_off_probe(torch, device)
    assert autocast_off()
    torch.set_autocast_enabled(device, True)
    try:
        assert not torch._C._is_any_autocast_enabled(), "torch's own check sees it now"
        assert not autocast_off()
        with torch.autocast(device, enabled=False):
            assert autocast_off()
        assert not autocast_off()
    finally:
        torch.set_autocast_enabled(device, False)
    assert autocast_off()


def test_a_torch_clean_up_that_fails_fails_the_future_and_spares_the_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised out of the worker's run, it left the future unsettled for good (its waiter
    hung) and ended the worker thread."""
    import forkwait._threads

    def broken(func: object) -> None:
        raise RuntimeError("could not clean up")

    monkeypatch.setattr(forkwait._threads, "clean_torch_state", broken)
    with pytest.raises(RuntimeError, match="could not clean up"):
        in_worker(lambda: 1)

    def boom() -> None:
        raise KeyError("the call's own")

    with pytest.raises(KeyError, match="the call's own"):
        in_worker(boom)
    assert "could not put back a fresh torch state" in caplog.text
    monkeypatch.undo()
    assert in_worker(lambda: 2) == 2
