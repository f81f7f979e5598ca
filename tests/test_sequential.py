"""forkwait.sequential(): calls run one at a time, in fork order, with parallel mode's outcomes."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkwait
from forkwait import fork, wait
from tests.test_properties import Node, Planned, trees

pytestmark = pytest.mark.timeout(60)


def test_sync_calls_run_at_fork_in_the_forking_thread_in_order() -> None:
    seen: list[tuple[str, str]] = []

    def note(name: str) -> str:
        seen.append((name, threading.current_thread().name))
        return name

    with forkwait.sequential():
        futs = [fork(note, name) for name in "abc"]
        assert all(fut.done() for fut in futs), "each ran before fork returned"
        assert seen == [(name, threading.current_thread().name) for name in "abc"]
    assert [fut.result() for fut in futs] == ["a", "b", "c"]


def test_nested_forks_run_depth_first_as_plain_calls_would() -> None:
    order: list[str] = []

    def leaf(name: str) -> str:
        order.append(name)
        return name

    async def async_leaf(name: str) -> str:
        await asyncio.sleep(0)
        order.append(name)
        return name

    def node() -> str:
        first, second = fork(leaf, "inner sync"), fork(async_leaf, "inner async")
        order.append("node")
        return wait(first) + " + " + wait(second)

    with forkwait.sequential():
        outer = fork(node)
        fork(leaf, "after")
    assert outer.result() == "inner sync + inner async"
    assert order == ["inner sync", "inner async", "node", "after"]


def test_failures_are_the_same_exception_objects_kept_for_the_waiter() -> None:
    def refuse() -> None:
        raise KeyError("refused")

    with forkwait.sequential():
        failed = fork(refuse)  # fork itself does not raise
    with pytest.raises(KeyError, match="refused"):
        wait(failed)


@pytest.mark.anyio
async def test_in_async_code_coroutines_run_one_at_a_time_in_fork_order() -> None:
    running = 0
    most = 0
    order: list[int] = []

    async def step(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.001 * (5 - i))  # later ones are shorter: in parallel they'd overtake
        order.append(i)
        running -= 1
        return i

    with forkwait.sequential():
        futs = [fork(step, i) for i in range(5)]
    assert await forkwait.wait_all(futs) == list(range(5))
    assert order == list(range(5))
    assert most == 1


# -- sequential and parallel agree, on random trees with waits in random order -----------


def run_tree(node: Node, seed: int) -> int:
    futs = [fork(run_async_tree if c.is_async else run_tree, c, seed) for c in node.children]
    return settle(node, [(fut, wait) for fut in futs], seed)


async def run_async_tree(node: Node, seed: int) -> int:
    futs = [fork(run_async_tree if c.is_async else run_tree, c, seed) for c in node.children]
    values: dict[int, int] = {}
    errors: dict[int, Planned] = {}
    for index in _order(len(futs), node, seed):
        try:
            values[index] = await futs[index]
        except Planned as exc:
            errors[index] = exc
    return _combine(node, values, errors)


def settle(node: Node, pairs: list[tuple[Any, Any]], seed: int) -> int:
    values: dict[int, int] = {}
    errors: dict[int, Planned] = {}
    for index in _order(len(pairs), node, seed):
        fut, waiter = pairs[index]
        try:
            values[index] = waiter(fut)
        except Planned as exc:
            errors[index] = exc
    return _combine(node, values, errors)


def _order(count: int, node: Node, seed: int) -> list[int]:
    """The order a node waits for its children: random, but the same in both modes."""
    order = list(range(count))
    random.Random(seed * 1009 + node.value * 31 + count).shuffle(order)
    return order


def _combine(node: Node, values: dict[int, int], errors: dict[int, Planned]) -> int:
    if errors:
        raise errors[min(errors)]  # the first child's failure, in fork order
    if node.fails:
        raise Planned(node.value)
    return node.value + sum(values.values())


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "value", fn()
    except Planned as exc:
        return "error", exc.args


@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, seed=st.integers(0, 1000), limit=st.integers(1, 8))
def test_sequential_and_parallel_agree_on_every_result_and_exception(
    tree: Node, seed: int, limit: int
) -> None:
    forkwait.configure(max_threads=limit)
    try:
        root = run_async_tree if tree.is_async else run_tree
        parallel = _outcome(lambda: wait(fork(root, tree, seed), timeout=30))
        with forkwait.sequential():
            fut = fork(root, tree, seed)
            assert fut.done(), "in sequential mode the whole tree ran inside fork"
        assert _outcome(fut.result) == parallel
    finally:
        forkwait.configure(max_threads=40)


@pytest.mark.anyio
async def test_bad_arguments_go_to_the_future_in_async_code_too() -> None:
    async def takes_one(x: int) -> int:
        return x

    with forkwait.sequential():
        fut = fork(takes_one, 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional argument"):
        await fut


@pytest.mark.anyio
async def test_a_sync_call_waiting_on_a_coroutine_of_its_own_loop_is_told_so() -> None:
    """Run inline in the loop's thread, it cannot wait for what that loop must run: a
    clear error, not a hang (parallel mode runs it in a worker, where it may wait)."""

    async def later() -> int:
        await anyio.lowlevel.checkpoint()
        return 5

    def waits_for(fut: forkwait.Future[int]) -> int:
        return wait(fut) + 1

    pending = fork(later)  # in parallel mode: a task of this loop
    with forkwait.sequential():
        blocked = fork(waits_for, pending)
    with pytest.raises(RuntimeError, match="cannot wait for"):
        await blocked
    assert await pending == 5


@pytest.mark.anyio
async def test_a_sync_scope_in_a_sync_call_waiting_on_its_own_loop_is_told_so() -> None:
    """The same for the scope's exit, which waits for its forks: on trio the coroutine
    forked inside is queued for the run that the call blocks (it hung); its forks are
    cancelled, and the call fails saying why."""
    forked: list[forkwait.Future[int]] = []

    async def later() -> int:
        await anyio.lowlevel.checkpoint()
        return 5

    def leaves_a_scope_with_a_fork() -> None:
        with forkwait.scope():
            forked.append(fork(later))

    with forkwait.sequential():
        blocked = fork(leaves_a_scope_with_a_fork)
    if not forked[0].cancelled():  # asyncio: sequential mode ran it to its end inline
        assert await forked[0] == 5
        assert await blocked is None
        return
    with pytest.raises(RuntimeError, match="cannot wait for"):
        await blocked
    assert forked[0].cancelled()


@pytest.mark.anyio
async def test_in_async_code_a_sync_call_forked_after_a_coroutine_waits_its_turn() -> None:
    """Fork order holds across both kinds: the sync call runs once the coroutine forked
    before it has finished (so it may even wait for it), in the forking thread."""
    order: list[str] = []
    here = threading.current_thread()

    async def first() -> int:
        await anyio.lowlevel.checkpoint()
        order.append("first")
        return 5

    def second(fut: forkwait.Future[int]) -> int:
        assert threading.current_thread() is here
        order.append("second")
        return wait(fut) + 1

    async def third() -> None:
        order.append("third")

    with forkwait.sequential():
        futs = [fork(first)]
        futs.append(fork(second, futs[0]))
        futs.append(fork(third))
    assert await forkwait.wait_all(futs) == [5, 6, None]
    assert order == ["first", "second", "third"]


def test_sequential_mode_wins_over_an_offload_block_inside_it() -> None:
    """Debugging wraps code that may offload: its calls run here, one at a time, too."""
    here = threading.current_thread()
    with forkwait.sequential(), forkwait.offload("threads"):
        fut = fork(threading.current_thread)
        assert fut.done()
    assert wait(fut) is here
    with forkwait.sequential(), forkwait.offload("processes"):
        assert wait(fork(os.getpid)) == os.getpid()  # no worker process was started


@pytest.mark.anyio
async def test_a_long_then_chain_in_sequential_mode_stays_in_the_loops_thread() -> None:
    """No worker thread goes on with it (as one does in parallel mode past 16 links): the
    loop does, a turn later."""
    threads: set[threading.Thread] = set()

    async def zero() -> int:
        await anyio.lowlevel.checkpoint()
        return 0

    def link(done: forkwait.Future[int]) -> int:
        threads.add(threading.current_thread())
        return done.value() + 1

    with forkwait.sequential():
        chained = fork(zero)  # a task, pending while the chain is built on it
        for _ in range(400):  # far past the recursion limit's reach, one inside the other
            chained = chained.then(link)
    assert await chained == 400
    assert threads == {threading.current_thread()}


def test_ctrl_c_in_a_call_in_sequential_mode_stops_the_program() -> None:
    """It lands in the one thread that runs everything, as it would without fork: the
    calls forked after it do not run."""
    ran: list[int] = []

    def interrupted() -> None:
        raise KeyboardInterrupt  # as Ctrl-C landing in the call

    def forks() -> None:
        with forkwait.sequential():
            fork(interrupted)
            fork(ran.append, 1)

    with pytest.raises(KeyboardInterrupt):
        forks()
    assert ran == []


class Steps:
    """A coroutine function that notes its name and then hangs; ``started`` once one ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.started = anyio.Event()

    async def __call__(self, name: str) -> None:
        self.ran.append(name)
        self.started.set()
        await anyio.sleep(3600)


@pytest.mark.anyio
async def test_turns_cancelled_before_they_come_are_closed_without_a_warning() -> None:
    """A queued coroutine (and a queued sync call's turn) cancelled while it waits for the
    one before never runs, and warns of nothing (warnings are errors here)."""
    step = Steps()
    ran, started = step.ran, step.started
    with forkwait.sequential():
        first = fork(step, "first")
        second = fork(step, "second")  # waits for first
        third = fork(ran.append, "third")  # a sync call's turn, after second
        await started.wait()
        assert second.cancel()
        assert third.cancel()
        assert first.cancel()
    for fut in (first, second, third):
        with pytest.raises(forkwait.CancelledError):
            await fut
    assert ran == ["first"]
    gc.collect()


@pytest.mark.anyio
async def test_a_turn_cancelled_while_it_waits_in_a_scope_is_closed_without_a_warning() -> None:
    step = Steps()
    ran, started = step.ran, step.started
    with forkwait.sequential():
        async with forkwait.scope() as s:
            fork(step, "a")
            fork(step, "b")
            await started.wait()
            await anyio.lowlevel.checkpoint()  # b's task has begun to wait for a's
            s.cancel()
    assert ran == ["a"]
    gc.collect()


@pytest.mark.anyio
async def test_a_coroutine_a_sync_call_returns_is_awaited_on_the_callers_loop() -> None:
    """As in parallel mode: the loop the call works for awaits it, and that loop is free
    to run what the coroutine waits for (a loop of its own here blocked it for good)."""

    async def one() -> int:
        await anyio.sleep(0.01)
        return 1

    async def plus_one(fut: forkwait.Future[int]) -> int:
        return await fut + 1

    with anyio.fail_after(10), forkwait.sequential():
        first = fork(one)
        second = fork(lambda: plus_one(first))
        assert await second == 2


@pytest.mark.anyio
async def test_the_coroutine_a_sync_call_returns_sees_the_calls_context_variables() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        return var.get()

    def sets_then_returns() -> Any:
        var.set("set by the call")
        return read()

    parallel = await fork(sets_then_returns)
    with forkwait.sequential():
        sequential = await fork(sets_then_returns)
    assert parallel == sequential == "set by the call"
