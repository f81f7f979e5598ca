"""Whole-process behaviour, each in a fresh interpreter: exit, os.fork, choosing the loop."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.timeout(60)


def test_a_script_that_forks_and_exits_without_waiting_exits_cleanly() -> None:
    """Pending sync and async forks do not hold up exit, crash, or print a traceback."""
    result = run_script(
        """
        import asyncio, threading, time
        from forkwait import fork, wait

        async def slow():
            await asyncio.sleep(60)

        started = threading.Event()

        def blocking():
            started.set()
            time.sleep(60)

        fork(slow)
        fork(blocking)
        started.wait()
        print("leaving")
        """,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "leaving\n"
    assert "Traceback" not in result.stderr


def test_exit_does_not_wait_on_each_busy_worker_in_turn() -> None:
    """40 workers stuck in long calls: exit gives them one short grace period in all
    (it used to wait 0.2 s for each, 8 s here, past this run's deadline)."""
    result = run_script(
        """
        import threading, time
        import forkwait
        from forkwait import fork

        forkwait.configure(max_threads=40)
        started = threading.Semaphore(0)

        def blocking():
            started.release()
            time.sleep(60)

        for _ in range(40):
            fork(blocking)
        for _ in range(40):
            started.acquire()
        print("leaving")
        """,
        timeout=5,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "leaving\n"


def test_an_exit_hook_registered_before_forkwait_was_imported_can_still_fork() -> None:
    """Exit hooks run last-registered first: this one runs after forkwait's own, which
    let its worker threads go; a fork here gets a worker again."""
    result = run_script(
        """
        import atexit

        def flush():
            from forkwait import fork, wait

            def one():
                return "flushed"

            async def all_of_them():
                return await fork(one)

            print(wait(fork(all_of_them), timeout=20), wait(fork(one), timeout=20))

        atexit.register(flush)

        from forkwait import fork, wait

        async def main():
            return 1

        print(wait(fork(main)))
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\nflushed flushed\n"


def test_an_exit_hook_can_start_the_default_runtime_first() -> None:
    """uvloop cannot be loaded once exit has begun: the runtime starts on asyncio then."""
    result = run_script(
        """
        import atexit
        from forkwait import fork, wait

        async def flush():
            return await fork(lambda: "flushed")

        atexit.register(lambda: print(wait(fork(flush), timeout=20)))
        print(wait(fork(lambda: 1)))
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\nflushed\n"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_child_of_os_fork_made_in_a_worker_thread_runs_coroutines_of_its_own(
    backend: str,
) -> None:
    """The loop that the worker thread worked for does not run in the child: the
    child's forks go to its own default runtime, as from plain sync code."""
    result = run_script(
        f"""
        import os
        import anyio
        import forkwait
        from forkwait import fork, wait

        async def double(x):
            await anyio.sleep(0)
            return 2 * x

        def forks_the_process():
            pid = os.fork()
            if pid == 0:
                try:
                    print(wait(fork(double, 21), timeout=10), flush=True)
                finally:
                    os._exit(0)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        async def main():
            print(await fork(forks_the_process))
            print(await anyio.to_thread.run_sync(forks_the_process))

        anyio.run(main, backend={backend!r})
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "0", "42", "0"], result.stdout + result.stderr


def test_the_child_of_os_fork_can_fork_and_wait() -> None:
    """After os.fork the parent's loop thread is gone; the child starts its own runtime."""
    result = run_script(
        """
        import asyncio, os, sys
        from forkwait import fork, wait

        async def double(x):
            await asyncio.sleep(0)
            return 2 * x

        assert wait(fork(double, 1)) == 2   # the parent's runtime is running
        assert wait(fork(abs, -3)) == 3     # and its worker threads
        pid = os.fork()
        if pid == 0:
            try:
                ok = wait(fork(double, 21), timeout=10) == 42
                ok = ok and wait(fork(abs, -5), timeout=10) == 5
            except BaseException as exc:
                print("child failed:", repr(exc), file=sys.stderr)
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        assert wait(fork(double, 2)) == 4   # the parent still works
        """
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout, result.stderr


def test_the_child_of_os_fork_made_in_a_trio_task_runs_as_plain_sync_code() -> None:
    """multiprocessing's fork start method, from trio code: the trio run is the parent's
    (as asyncio's loop is), so the child's waits block and its coroutines get a runtime."""
    result = run_script(
        """
        import os, sys, trio
        from forkwait import fork, wait

        async def double(x):
            return 2 * x

        async def main():
            pid = os.fork()
            if pid == 0:
                try:
                    ok = wait(fork(abs, -5)) == 5
                    ok = ok and fork(double, 21).result(timeout=10) == 42
                except BaseException as exc:
                    print("child failed:", repr(exc), file=sys.stderr)
                    ok = False
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status))

        trio.run(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout, result.stderr


def test_the_child_of_os_fork_watches_its_own_trio_awaits_of_app_loops() -> None:
    """The parent's watcher thread (forked while a trio task awaited a future of an app's
    loop) is not in the child: the child's awaits get one of their own."""
    result = run_script(
        """
        import asyncio, os, threading, trio
        from forkwait import fork

        def a_loop():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True)
            thread.start()
            return loop, thread

        async def forever():
            await asyncio.Event().wait()

        async def start():
            return fork(forever)

        def close(loop, thread):
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

        async def await_it(loop, thread, then_close):
            fut = asyncio.run_coroutine_threadsafe(start(), loop).result()
            async with trio.open_nursery() as nursery:
                if then_close:
                    nursery.start_soon(trio.to_thread.run_sync, close, loop, thread)
                with trio.fail_after(10):
                    try:
                        await fut
                    except RuntimeError:
                        return "woken"

        loop, thread = a_loop()
        watching = threading.Event()

        async def parent():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(await_it, loop, thread, False)
                await trio.testing.wait_all_tasks_blocked()
                watching.set()

        import trio.testing
        threading.Thread(target=trio.run, args=(parent,), daemon=True).start()
        watching.wait(10)
        pid = os.fork()
        if pid == 0:
            child_loop, child_thread = a_loop()
            os._exit(0 if trio.run(await_it, child_loop, child_thread, True) == "woken" else 1)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        close(loop, thread)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout, result.stderr


def test_the_child_of_os_fork_is_told_that_a_call_running_in_the_parent_never_finishes() -> None:
    """A sync call running in a worker thread and a task on the default runtime, when
    os.fork() copies the process: in the child their threads do not exist, so a wait
    there raises at once instead of blocking for good. The parent gets both outcomes."""
    result = run_script(
        """
        import asyncio, os, sys, threading
        from forkwait import fork, wait

        running, gate = threading.Semaphore(0), threading.Event()

        def load():
            running.release()
            gate.wait()
            return "loaded"

        async def aload():
            running.release()
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
            return "aloaded"

        futs = [fork(load), fork(aload)]
        running.acquire()
        running.acquire()
        pid = os.fork()
        if pid == 0:
            said = []
            for fut in futs:
                try:
                    said.append(f"value {wait(fut, timeout=10)!r}")
                except RuntimeError as exc:
                    said.append(str(exc))
                except BaseException as exc:
                    said.append(repr(exc))

            async def awaits():
                try:
                    await asyncio.wait_for(futs[0], 10)
                except RuntimeError as exc:  # the same error, now the future's outcome
                    return str(exc)
                except BaseException as exc:
                    return repr(exc)

            said.append(asyncio.run(awaits()))
            print("\\n".join(said), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        gate.set()
        print("parent:", wait(futs[0]), wait(futs[1]), os.waitstatus_to_exitcode(status))
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "parent: loaded aloaded 0", result.stdout + result.stderr
    told = lines[:-1]
    assert len(told) == 3, result.stdout + result.stderr
    assert told[0].startswith(
        "fork(load) can never finish in this process: it was running "
        "in another thread when os.fork() made this process"
    ), told[0]
    assert told[1].startswith(
        "fork(aload) can never finish in this process: its task was "
        "running on the default runtime's event loop"
    ), told[1]
    assert told[2] == told[0]
    assert "wait for it before forking" in told[0]


def test_the_child_of_os_fork_runs_a_call_still_queued_in_the_parent_once_awaited() -> None:
    """A call queued for the parent's busy worker is not in any queue of the child: the
    child's first wait queues it there, so an await and a wait with a timeout (neither
    of which runs it inline) get its value."""
    result = run_script(
        """
        import asyncio, os, threading
        import forkwait
        from forkwait import fork, wait

        forkwait.configure(max_threads=1)
        running, gate = threading.Event(), threading.Event()

        def busy():
            running.set()
            gate.wait()

        fork(busy)
        running.wait()
        queued = [fork(abs, -7), fork(abs, -8)]
        pid = os.fork()
        if pid == 0:
            async def awaits():
                return await asyncio.wait_for(queued[0], 10)

            print(asyncio.run(awaits()), wait(queued[1], timeout=10), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        gate.set()
        print("parent:", wait(queued[0]), wait(queued[1]), os.waitstatus_to_exitcode(status))
        """,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["7 8", "parent: 7 8 0"], result.stdout + result.stderr


def test_configure_loop_asyncio_switches_the_default_runtime() -> None:
    """configure(loop="asyncio") before the first fork gives a plain asyncio loop."""
    result = run_script(
        """
        import asyncio
        import forkwait
        from forkwait import fork, wait

        async def loop_type():
            return type(asyncio.get_running_loop()).__module__

        forkwait.configure(loop="asyncio")
        print(wait(fork(loop_type)))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("asyncio")


def test_configure_loop_after_the_runtime_started_says_when_to_call_it() -> None:
    """Switching the loop under a running runtime is refused with a clear message."""
    result = run_script(
        """
        import asyncio
        import forkwait
        from forkwait import fork, wait

        async def noop():
            return None

        wait(fork(noop))
        try:
            forkwait.configure(loop="asyncio")
        except RuntimeError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "before the first fork" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_the_default_runtime_uses_uvloop_where_installed() -> None:
    """Without configure, the default runtime runs uvloop."""
    result = run_script(
        """
        import asyncio
        from forkwait import fork, wait

        async def loop_type():
            return type(asyncio.get_running_loop()).__module__

        print(wait(fork(loop_type)))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("uvloop")
