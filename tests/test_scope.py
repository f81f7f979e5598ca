"""forkwait.scope(): forks belong to it, leaving waits for them, failures are grouped."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import forkwait
from forkwait import Future, fork, wait
from tests.conftest import run_script

pytestmark = pytest.mark.timeout(30)


async def nap(value: Any, seconds: float = 0.01) -> Any:
    await anyio.sleep(seconds)
    return value


async def fails(message: str) -> None:
    await anyio.sleep(0.01)
    raise ValueError(message)


def forks_a_nested_call(record: list[Future[Any]]) -> str:
    """A sync call in a worker thread that forks and leaves its fork running."""
    record.append(fork(nap, "nested", 0.05))
    return "outer"


# -- leaving waits; failures ------------------------------------------------------------


@pytest.mark.anyio
async def test_leaving_waits_for_direct_and_nested_forks() -> None:
    nested: list[Future[Any]] = []
    async with forkwait.scope() as s:
        direct = fork(nap, "direct")
        outer = fork(forks_a_nested_call, nested)
    assert direct.done()
    assert outer.done()
    assert len(nested) == 1
    assert nested[0].done(), "a fork made from a worker thread belongs to the scope too"
    assert await nested[0] == "nested"
    assert "3 of 3 forks done" in repr(s)


def test_leaving_a_sync_scope_waits_too() -> None:
    nested: list[Future[Any]] = []
    with forkwait.scope():
        outer = fork(forks_a_nested_call, nested)
        timed = fork(nap, "direct")
    assert outer.done()
    assert timed.done()
    assert nested[0].done()


@pytest.mark.anyio
async def test_a_failure_nobody_retrieved_cancels_the_siblings_and_is_raised() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="first")):
        async with forkwait.scope():
            fork(fails, "first")
            sibling = fork(anyio.sleep_forever)
    assert sibling.cancelled()


def test_a_failure_in_a_sync_scope_is_raised_in_a_group() -> None:
    release = threading.Event()
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="sync")), forkwait.scope():
        fork(fails, "sync")
        waiting = fork(release.wait, 10)
        pending = fork(anyio.sleep_forever)
        wait(fork(nap, None, 0.05))  # by now `fails` has failed
        release.set()
    assert waiting.result() is True
    assert pending.cancelled()


@pytest.mark.anyio
async def test_a_failure_retrieved_with_wait_or_await_is_not_raised_again() -> None:
    async with forkwait.scope():
        with pytest.raises(ValueError, match="handled"):
            await fork(fails, "handled")
        with pytest.raises(ValueError, match="also handled"):
            await forkwait.wait(fork(fails, "also handled"))
        kept = fork(nap, "kept")
    assert await kept == "kept"


@pytest.mark.anyio
async def test_a_failing_body_cancels_the_forks_and_is_grouped_with_their_failures() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(KeyError), pytest.RaisesExc(ValueError, match="fork")):
        async with forkwait.scope():
            pending = fork(anyio.sleep_forever)
            failed = fork(fails, "fork")
            await anyio.sleep(0.05)
            raise KeyError("body")
    assert pending.cancelled()
    assert failed.done()


# -- cancellation ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_stops_the_body_and_the_forks_but_lets_running_sync_calls_finish(
    max_threads: Any,
) -> None:
    max_threads(1)
    started = threading.Event()
    release = threading.Event()

    def running() -> str:
        started.set()
        release.wait(10)
        return "finished"

    async with forkwait.scope() as s:
        sync_call = fork(running)
        queued = fork(lambda: "never")  # the one thread is busy: this stays queued
        task = fork(anyio.sleep_forever)
        await anyio.to_thread.run_sync(started.wait, 10)
        s.cancel()
        release.set()
        await anyio.sleep_forever()  # the body is cancelled too
    assert s.cancel_called
    assert sync_call.result() == "finished"
    assert queued.cancelled()
    assert task.cancelled()


@pytest.mark.anyio
async def test_a_sync_call_blocked_in_wait_gets_cancelled_error_when_its_scope_is_cancelled() -> (
    None
):
    never = threading.Event()
    outside = fork(never.wait, 20)  # not in the scope: cancelling the scope cannot stop it
    blocked = threading.Event()

    def waits_for_it() -> Any:
        blocked.set()
        return wait(outside)

    async with forkwait.scope() as s:
        waiter = fork(waits_for_it)
        await anyio.to_thread.run_sync(blocked.wait, 10)
        s.cancel()
    with pytest.raises(forkwait.CancelledError):
        await waiter
    assert not outside.done()
    never.set()
    assert await outside is True


@pytest.mark.anyio
async def test_cancelling_the_code_around_the_scope_cancels_its_forks() -> None:
    with anyio.move_on_after(0.05) as deadline:
        async with forkwait.scope():
            pending = fork(anyio.sleep_forever)
            await anyio.sleep_forever()
    assert deadline.cancelled_caught
    assert pending.cancelled()


@pytest.mark.anyio
async def test_forks_made_after_cancel_are_cancelled_at_once() -> None:
    async with forkwait.scope() as s:
        s.cancel()
        late = fork(nap, "late")
    assert late.cancelled()


def test_sync_calls_forked_after_cancel_never_run() -> None:
    """Even with idle workers ready to take them before cancel() reaches them."""
    wait(fork(sum, [1]))  # an idle worker exists
    ran: list[int] = []
    with forkwait.scope() as s:
        s.cancel()
        late = [fork(ran.append, i) for i in range(20)]
    assert all(fut.cancelled() for fut in late)
    assert ran == []


@pytest.mark.anyio
async def test_exception_in_a_cancelled_scope_gets_cancelled_error_too() -> None:
    never = threading.Event()
    outside = fork(never.wait, 20)
    blocked = threading.Event()

    def asks_for_its_exception() -> Any:
        blocked.set()
        return outside.exception()

    async with forkwait.scope() as s:
        waiter = fork(asks_for_its_exception)
        await anyio.to_thread.run_sync(blocked.wait, 10)
        s.cancel()
    assert waiter.cancelled()
    never.set()
    assert await outside is True


def test_a_long_lived_scope_forgets_finished_forks() -> None:
    with forkwait.scope() as s:
        for i in range(300):
            assert wait(fork(abs, -i)) == i
        assert len(s._futures) < 300


def test_a_sync_scope_nested_in_forked_calls_cannot_starve_one_thread(max_threads: Any) -> None:
    """A worker waiting at the end of its scope gives its thread back (no deadlock)."""
    max_threads(1)

    def level(depth: int) -> int:
        if depth == 0:
            return 1
        with forkwait.scope():
            children = [fork(level, depth - 1) for _ in range(2)]
        return sum(child.result() for child in children)

    assert wait(fork(level, 4)) == 16


def test_a_scope_is_entered_once() -> None:
    s = forkwait.scope()
    with s, pytest.raises(RuntimeError, match="entered only once"), s:
        pass


# -- attached to an anyio task group ------------------------------------------------------


@pytest.mark.anyio
async def test_forks_live_with_the_task_group_they_are_attached_to() -> None:
    nested: list[Future[Any]] = []
    async with anyio.create_task_group() as tg:
        with forkwait.scope(task_group=tg):
            direct = fork(nap, "direct", 0.05)
            outer = fork(forks_a_nested_call, nested)
        assert not direct.done(), "leaving an attached scope does not wait"
    assert direct.done()
    assert outer.done()
    assert nested[0].done(), "the task group waited for the nested fork too"


@pytest.mark.anyio
async def test_a_failing_fork_fails_the_task_group_like_its_own_tasks() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="in the group")):
        async with anyio.create_task_group() as tg:
            with forkwait.scope(task_group=tg):
                fork(fails, "in the group")
                sibling = fork(anyio.sleep_forever)
            other_task_ran = False

            async def own_task() -> None:
                nonlocal other_task_ran
                await anyio.sleep_forever()
                other_task_ran = True

            tg.start_soon(own_task)
    assert sibling.cancelled()
    assert not other_task_ran


async def fails_at_once() -> None:
    raise ValueError("at once")


@pytest.mark.anyio
async def test_an_awaited_failure_is_not_raised_into_the_task_group() -> None:
    async with anyio.create_task_group() as tg:
        with forkwait.scope(task_group=tg):
            failing_at_once = fork(fails_at_once)  # fails in its first step
        with pytest.raises(ValueError, match="at once"):
            await failing_at_once  # awaited before it ran: the failure is the body's
        with forkwait.scope(task_group=tg):
            failing = fork(fails, "mine")
        with pytest.raises(ValueError, match="mine"):
            await failing


@pytest.mark.anyio
async def test_a_scope_attached_from_a_worker_thread_hands_its_forks_to_the_loop() -> None:
    def in_a_worker(tg: anyio.abc.TaskGroup) -> Future[Any]:
        with forkwait.scope(task_group=tg):
            return fork(nap, "from a worker", 0.01)

    async with anyio.create_task_group() as tg:
        fut = await anyio.to_thread.run_sync(in_a_worker, tg)
    assert await fut == "from a worker"


@pytest.mark.anyio
async def test_forks_obey_the_task_groups_cancel_scope(max_threads: Any) -> None:
    max_threads(1)
    started = threading.Event()
    release = threading.Event()

    def running() -> str:
        started.set()
        release.wait(10)
        return "finished"

    async with anyio.create_task_group() as tg:
        with forkwait.scope(task_group=tg):
            sync_call = fork(running)
            queued = fork(lambda: "never")
            task = fork(anyio.sleep_forever)
        await anyio.to_thread.run_sync(started.wait, 10)
        settled = threading.Event()
        queued.add_done_callback(lambda _: settled.set())
        tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            # The group's tasks see the cancellation at their next checkpoint; until
            # the queued call is settled, keep the one thread busy.
            await anyio.to_thread.run_sync(settled.wait, 10)
        release.set()
    assert sync_call.done(), "the task group waited for the running sync call"
    assert sync_call.result() == "finished"
    assert queued.cancelled()
    assert task.cancelled()


@pytest.mark.anyio
async def test_forks_obey_deadlines_around_the_task_group() -> None:
    slow: Future[None] | None = None

    async def times_out() -> None:
        nonlocal slow
        with anyio.fail_after(0.05):
            async with anyio.create_task_group() as tg:
                with forkwait.scope(task_group=tg):
                    slow = fork(anyio.sleep_forever)

    with pytest.raises(TimeoutError):
        await times_out()
    assert slow is not None
    assert slow.cancelled()
    with anyio.move_on_after(0.05):
        async with anyio.create_task_group() as tg:
            with forkwait.scope(task_group=tg):
                slow = fork(anyio.sleep_forever)
    assert slow.cancelled()


@pytest.mark.anyio
async def test_a_fork_that_fails_after_the_group_was_cancelled_fails_the_group() -> None:
    """As an anyio to_thread task does: a running sync call cannot be stopped, and its
    failure still reaches the task group."""
    release = threading.Event()

    def fails_when_released() -> None:
        release.wait(10)
        raise ValueError("late")

    async def cancel_and_release() -> None:
        async with anyio.create_task_group() as tg:
            with forkwait.scope(task_group=tg):
                fork(fails_when_released)
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                for _ in range(3):  # the keeper steps: cancelled, it waits for the call
                    await anyio.lowlevel.checkpoint()
                release.set()

    with pytest.raises(ExceptionGroup) as caught:
        await cancel_and_release()
    assert [repr(e) for e in caught.value.exceptions] == ["ValueError('late')"]


@pytest.mark.anyio
async def test_forks_failing_at_once_both_reach_the_group() -> None:
    """Both sync calls raised: the first failure cancels the group while the keeper of
    the second steps to raise it, and that step must not lose it."""
    for _ in range(5):  # the two failures meet in the loop only now and then
        meet = threading.Barrier(2, timeout=10)

        def fails_with_the_other(message: str, meet: threading.Barrier = meet) -> None:
            meet.wait()
            raise ValueError(message)

        with pytest.RaisesGroup(ValueError, ValueError):
            async with anyio.create_task_group() as tg:
                with forkwait.scope(task_group=tg):
                    fork(fails_with_the_other, "a")
                    fork(fails_with_the_other, "b")


@pytest.mark.anyio
async def test_a_fork_in_a_scope_of_a_task_group_that_has_exited_is_refused() -> None:
    async with anyio.create_task_group() as tg:
        pass
    with (
        forkwait.scope(task_group=tg),
        pytest.raises(RuntimeError, match="inside `async with tg:`"),
    ):
        fork(anyio.sleep, 0)


@pytest.mark.anyio
async def test_a_sync_call_blocked_in_wait_gets_cancelled_error_when_the_group_is_cancelled() -> (
    None
):
    never = threading.Event()
    outside = fork(never.wait, 20)
    blocked = threading.Event()

    def waits_for_it() -> Any:
        blocked.set()
        return wait(outside)

    async with anyio.create_task_group() as tg:
        with forkwait.scope(task_group=tg):
            waiter = fork(waits_for_it)
        await anyio.to_thread.run_sync(blocked.wait, 10)
        tg.cancel_scope.cancel()
    assert waiter.cancelled()
    never.set()
    assert await outside is True


def test_an_attached_scope_works_where_sniffio_is_not_installed() -> None:
    """anyio no longer needs sniffio; a fork from a worker thread, handed to the task
    group on the loop, must not need it either."""
    result = run_script(
        """
        import sys
        sys.modules["sniffio"] = None  # as if it were not installed: importing it fails
        import anyio
        import forkwait
        from forkwait import fork, wait

        async def nap():
            await anyio.sleep(0.01)
            return "napped"

        def in_a_worker():
            return wait(fork(nap))  # a nested fork, from the worker thread

        async def main():
            async with anyio.create_task_group() as tg:
                with forkwait.scope(task_group=tg):
                    fut = fork(in_a_worker)
            print(await fut)

        anyio.run(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "napped\n"
    assert "Error" not in result.stderr


# -- forks that appear while leaving; scopes inside scopes ------------------------------


@pytest.mark.anyio
async def test_a_nested_fork_failing_while_leaving_cancels_the_fork_waiting_for_it() -> None:
    """The scope is already leaving when a running fork forks the one that fails: that
    failure still cancels the rest (which would otherwise wait for good)."""
    never = anyio.Event()

    async def producer() -> None:
        await anyio.sleep(0.01)
        raise ValueError("the nested fork failed")

    async def consumer() -> None:
        fork(producer)
        await never.wait()  # for what the producer was to make

    with anyio.CancelScope(deadline=anyio.current_time() + 10) as deadline:
        with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="nested")):
            async with forkwait.scope():
                fork(consumer)
    assert not deadline.cancel_called, "only the deadline ended the wait"


@pytest.mark.anyio
async def test_a_failure_an_inner_scope_raises_and_its_caller_handles_stays_inside() -> None:
    """As with anyio's nested task groups: the inner scope raises its fork's failure to
    the code around it, and the outer scope's other forks go on."""

    def handles_its_scope() -> str:
        try:
            with forkwait.scope():
                fork(fails, "inner")
                fork(nap, None, 0.05)
        except ExceptionGroup:
            return "handled"
        return "not raised"

    async with forkwait.scope():
        handler = fork(handles_its_scope)
        sibling = fork(nap, "sibling", 0.2)
    assert handler.result() == "handled"
    assert sibling.result() == "sibling"


@pytest.mark.anyio
async def test_cancelling_the_outer_scope_reaches_forks_of_an_inner_one() -> None:
    started = threading.Event()
    inner: list[Future[Any]] = []

    def runs_an_inner_scope() -> None:
        with forkwait.scope():
            inner.append(fork(nap, None, 3600))
            started.set()

    async with forkwait.scope() as outer:
        fork(runs_an_inner_scope)
        await anyio.to_thread.run_sync(started.wait, 10)
        outer.cancel()
    assert inner[0].cancelled()


def test_a_sync_inner_scope_cancelled_from_outside_still_raises_its_forks_failures() -> None:
    """As anyio's nested groups do: the outer failure, and the inner group with the
    failure of the fork that the inner scope waited for after the cancellation."""
    leaving = threading.Event()

    def fails_later() -> None:
        assert leaving.wait(10)
        time.sleep(0.3)  # long after the outer failure has cancelled the scopes
        raise ValueError("inner")

    def runs_an_inner_scope() -> None:
        with forkwait.scope():
            fork(fails_later)
            leaving.set()

    def outer_fails() -> None:
        assert leaving.wait(10)
        raise KeyError("outer")

    with (
        pytest.RaisesGroup(
            KeyError, pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="inner"))
        ),
        forkwait.scope(),
    ):
        fork(runs_an_inner_scope)
        fork(outer_fails)


def test_a_sync_scope_cancelled_while_its_body_waits_ends_quietly() -> None:
    """The scope's own cancellation, which the body's wait raises, ends at the scope, as
    an async scope's (anyio's cancel scope) does."""
    release = threading.Event()
    outside = fork(release.wait, 10)  # in no scope: it finishes only once released
    reached: list[str] = []
    with forkwait.scope() as s:
        threading.Thread(target=s.cancel).start()  # before the wait or during it
        wait(outside)
        reached.append("after the wait")
    assert reached == []
    assert s.cancel_called
    release.set()
    assert wait(outside) is True


def test_a_sync_inner_scope_passes_an_outer_cancellation_on_as_it_is() -> None:
    """The outer scope's cancellation interrupts the inner body's wait: the inner scope
    raises it again, not in an ExceptionGroup, so the fork running it is cancelled and
    the outer scope, whose cancellation it is, ends quietly."""
    release = threading.Event()
    outside = fork(release.wait, 10)  # in no scope
    entered = threading.Event()

    def waits_in_an_inner_scope() -> bool:
        with forkwait.scope():
            entered.set()
            return wait(outside)

    with forkwait.scope() as outer:
        inner = fork(waits_in_an_inner_scope)
        assert entered.wait(10)
        outer.cancel()
    assert inner.cancelled()
    release.set()
    assert wait(outside) is True


def _leaves_an_inner_scope_with_an_error(
    outside: Future[Any], failed: threading.Event, release: threading.Event
) -> None:
    started = threading.Event()

    def runs_until_released() -> None:
        started.set()
        with pytest.raises(forkwait.CancelledError):
            wait(outside)  # until the inner scope is cancelled, as its body fails
        failed.set()
        assert release.wait(10)  # and still running: the inner scope waits for it

    with forkwait.scope():
        fork(runs_until_released)
        assert started.wait(10)
        raise ValueError("inner body")


def test_an_inner_scopes_error_survives_an_outer_cancellation() -> None:
    """The outer scope is cancelled while the inner one, leaving with its body's error,
    waits for its fork: the error is raised, grouped as anyio's groups do, not lost."""
    never = threading.Event()
    outside = fork(never.wait, 20)  # in no scope
    for _ in range(5):  # the release may end the inner wait before the cancellation does
        failed = threading.Event()
        release = threading.Event()
        with (
            pytest.RaisesGroup(
                pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="inner body"))
            ),
            forkwait.scope() as outer,
        ):
            fork(_leaves_an_inner_scope_with_an_error, outside, failed, release)
            assert failed.wait(10)
            outer.cancel()
            release.set()
    never.set()
    assert wait(outside) is True


@pytest.mark.anyio
async def test_an_async_inner_scopes_error_survives_an_outer_cancellation() -> None:
    release = threading.Event()
    leaving = anyio.Event()

    async def leaves_an_inner_scope_with_an_error() -> None:
        async with forkwait.scope():
            fork(release.wait, 10)
            leaving.set()
            raise ValueError("inner body")

    with pytest.RaisesGroup(pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="inner body"))):
        async with forkwait.scope() as outer:
            fork(leaves_an_inner_scope_with_an_error)
            await leaving.wait()
            outer.cancel()
            release.set()


def test_cancelling_an_outer_scope_reaches_an_inner_scopes_forks_at_once() -> None:
    started = threading.Event()
    release = threading.Event()
    inner: list[Future[Any]] = []

    def busy_inner_body() -> None:
        with forkwait.scope():
            inner.append(fork(nap, None, 3600))
            started.set()
            release.wait(10)  # busy: the inner scope is not leaving yet

    with forkwait.scope() as outer:
        fork(busy_inner_body)
        assert started.wait(10)
        outer.cancel()
        for _ in range(10_000_000):  # the cancellation reaches the loop soon: no event says so
            if inner[0].done():
                break
        cancelled_before_release = inner[0].cancelled()
        release.set()
    assert cancelled_before_release


def _fails_once_registered(registered: threading.Event) -> None:
    assert registered.wait(10)
    raise ValueError("for the awaiter")


async def _fails_once_registered_async(registered: threading.Event) -> None:
    await anyio.to_thread.run_sync(registered.wait, 10)
    raise ValueError("for the awaiter")


async def _sibling_until(release: threading.Event) -> str:
    await anyio.to_thread.run_sync(release.wait, 10)
    return "finished"


def _await_in_another_thread(
    library: str, fut: Future[None], registered: threading.Event, release: threading.Event
) -> list[BaseException]:
    """A task of a loop (or trio run) in a thread of its own awaits ``fut``: it sets
    ``registered`` once its await is registered, and ``release`` once it has the
    failure, which it puts in the list returned."""
    import asyncio

    import trio

    caught: list[BaseException] = []

    def hold_the_loop() -> None:
        time.sleep(0.2)  # the failure comes, and the scope judges it, in this turn

    async def main() -> None:
        # Run once this step, which registers the await below, is over.
        if library == "trio":
            trio.lowlevel.current_trio_token().run_sync_soon(registered.set)
            trio.lowlevel.current_trio_token().run_sync_soon(hold_the_loop)
        else:
            asyncio.get_running_loop().call_soon(registered.set)
            asyncio.get_running_loop().call_soon(hold_the_loop)
        try:
            await fut
        except ValueError as exc:
            caught.append(exc)
        release.set()

    def run() -> None:
        trio.run(main) if library == "trio" else asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    return caught


@pytest.mark.parametrize(
    ("library", "failing"),
    [
        ("asyncio", _fails_once_registered),
        ("asyncio", _fails_once_registered_async),  # a task on the default runtime
        ("trio", _fails_once_registered),
    ],
)
def test_a_sync_scope_leaves_a_failure_to_a_task_awaiting_it_on_another_loop(
    library: str, failing: Any
) -> None:
    """The failure is the awaiting task's the moment it happens: the scope must not
    also judge it unretrieved (cancelling the sibling and raising it) while the
    awaiter's loop, in another thread, has yet to run the hand-off."""
    for _ in range(3):
        registered = threading.Event()
        release = threading.Event()
        with forkwait.scope():
            fut = fork(failing, registered)
            other = fork(_sibling_until, release)
            caught = _await_in_another_thread(library, fut, registered, release)
        assert release.wait(10)
        assert len(caught) == 1, "the awaiting task got the failure"
        assert other.result() == "finished", "the sibling was not cancelled"


def test_a_sync_scope_leaves_a_failure_to_a_fork_blocked_waiting_for_it() -> None:
    """Even when the scope's own wait was registered first: waiters that take the
    failure are woken before done callbacks."""

    def waiters(fut: Future[Any]) -> int:
        return len(fut._waiters or ())

    def until_waiters(fut: list[Future[Any]], count: int) -> None:
        # No event tells when a waiter is registered: look at the future itself.
        deadline = time.monotonic() + 10
        while not fut or waiters(fut[0]) < count:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    for _ in range(2):
        box: list[Future[Any]] = []
        release = threading.Event()

        def fails(box: list[Future[Any]] = box) -> None:
            until_waiters(box, 3)  # the scope's, then the two of the fork below
            raise ValueError("for the fork that waits")

        def waits_for_it(box: list[Future[Any]] = box, release: threading.Event = release) -> str:
            until_waiters(box, 1)  # the scope's
            # A slow done callback after the scope's: the scope judges while it runs.
            box[0].add_done_callback(lambda _: time.sleep(0.2))
            try:
                wait(box[0])
            except ValueError:
                return "caught"
            finally:
                release.set()
            return "not raised"

        with forkwait.scope():
            box.append(fork(fails))
            waiter = fork(waits_for_it)
            other = fork(_sibling_until, release)
        assert waiter.result() == "caught"
        assert other.result() == "finished", "the sibling was not cancelled"


@pytest.mark.anyio
async def test_a_sync_with_scope_in_async_code_says_to_use_async_with() -> None:
    with (
        pytest.raises(RuntimeError, match=r"write `async with forkwait.scope\(\):`"),
        forkwait.scope(),
    ):
        pass


@pytest.mark.parametrize("task_group", ["nope", object()])
def test_a_task_group_that_is_not_one_is_a_type_error(task_group: Any) -> None:
    with pytest.raises(TypeError, match=r"scope\(task_group=...\) takes an anyio TaskGroup"):
        forkwait.scope(task_group=task_group)
