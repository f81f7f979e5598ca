"""The C fast paths (``forkwait._speedups``): built here, and the same as the Python code.

Every test in the suite runs on the C paths; ``make test`` also runs the core tests with
``FORKWAIT_PURE_PYTHON=1``. These tests aim at what the C code does itself: the task's
coroutine (send, throw, close, a loop that closes under it), the await's hand-over to
the Python wait, reference counts, and ``fork`` looking like the function it replaces.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Generator
from typing import Any, cast

import pytest

import forkwait
from forkwait import CancelledError, fork, wait
from forkwait._compiled import running_loop, speedups

from .conftest import run_python

pytestmark = pytest.mark.timeout(60)

PURE = os.environ.get("FORKWAIT_PURE_PYTHON", "") not in ("", "0")


@pytest.mark.skipif(PURE, reason="FORKWAIT_PURE_PYTHON is set")
def test_the_c_fast_paths_are_built_and_used() -> None:
    # `make test` installs with a compiler: a build that failed quietly must not pass.
    assert speedups is not None
    assert isinstance(forkwait.fork, speedups.Fork)
    assert forkwait.Future.__mro__[1] is speedups.FutureCore


def test_pure_python_is_chosen_by_the_environment() -> None:
    done = run_python(
        "-c",
        "import forkwait, forkwait._compiled as c; assert c.speedups is None; "
        "import asyncio\n"
        "async def f(x): return x + 1\n"
        "async def main(): return await forkwait.fork(f, 1)\n"
        "print(asyncio.run(main()), type(forkwait.fork).__name__)",
        env={"FORKWAIT_PURE_PYTHON": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "function"]


def test_fork_looks_like_the_function_it_replaces() -> None:
    params = list(inspect.signature(fork).parameters.values())
    assert [(p.name, p.kind) for p in params] == [
        ("func", inspect.Parameter.POSITIONAL_ONLY),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    assert fork.__name__ == "fork"
    assert fork.__module__ == "forkwait"  # as the docs name it
    assert fork.__doc__ is not None
    assert fork.__doc__.startswith("Start ``func(")
    assert pickle.loads(pickle.dumps(fork)) is fork


async def _add(a: int, b: int = 0) -> int:
    return a + b


async def _pair() -> tuple[int, int]:
    return (1, 2)


async def _stop() -> StopIteration:
    return StopIteration(7)


@pytest.mark.asyncio
@pytest.mark.parametrize("pending", [True, False], ids=["pending", "done"])
async def test_values_that_look_like_generator_returns_come_back_whole(pending: bool) -> None:
    # A tuple or a StopIteration as the value: the C return must not unpack or raise it.
    futs = [fork(_pair), fork(_stop), fork(_add, 40, b=2)]
    if not pending:
        await asyncio.sleep(0)
        assert all(f.done() for f in futs)
    assert await futs[0] == (1, 2)
    stop = await futs[1]
    assert isinstance(stop, StopIteration)
    assert stop.value == 7
    assert await futs[2] == 42


@pytest.mark.asyncio
async def test_a_call_that_has_not_finished_in_one_step_is_waited_for() -> None:
    # The await yields once for the task's first step, then hands over to a waiter.
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    fut = fork(slow)
    waiter = asyncio.ensure_future(fut)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    assert await waiter == "late"


@pytest.mark.asyncio
async def test_an_awaiting_task_cancelled_on_its_turn_leaves_the_call_running() -> None:
    gate = asyncio.Event()

    async def slow() -> int:
        await gate.wait()
        return 5

    fut = fork(slow)

    async def awaiter() -> int:
        return await fut

    task = asyncio.ensure_future(awaiter())
    await asyncio.sleep(0)  # it is at its bare yield now, or past it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not fut.done()
    gate.set()
    assert await fut == 5


@pytest.mark.asyncio
async def test_cancel_before_the_first_step_never_runs_the_call() -> None:
    ran = []

    async def call() -> None:
        ran.append(1)

    fut = fork(call)
    assert fut.cancel()
    with pytest.raises(CancelledError):
        await fut
    assert fut.cancelled()
    assert ran == []  # and no "never awaited" warning: the suite makes that an error


@pytest.mark.asyncio
async def test_cancel_while_the_call_awaits_reaches_the_call() -> None:
    inside = asyncio.Event()
    cleaned = []

    async def call() -> None:
        inside.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(1)

    fut = fork(call)
    await inside.wait()
    assert fut.cancel()
    with pytest.raises(CancelledError):
        await fut
    assert cleaned == [1]


@pytest.mark.asyncio
async def test_a_call_that_catches_the_cancellation_and_returns_keeps_its_value() -> None:
    inside = asyncio.Event()

    async def stubborn() -> str:
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "kept"
        return "unreachable"

    fut = fork(stubborn)
    await inside.wait()
    fut.cancel()
    assert await fut == "kept"


@pytest.mark.asyncio
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, ValueError])
async def test_what_the_call_raises_goes_to_the_waiter_not_the_loop(
    exc_type: type[BaseException],
) -> None:
    async def call() -> None:
        raise exc_type("from the call")

    fut = fork(call)
    with pytest.raises(exc_type, match="from the call") as info:
        await fut
    names = [frame.name for frame in traceback.extract_tb(info.tb)]
    assert "call" in names


@pytest.mark.asyncio
async def test_a_coroutine_function_that_returns_another_awaitable_is_awaited() -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    async def template() -> int:
        return 0

    def plain() -> asyncio.Future[int]:
        return ready

    # A function with a coroutine's code flags that returns a plain future.
    plain.__code__ = plain.__code__.replace(co_flags=plain.__code__.co_flags | 0x80)
    fut: forkwait.Future[Any] = fork(plain)
    loop.call_soon(ready.set_result, 9)
    assert await fut == 9
    assert inspect.iscoroutinefunction(template)


def test_a_task_destroyed_with_its_closed_loop_cancels_the_future() -> None:
    loop = asyncio.new_event_loop()
    started = []

    async def forever() -> None:
        started.append(1)
        await asyncio.Event().wait()

    async def start() -> forkwait.Future[None]:
        fut = fork(forever)
        await asyncio.sleep(0)
        return fut

    fut = loop.run_until_complete(start())
    assert started == [1]
    loop.close()  # the task is still pending: nothing will ever step it again
    with pytest.raises((CancelledError, RuntimeError)):
        wait(fut, timeout=10)


@pytest.mark.skipif(PURE, reason="the Python driver's own frame is the task's stack")
@pytest.mark.asyncio
async def test_a_pending_task_shows_the_call_in_its_stack() -> None:
    inside = asyncio.Event()

    async def deep_in_the_call() -> None:
        inside.set()
        await asyncio.Event().wait()

    fut = fork(deep_in_the_call)
    await inside.wait()
    task = fut._handle
    assert isinstance(task, asyncio.Task)
    assert [frame.f_code.co_name for frame in task.get_stack()] == ["deep_in_the_call"]
    assert "Task" in repr(task)
    fut.cancel()
    with pytest.raises(CancelledError):
        await fut


def _cycles(run: Callable[[int], None], n: int) -> tuple[int, int]:
    """Objects alive and references to a marker after ``n`` cycles, from a warm start."""
    run(200)
    gc.collect()
    return len(gc.get_objects()), sys.getrefcount(_MARKER)


_MARKER = object()


async def _echo(value: object) -> object:
    return value


async def _fail(value: object) -> None:
    raise ValueError(value)


@pytest.mark.parametrize("kind", ["awaited", "fanned out", "failed", "cancelled"])
def test_no_reference_is_leaked_per_fork(kind: str) -> None:
    async def cycles(n: int) -> None:
        for _ in range(n):
            if kind == "awaited":
                assert await fork(_echo, _MARKER) is _MARKER
            elif kind == "fanned out":
                futs = [fork(_echo, _MARKER) for _ in range(3)]
                await asyncio.sleep(0)
                for f in futs:
                    assert await f is _MARKER
            elif kind == "failed":
                with pytest.raises(ValueError, match="object at"):
                    await fork(_fail, _MARKER)
            else:
                fut = fork(_echo, _MARKER)
                fut.cancel()
                with pytest.raises(CancelledError):
                    await fut

    loop = asyncio.new_event_loop()
    try:

        def run(n: int) -> None:
            loop.run_until_complete(cycles(n))

        objects, refs = _cycles(run, 200)
        run(5000)
        gc.collect()
        # A leak of one object or reference per cycle would show as thousands.
        assert len(gc.get_objects()) - objects < 500
        assert sys.getrefcount(_MARKER) - refs < 50
    finally:
        loop.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("step", ["send", "throw", "close"])
async def test_a_call_cannot_step_its_own_task_coroutine(step: str) -> None:
    # The coroutine is running: stepping it again must be refused, not free its frame.
    refused = []

    async def call() -> int:
        coro: Any = asyncio.current_task().get_coro()  # type: ignore[union-attr]
        try:
            if step == "send":
                coro.send(None)
            elif step == "throw":
                coro.throw(ValueError("in"))
            else:
                coro.close()
        except ValueError as exc:
            refused.append(str(exc))
        await asyncio.sleep(0)
        return 42

    assert await fork(call) == 42
    assert refused == ["coroutine already executing"]


@pytest.mark.asyncio
async def test_closing_a_task_whose_call_ignores_the_close_fails_the_future() -> None:
    inside = asyncio.Event()

    async def stubborn() -> None:
        try:
            inside.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # an await here ignores the GeneratorExit

    fut = fork(stubborn)
    await inside.wait()
    task = fut._handle
    task.get_coro().close()
    with pytest.raises(RuntimeError, match="ignored GeneratorExit"):
        await fut
    task.cancel()  # the task itself is stuck on a closed coroutine: end it quietly
    with pytest.raises((asyncio.CancelledError, RuntimeError)):
        await task


@pytest.mark.asyncio
async def test_a_generator_exit_thrown_into_the_task_cancels_the_future() -> None:
    inside = asyncio.Event()

    async def call() -> None:
        inside.set()
        await asyncio.Event().wait()

    fut = fork(call)
    await inside.wait()
    task = fut._handle
    with pytest.raises(GeneratorExit):
        task.get_coro().throw(GeneratorExit())
    assert fut.cancelled()
    task.cancel()
    with pytest.raises((asyncio.CancelledError, RuntimeError)):
        await task


def test_fork_can_be_copied_and_weakly_referenced() -> None:
    import copy
    import weakref

    assert copy.copy(fork) is fork
    assert copy.deepcopy(fork) is fork
    assert weakref.ref(fork)() is fork


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["_handle", "_value"])
async def test_an_emptied_field_raises_attribute_error(field: str) -> None:
    gate = asyncio.Event()

    async def call() -> int:
        if field == "_handle":
            await gate.wait()
        return 1

    fut = fork(call)
    if field == "_value":
        assert await fut == 1
    delattr(fut, field)
    with pytest.raises(AttributeError, match=field):
        await fut
    gate.set()


def test_a_future_in_a_reference_cycle_is_collected() -> None:
    import weakref

    async def returns(value: list[Any]) -> list[Any]:
        return value

    async def main() -> weakref.ref[Any]:
        box: list[Any] = []
        fut = fork(returns, box)
        await fut
        box.append(fut)  # future -> its value (box) -> future
        return weakref.ref(fut)

    ref = asyncio.run(main())
    gc.collect()
    assert ref() is None


def test_a_long_chain_of_futures_is_freed_without_overflowing_the_stack() -> None:
    # Each future's value is the future before it: freeing the last frees them all,
    # one inside the other, unless deallocation defers the depth (as CPython's does).
    async def main() -> int:
        fut: Any = None
        for _ in range(200_000):
            fut = await _settled(fork(_echo, fut))
        head = fut
        del fut
        return 1 if head is not None else 0

    async def _settled(fut: forkwait.Future[Any]) -> forkwait.Future[Any]:
        await fut
        return fut

    assert asyncio.run(main()) == 1


def test_a_subclass_of_future_in_a_cycle_with_its_instance_is_collected() -> None:
    import weakref

    def make() -> weakref.ref[type]:
        class Sub(forkwait.Future[Any]):
            __slots__ = ()

        Sub.kept = Sub.__new__(Sub)  # type: ignore[attr-defined]  # class -> instance -> class
        return weakref.ref(Sub)

    refs = [make() for _ in range(20)]
    gc.collect()
    assert [ref() for ref in refs] == [None] * 20


class _BadThrowRelay:
    """Awaits a future's await, throwing None into it once (refused) on the way."""

    def __init__(self, fut: forkwait.Future[int]) -> None:
        self.it: Any = fut.__await__()

    def __await__(self) -> Generator[Any, None, int]:
        step = next(self.it)
        with pytest.raises(TypeError, match="deriving from BaseException"):
            self.it.throw(None)
        while True:
            yield step
            try:
                step = self.it.send(None)
            except StopIteration as stop:
                return cast(int, stop.value)


@pytest.mark.asyncio
async def test_a_bad_throw_into_an_await_leaves_it_waiting() -> None:
    # As with a generator: a throw() of something that is not an exception is refused
    # before anything changes, and the await goes on to the value.
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        return x

    assert await _BadThrowRelay(fork(slow, 42)) == 42
    done = fork(slow, 1)
    await done
    it: Any = done.__await__()
    with pytest.raises(TypeError, match="non-None value"):
        it.send(5)  # refused as a just-started generator refuses it; the await goes on
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value == 1


@pytest.mark.skipif(PURE, reason="the Python driver is a coroutine: asyncio's own rules")
@pytest.mark.asyncio
async def test_the_task_coroutine_cannot_be_awaited_by_another_task() -> None:
    gate = asyncio.Event()

    async def call() -> int:
        await gate.wait()
        return 3

    fut = fork(call)
    await asyncio.sleep(0)
    coro = fut._handle.get_coro()
    with pytest.raises(RuntimeError, match="cannot be awaited"):
        await coro
    gate.set()
    assert await fut == 3


def test_a_second_interpreter_runs_forkwait_in_pure_python() -> None:
    # The C module's state is process-wide: a sub-interpreter importing forkwait must not
    # take the main interpreter's fast paths over (they ran its code after it was gone).
    done = run_python(
        "-c",
        "import asyncio, gc, _xxsubinterpreters as interpreters, forkwait\n"
        "i = interpreters.create()\n"
        "interpreters.run_string(i, 'import forkwait, forkwait._compiled as c; "
        "assert c.speedups is None')\n"
        "interpreters.destroy(i)\n"
        "gc.collect()\n"
        "async def boom(): raise ValueError('x')\n"
        "async def main():\n"
        "    f = forkwait.fork(boom)\n"
        "    assert isinstance(f, forkwait.Future)\n"
        "    try: await f\n"
        "    except ValueError as e: print('raised', e)\n"
        "asyncio.run(main())\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raised x"
    assert done.stderr == ""


# -- running_loop: asyncio's _get_running_loop without its getpid() --------------------


def _both_running_loops() -> tuple[object, object]:
    return running_loop(), asyncio.events._get_running_loop()


def test_running_loop_agrees_with_asyncio_in_and_out_of_loops() -> None:
    import threading

    import uvloop

    seen: list[tuple[object, object]] = []

    def in_a_thread() -> None:  # no loop ever ran in it: no entry in its state dict
        seen.append(_both_running_loops())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert _both_running_loops() == (loop, loop)
        other = threading.Thread(target=in_a_thread)
        other.start()
        other.join()
        assert await fork(_both_running_loops_async) == (loop, loop)

    in_a_thread()
    asyncio.run(main())
    assert _both_running_loops() == (None, None)  # the loop stopped
    uvloop.run(main())
    assert _both_running_loops() == (None, None)
    assert seen == [(None, None)] * 3


async def _both_running_loops_async() -> tuple[object, object]:
    return _both_running_loops()


def test_running_loop_is_none_in_a_child_of_os_fork_made_inside_a_loop() -> None:
    # The child inherits the thread's record of the running loop, but that loop is the
    # parent's: asyncio says None there, and so must forkwait, whose forks then go to a
    # runtime of the child's own rather than to a loop nothing runs.
    done = run_python(
        "-c",
        "import asyncio, os, forkwait, forkwait._compiled as c\n"
        "async def double(x): return 2 * x\n"
        "async def main():\n"
        "    assert c.running_loop() is asyncio.get_running_loop()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            print(c.running_loop(), asyncio.events._get_running_loop(),"
        " forkwait.wait(forkwait.fork(double, 21), timeout=10), flush=True)\n"
        "        finally:\n"
        "            os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    print(c.running_loop() is asyncio.get_running_loop())\n"
        "asyncio.run(main())\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "None", "42", "True"]


@pytest.mark.parametrize("how", ["an at-fork hook registered before forkwait", "libc fork()"])
def test_running_loop_is_none_in_a_child_before_python_notes_the_fork(how: str) -> None:
    # Python's at-fork hooks run in the order registered, and C code may fork without
    # running them: the child's pid is noted inside fork() itself.
    if how == "libc fork()":
        forking = "pid = ctypes.CDLL(None).fork()\n    if pid == 0: report()\n"
    else:
        forking = "pid = os.fork()\n"
    done = run_python(
        "-c",
        "import asyncio, ctypes, os, sys\n"
        "def report():\n"
        "    import forkwait._compiled as c\n"
        "    os.write(1, f'{c.running_loop()} {asyncio.events._get_running_loop()}\\n'.encode())\n"
        "    os._exit(0)\n"
        "os.register_at_fork(after_in_child=lambda: 'forkwait' in sys.modules and report())\n"
        "import forkwait\n"
        "async def main():\n"
        f"    {forking}"
        "    os.waitpid(pid, 0)\n"
        "asyncio.run(main())\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "None"]
