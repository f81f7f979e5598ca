"""`forkwait.offload("processes")`: sync calls in worker processes, with the same futures."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import multiprocessing
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import forkwait
from forkwait import Future, fork, wait
from forkwait._payload import RemoteTraceback
from forkwait._processes import processes
from tests.conftest import run_python, run_script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, scope="module")
def _stop_the_pool_after() -> Iterator[None]:
    """After these tests, stopping the pool leaves no worker process behind."""
    yield
    processes.stop()
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE
        and "forkwait._processes" in " ".join(p.cmdline())
    ]
    assert not left, [p.cmdline() for p in left]


@pytest.fixture
def one_process() -> Iterator[None]:
    """A pool of one worker process for one test (a fresh pool), restored after."""
    before = forkwait.configure().max_processes
    # A fresh pool indeed: a worker an earlier test left starting would join this one's
    # and, over the limit of one, retire the idle worker a test's call was to go to.
    processes.stop()
    forkwait.configure(max_processes=1)
    yield
    forkwait.configure(max_processes=before)


# What the worker processes run: module-level, so pickle sends them by name.


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def read_fifo(path: str) -> str:
    """Block until somebody writes to the FIFO at ``path``: a gate across processes."""
    with open(path) as fifo:
        return fifo.read()


def fail(message: str) -> None:
    raise KeyError(message)


def raise_base(kind: str) -> None:
    raise KeyboardInterrupt("stop") if kind == "kbd" else SystemExit(3)


def wait_for_file(path: str, seconds: float) -> str:
    """Block until ``path`` exists (the test creates it): a gate across processes."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return "released"


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def touch_then_wait_for(started: str, gate: str) -> str:
    touch(started)
    return wait_for_file(gate, 30)


def make_lock() -> object:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable


class NotFound(Exception):
    """A common shape: __init__ takes other arguments than the message it passes on."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{status} for {url}")
        self.status = status


def raise_not_found(url: str) -> None:
    raise NotFound(404, url)


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def returns_a_coroutine(x: int) -> Any:
    async def later() -> int:
        await asyncio.sleep(0)
        return x + 1

    return later()


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def read_request_id() -> str:
    return request_id.get()


def forks_inside(n: int) -> int:
    # In the worker process: its own default runtime and threads.
    futs = [fork(pid_and_square, i) for i in range(n)]
    return sum(value for _, value in forkwait.wait_all(futs))


# -- where calls run -------------------------------------------------------------------


def test_a_sync_call_runs_in_another_process_and_its_value_comes_back() -> None:
    with forkwait.offload("processes"):
        fut = fork(pid_and_square, 7)
    pid, value = wait(fut)
    assert value == 49
    assert pid != os.getpid()


def test_lambdas_and_local_functions_go_by_value() -> None:
    offset = 5

    def local(x: int) -> int:
        return x + offset

    with forkwait.offload("processes"):
        futs = [fork(lambda: os.getpid()), fork(local, 1)]
    pid, value = forkwait.wait_all(futs)
    assert pid != os.getpid()
    assert value == 6


def test_coroutine_functions_still_run_on_the_loop_in_this_process() -> None:
    async def where() -> tuple[int, str]:
        return os.getpid(), threading.current_thread().name

    async def main() -> tuple[int, str]:
        with forkwait.offload("processes"):
            return await fork(where)

    assert asyncio.run(main()) == (os.getpid(), "MainThread")


def test_a_sync_call_that_returns_a_coroutine_gets_it_awaited_in_the_worker() -> None:
    with forkwait.offload("processes"):
        assert wait(fork(returns_a_coroutine, 1)) == 2


def test_forks_nested_in_an_offloaded_call_run_in_its_process() -> None:
    with forkwait.offload("processes"):
        assert wait(fork(forks_inside, 4)) == 0 + 1 + 4 + 9


def test_the_forkers_context_stays_in_this_process_as_the_docs_say() -> None:
    token = request_id.set("r-42")
    try:
        in_a_thread = wait(fork(read_request_id))
        with forkwait.offload("processes"):
            in_a_process = wait(fork(read_request_id))
    finally:
        request_id.reset(token)
    assert (in_a_thread, in_a_process) == ("r-42", "unset")


@pytest.mark.anyio
async def test_awaitable_on_every_backend(anyio_backend: Any) -> None:
    with forkwait.offload("processes"):
        fut = fork(pid_and_square, 3)
        failed = fork(fail, "async")
    assert (await fut)[1] == 9
    with anyio.fail_after(30):
        assert (await forkwait.wait(fut, timeout=30))[1] == 9
    with pytest.raises(KeyError, match="async"):
        await failed


def test_then_callbacks_wait_all_and_timeouts(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    seen: list[Any] = []
    with forkwait.offload("processes"):
        futs = [fork(pid_and_square, i) for i in range(4)]
        blocked = fork(wait_for_file, str(gate), 30)
    chained = futs[0].then(lambda f: f.result()[1] + 100)
    futs[1].add_done_callback(lambda f: seen.append(f.result()[1]))
    assert [value for _, value in forkwait.wait_all(futs)] == [0, 1, 4, 9]
    assert wait(chained) == 100
    with pytest.raises(TimeoutError):
        wait(blocked, timeout=0.05)
    gate.touch()
    assert wait(blocked) == "released"  # the timeout did not stop the call
    assert seen == [1]


def test_configure_sets_the_default_and_offload_threads_overrides_it() -> None:
    forkwait.configure(offload="processes")
    try:
        assert forkwait.configure().offload == "processes"
        pid, _ = wait(fork(pid_and_square, 1))
        assert pid != os.getpid()
        with forkwait.offload("threads"):
            pid, _ = wait(fork(pid_and_square, 1))
        assert pid == os.getpid()
    finally:
        forkwait.configure(offload="threads")
    assert forkwait.configure().offload == "threads"
    assert wait(fork(pid_and_square, 1))[0] == os.getpid()


def test_max_processes_sizes_the_pool(one_process: None, tmp_path: Path) -> None:
    with forkwait.offload("processes"):
        pids = {pid for pid, _ in forkwait.wait_all([fork(pid_and_square, i) for i in range(6)])}
    assert len(pids) == 1


def test_raising_the_limit_starts_a_worker_for_a_call_that_waits(
    one_process: None, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with forkwait.offload("processes"):
        blocker = fork(read_fifo, str(gate))  # holds the only worker until the gate opens
        queued = fork(pid_and_square, 7)
    opener = threading.Thread(target=gate.write_text, args=("go",), daemon=True)
    try:
        forkwait.configure(max_processes=2)  # no fork after this: the pool must act on it
        assert wait(queued, timeout=30)[1] == 49
    finally:
        opener.start()  # blocks until the blocker reads: it is running by now
    assert wait(blocker, timeout=30) == "go"
    opener.join(30)


# -- errors ----------------------------------------------------------------------------


def test_the_exception_keeps_its_type_and_the_workers_traceback() -> None:
    with forkwait.offload("processes"):
        fut = fork(fail, "missing key")
    with pytest.raises(KeyError, match="missing key") as caught:
        wait(fut)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in str(cause)


@pytest.mark.parametrize(("kind", "error"), [("kbd", KeyboardInterrupt), ("exit", SystemExit)])
def test_keyboard_interrupt_and_system_exit_reach_the_waiter(
    kind: str, error: type[BaseException]
) -> None:
    with forkwait.offload("processes"):
        fut = fork(raise_base, kind)
    with pytest.raises(error):
        wait(fut)


def test_an_argument_that_cannot_be_pickled_fails_at_fork_naming_it() -> None:
    with forkwait.offload("processes"), pytest.raises(TypeError) as caught:
        fork(pid_and_square, threading.Lock())
    message = str(caught.value)
    assert "argument 0" in message
    assert "lock" in message
    assert "forkwait.offload" in message  # what to do instead


def test_a_keyword_argument_that_cannot_be_pickled_is_named() -> None:
    def takes(*, handle: object) -> None: ...

    with forkwait.offload("processes"), pytest.raises(TypeError, match="keyword argument 'handle'"):
        fork(takes, handle=(i for i in range(3)))


def test_a_value_that_cannot_come_back_is_a_clear_error() -> None:
    with forkwait.offload("processes"):
        fut = fork(make_lock)
    with pytest.raises(TypeError, match=r"value returned by make_lock \(lock object"):
        wait(fut)


def test_an_exception_that_cannot_come_back_is_a_clear_error() -> None:
    with forkwait.offload("processes"):
        fut = fork(raise_unpicklable)
    with pytest.raises(TypeError, match=r"exception raised by raise_unpicklable \(Unpicklable"):
        wait(fut)


def test_an_exception_that_pickles_but_does_not_unpickle_keeps_its_message_and_traceback() -> None:
    with forkwait.offload("processes"):
        fut = fork(raise_not_found, "/a")
    with pytest.raises(
        TypeError,
        match=r"exception raised by raise_not_found \(NotFound object: NotFound\('404 for /a'\)\) "
        r"pickles but cannot be unpickled .*super\(\)\.__init__",
    ) as caught:
        wait(fut, timeout=30)
    assert "in raise_not_found" in str(caught.value.__cause__)  # the worker's traceback


def test_a_killed_worker_gives_the_waiter_an_error_and_the_next_fork_a_new_pool() -> None:
    with forkwait.offload("processes"):
        fut = fork(kill_myself)
    with pytest.raises(
        BrokenProcessPool, match=r"running fork\(kill_myself\) was killed by SIGKILL"
    ):
        wait(fut, timeout=30)
    with forkwait.offload("processes"):
        assert wait(fork(pid_and_square, 2), timeout=30)[1] == 4


@pytest.mark.parametrize("target", ["gpu", 42, None])
def test_a_bad_target_is_a_value_error_listing_the_right_ones(target: Any) -> None:
    with pytest.raises(ValueError, match=r"'threads', 'processes', a distributed\.Client"):
        forkwait.offload(target).__enter__()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_max_processes_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="max_processes"):
        forkwait.configure(max_processes=value)


# -- cancellation ----------------------------------------------------------------------


def test_cancel_stops_a_queued_call_but_not_a_running_one(
    one_process: None, tmp_path: Path
) -> None:
    gate, marker, started = tmp_path / "gate", tmp_path / "marker", tmp_path / "started"
    with forkwait.offload("processes"):
        running = fork(touch_then_wait_for, str(started), str(gate))
        queued = fork(touch, str(marker))  # the one worker is busy: this waits its turn
        after = fork(pid_and_square, 3)
    assert queued.cancel()
    assert queued.cancelled()
    wait_for_file(str(started), 30)  # the worker may still be starting until then
    assert not running.cancel()  # in the worker: it cannot be stopped
    gate.touch()
    assert wait(running) == "released"
    assert wait(after)[1] == 9  # the queue went on past the cancelled call
    with pytest.raises(forkwait.CancelledError):
        wait(queued)
    assert not marker.exists()


def test_calls_queued_behind_a_worker_that_dies_still_run(one_process: None) -> None:
    with forkwait.offload("processes"):
        doomed = fork(kill_myself)
        queued = [fork(pid_and_square, i) for i in range(3)]
    with pytest.raises(BrokenProcessPool):
        wait(doomed, timeout=30)
    assert [v for _, v in forkwait.wait_all(queued, timeout=30)] == [0, 1, 4]


# -- scopes and traces -----------------------------------------------------------------


def test_a_scope_raises_an_offloaded_failure_and_waits_for_the_rest() -> None:
    with (  # noqa: PT012
        pytest.raises(ExceptionGroup) as caught,
        forkwait.scope(),
        forkwait.offload("processes"),
    ):
        ok = fork(pid_and_square, 2)
        fork(fail, "in a scope")
    assert [type(e) for e in caught.value.exceptions] == [KeyError]
    assert ok.done()


def test_a_trace_shows_the_process_that_ran_the_call() -> None:
    with forkwait.trace() as tr, forkwait.offload("processes"):
        pid, _ = wait(fork(pid_and_square, 2))
    (call,) = tr.calls
    assert call.thread == f"process {pid}"
    assert call.started_at is not None
    assert call.ended_at is not None
    assert call.started_at <= call.ended_at
    assert "ran in process" in str(tr.graph)


# -- exit ------------------------------------------------------------------------------


def test_a_worker_killed_while_starting_is_not_blamed_on_the_main_module(
    tmp_path: Path,
) -> None:
    script = tmp_path / "killed_while_starting.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys
            if __name__ == "__mp_main__":  # a worker importing this module: hold it here
                signal.pause()
            import forkwait
            from forkwait import fork, wait
            from forkwait._processes import processes

            if __name__ == "__main__":
                forkwait.configure(max_processes=1)
                with forkwait.offload("processes"):
                    fut = fork(abs, -1)
                while not processes._run.workers:  # started by the fork above
                    pass
                os.kill(processes._run.workers[0].process.pid, signal.SIGKILL)
                try:
                    wait(fut, timeout=30)
                except Exception as exc:
                    print(type(exc).__name__, exc)
            """
        )
    )
    result = run_python(str(script), timeout=60)
    assert "BrokenProcessPool" in result.stdout, result.stdout + result.stderr
    assert "killed by SIGKILL while starting" in result.stdout
    assert "main module" not in result.stdout


def test_forks_after_the_pool_stopped_at_exit_fail_instead_of_starting_a_new_one(
    tmp_path: Path,
) -> None:
    """A thread still forking as the interpreter exits gets BrokenProcessPool at once;
    it used to start a fresh pool, and log its failures to start, hundreds of times."""
    result = run_script(
        """
        import os, threading
        import forkwait
        from forkwait import fork, wait

        def keeps_forking(up):
            with forkwait.offload("processes"):
                while True:
                    try:
                        wait(fork(os.getpid))
                    except Exception as exc:
                        if "stopped (exit)" in str(exc):
                            print("refused after exit", flush=True)
                            return
                    up.set()

        if __name__ == "__main__":
            up = threading.Event()
            fork(keeps_forking, up)
            up.wait(30)
            print("leaving", flush=True)
        """,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "leaving" in result.stdout
    assert "could not start" not in result.stderr
    assert result.stderr.count("\n") < 10, result.stderr


def test_exit_with_calls_still_running_is_prompt_and_says_so(tmp_path: Path) -> None:
    result = run_script(
        """
        import os, time
        import forkwait
        from forkwait import fork, wait

        def sleepy(seconds):
            time.sleep(seconds)

        if __name__ == "__main__":
            with forkwait.offload("processes"):
                wait(fork(os.getpid))  # the pool is up
                fork(sleepy, 60)
            print("leaving")
        """,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "leaving" in result.stdout
    assert "at exit, 1 offloaded call(s) still running in worker processes" in result.stderr
    assert "Traceback" not in result.stderr
    assert "never retrieved" not in result.stderr  # the one line counts it


def test_a_script_without_the_main_guard_gets_an_error_that_says_so(tmp_path: Path) -> None:
    """Workers import the main script, as multiprocessing's do: without the guard, each
    would fork again while starting. The calls fail with a message naming the fix,
    instead of the pool restarting workers forever."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os\n"
        "import forkwait\n"
        "from forkwait import fork, wait\n"
        "with forkwait.offload('processes'):\n"
        "    futs = [fork(os.getpid) for _ in range(3)]\n"
        "for fut in futs:\n"
        "    try:\n"
        "        wait(fut, timeout=30)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, str(exc).split(':')[0])\n"
    )
    result = run_python(str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert all(
        line.startswith("BrokenProcessPool a worker process for fork(getpid) exited")
        for line in lines
    ), result.stdout
    assert all(line.endswith("while starting") for line in lines), result.stdout


def test_fork_does_not_wait_for_a_worker_to_start_and_cancel_stops_a_call_meanwhile(
    tmp_path: Path,
) -> None:
    """The worker processes import this script first, and it holds them there until
    the gate file exists: meanwhile ``fork`` has returned, and the call, still queued
    for a worker, is cancelled and never runs."""
    script = tmp_path / "slow_to_start.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import time
            from pathlib import Path

            if __name__ != "__main__":  # a worker process starting: it imports this
                while not Path(os.environ["GATE"]).exists():
                    time.sleep(0.01)
            else:
                import forkwait
                from forkwait import fork, wait

                def leave_a_mark():
                    Path(os.environ["RAN"]).write_text("ran")

                with forkwait.offload("processes"):
                    fut = fork(leave_a_mark)
                print(fut.cancel(), fut.cancelled())
                Path(os.environ["GATE"]).write_text("open")
                with forkwait.offload("processes"):
                    print(wait(fork(os.getpid), timeout=30) != os.getpid())
                print(Path(os.environ["RAN"]).exists())
            """
        )
    )
    env = {"GATE": str(tmp_path / "gate"), "RAN": str(tmp_path / "ran")}
    result = run_python(str(script), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "False"], result.stdout


# -- found in review: races and lifecycles ------------------------------------------------


def nested_in_a_worker(n: int) -> list[int]:
    with forkwait.offload("processes"):
        return [v for _, v in forkwait.wait_all([fork(pid_and_square, i) for i in range(n)])]


def test_a_then_callback_that_waits_on_another_offloaded_call_does_not_deadlock(
    one_process: None,
) -> None:
    """Callbacks run in a worker thread of this process, not in the pool's reader,
    which must stay free to finish the call the callback waits for."""
    with forkwait.offload("processes"):
        first = fork(pid_and_square, 1)
        second = fork(pid_and_square, 2)
    chained = first.then(lambda f: f.result()[1] + wait(second, timeout=20)[1])
    assert wait(chained, timeout=30) == 5


def test_the_reader_survives_the_limit_changing_under_load() -> None:
    before = forkwait.configure().max_processes
    stop = threading.Event()
    failures: list[BaseException] = []

    def toggle() -> None:
        n = 0
        while not stop.is_set():
            forkwait.configure(max_processes=1 if n % 2 else 3)
            n += 1
            time.sleep(0.002)  # a limit that keeps changing, not a synchronisation

    def submit() -> None:
        try:
            with forkwait.offload("processes"):
                for i in range(25):
                    assert wait(fork(pid_and_square, i), timeout=20)[1] == i * i
        except BaseException as exc:
            failures.append(exc)

    toggler = threading.Thread(target=toggle)
    submitters = [threading.Thread(target=submit) for _ in range(3)]
    toggler.start()
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join(60)
    stop.set()
    toggler.join(10)
    forkwait.configure(max_processes=before)
    assert not failures, failures
    with forkwait.offload("processes"):
        assert wait(fork(pid_and_square, 7), timeout=20)[1] == 49


def test_raising_the_limit_starts_workers_for_queued_calls_in_fork_order(
    one_process: None, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with forkwait.offload("processes"):
        blocker = fork(wait_for_file, str(gate), 30)
        queued = [fork(pid_and_square, i) for i in range(3)]
    forkwait.configure(max_processes=2)
    with forkwait.offload("processes"):
        later = fork(pid_and_square, 10)  # queued calls go first, in fork order
    # The first queued call runs on the new worker while the blocker holds the old one.
    assert wait(queued[0], timeout=30)[1] == 0
    gate.touch()
    assert [v for _, v in forkwait.wait_all([*queued, later], timeout=30)] == [0, 1, 4, 100]
    assert wait(blocker) == "released"


def test_stop_racing_submitters_settles_every_future_exactly_once() -> None:
    settled: Counter[int] = Counter()
    futures: list[Future[Any]] = []
    lock = threading.Lock()

    def submit() -> None:
        with forkwait.offload("processes"):
            for i in range(40):
                fut = fork(pid_and_square, i)
                fut.add_done_callback(lambda f: settled.update([id(f)]))
                with lock:
                    futures.append(fut)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        processes.stop()
    for thread in threads:
        thread.join(30)
    for fut in futures:
        try:
            wait(fut, timeout=30)
        except (BrokenProcessPool, forkwait.CancelledError):
            pass  # stopped with its pool: a clear end, not a hang
    deadline = time.monotonic() + 10
    while len(settled) < len(futures) and time.monotonic() < deadline:
        time.sleep(0.01)  # the last callbacks run in worker threads just after
    assert all(fut.done() for fut in futures)
    assert set(settled.values()) == {1}, "a future was settled twice"
    assert len(settled) == len(futures)


def test_a_worker_killed_by_a_real_time_signal_is_reported(
    one_process: None, tmp_path: Path
) -> None:
    with forkwait.offload("processes"):
        wait(fork(pid_and_square, 0))  # the one worker is up, and idle
        victim = fork(wait_for_file, str(tmp_path / "never"), 30)  # handed to it at once
    run = processes._run
    assert run is not None
    (worker,) = [w for w in run.workers if w.call is victim._handle]
    os.kill(worker.process.pid, signal.SIGRTMIN + 6)  # type: ignore[arg-type]
    with pytest.raises(BrokenProcessPool, match="killed by signal"):
        wait(victim, timeout=20)
    with forkwait.offload("processes"):
        assert wait(fork(pid_and_square, 3), timeout=20)[1] == 9  # and replaced


def test_a_pool_used_inside_a_worker_process_does_not_hold_up_exit(tmp_path: Path) -> None:
    result = run_script(
        """
        import forkwait
        from forkwait import fork, wait
        from tests.test_offload import nested_in_a_worker

        if __name__ == "__main__":
            with forkwait.offload("processes"):
                print(wait(fork(nested_in_a_worker, 3), timeout=60))
        """,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[0, 1, 4]\n"


def forks_a_call_that_outlives_it(pid_file: str) -> None:
    """In a worker process: a call of its own pool's that writes its pid and then runs
    until the test ends (a minute), waited on here."""
    with forkwait.offload("processes"):
        wait(fork(write_pid_then_block, pid_file))


def write_pid_then_block(pid_file: str) -> None:
    Path(pid_file + ".tmp").write_text(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    wait_for_file(pid_file + ".never", 60)


def test_a_pool_inside_a_worker_process_stops_with_it_at_exit(tmp_path: Path) -> None:
    """At exit the busy worker is terminated; it stops its own pool first, so the call
    running there does not outlive the program."""
    pid_file = str(tmp_path / "grandchild.pid")
    try:
        result = run_script(
            f"""
            import forkwait
            from forkwait import fork
            from tests.test_offload import forks_a_call_that_outlives_it, wait_for_file

            if __name__ == "__main__":
                with forkwait.offload("processes"):
                    fork(forks_a_call_that_outlives_it, {pid_file!r})
                wait_for_file({pid_file!r}, 20)
            """,
            timeout=30,  # the call left running holds the script's output open
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        psutil.Process(int(Path(pid_file).read_text())).kill()
        raise AssertionError("the nested pool's call outlived the program") from None
    assert result.returncode == 0, result.stderr
    with contextlib.suppress(psutil.NoSuchProcess):  # gone: as it should be
        psutil.Process(int(Path(pid_file).read_text())).wait(5)  # reaped by now, or soon


def test_os_fork_while_the_first_worker_starts_leaves_the_child_a_working_pool() -> None:
    """Workers start in a thread of their own; an os.fork() while it holds the import
    and multiprocessing locks of a first start must not leave them held in the child."""
    for delay in (0.0, 0.001, 0.002, 0.004, 0.008):  # where in the start the fork lands
        result = run_script(
            f"""
            import os
            import time

            import forkwait
            from forkwait import fork, wait
            from tests.test_offload import pid_and_square

            with forkwait.offload("processes"):
                fork(pid_and_square, 1)
            time.sleep({delay})
            pid = os.fork()
            if pid == 0:
                with forkwait.offload("processes"):
                    print(wait(fork(pid_and_square, 2), timeout=20)[1], flush=True)
                os._exit(0)
            print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            """,
            timeout=45,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert result.stdout.split() == ["4", "0"], (delay, result.stdout, result.stderr)


def terminate_a_forked_child() -> int | None:
    """In a worker process: start a child with the fork start method, terminate it."""
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    child.terminate()
    child.join(10)
    return child.exitcode


def test_a_process_a_call_forks_keeps_the_default_sigterm() -> None:
    """The worker's own SIGTERM handler (see _serve) is not passed on to it."""
    with forkwait.offload("processes"):
        fut = fork(terminate_a_forked_child)
    assert wait(fut, timeout=30) == -signal.SIGTERM


def test_a_child_of_os_fork_uses_a_pool_of_its_own(tmp_path: Path) -> None:
    result = run_script(
        """
        import os
        import forkwait
        from forkwait import fork, wait
        from tests.test_offload import pid_and_square

        if __name__ == "__main__":
            with forkwait.offload("processes"):
                print("parent", wait(fork(pid_and_square, 3))[1], flush=True)
            child = os.fork()
            if child == 0:
                with forkwait.offload("processes"):
                    print("child", wait(fork(pid_and_square, 4), timeout=30)[1], flush=True)
                os._exit(0)
            _, status = os.waitpid(child, 0)
            print("child exit", os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["parent 9", "child 16", "child exit 0"]


def meet_through_fifos(started: str, release: str) -> str:
    """Say it started through one FIFO, then return what comes through the other."""
    with open(started, "w") as out:
        out.write("started")
    with open(release) as into:
        return into.read()


def test_a_child_of_os_fork_is_told_that_a_call_the_parent_offloaded_never_finishes(
    tmp_path: Path,
) -> None:
    """The parent's reader of outcomes is not in the child: a wait there raises at once
    instead of blocking for good. The parent still gets the outcome."""
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    result = run_script(
        f"""
        import os
        import forkwait
        from forkwait import fork, wait
        from tests.test_offload import meet_through_fifos

        if __name__ == "__main__":
            with forkwait.offload("processes"):
                fut = fork(meet_through_fifos, {str(started)!r}, {str(release)!r})
            with open({str(started)!r}) as into:
                into.read()  # the call runs in a worker process
            child = os.fork()
            if child == 0:
                try:
                    print("child got", wait(fut, timeout=30), flush=True)
                except RuntimeError as exc:
                    print(exc, flush=True)
                os._exit(0)
            _, status = os.waitpid(child, 0)
            with open({str(release)!r}, "w") as out:
                out.write("released")
            print("parent", wait(fut, timeout=30), os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    told, parent = result.stdout.splitlines()
    assert told.startswith(
        "fork(meet_through_fifos) can never finish in this process: it was offloaded"
    ), told
    assert parent == "parent released 0"


class _Logged(logging.Handler):
    """Sets ``seen`` once a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def test_a_worker_that_cannot_start_is_logged_and_the_call_still_runs(
    monkeypatch: pytest.MonkeyPatch, one_process: None, tmp_path: Path
) -> None:
    """Say the system is out of file descriptors for a moment: fork must neither raise
    (the call would then run anyway) nor lose the call."""
    from forkwait import _processes

    processes.stop()  # a fresh pool, of one worker
    with forkwait.offload("processes"):
        wait(fork(pid_and_square, 0))  # one worker is up
    forkwait.configure(max_processes=2)
    real_spawn = _processes._Run._spawn
    failures = iter([OSError(24, "Too many open files")])

    def flaky_spawn(run: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_spawn(run)

    monkeypatch.setattr(_processes._Run, "_spawn", flaky_spawn)
    logged = _Logged("could not start")
    logger = logging.getLogger("forkwait")
    logger.addHandler(logged)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    opener = threading.Thread(target=gate.write_text, args=("go",), daemon=True)
    try:
        with forkwait.offload("processes"):
            # The blocker holds the one worker, so the calls after it queue and a second
            # worker must start (the start that fails). Without it the worker could
            # finish each call before the next fork: no start, nothing logged.
            blocker = fork(read_fifo, str(gate))
            futs = [fork(pid_and_square, i) for i in range(1, 4)]
        # The starter thread logs it in its own time.
        assert logged.seen.wait(10)
        opener.start()  # blocks until the blocker reads: it is running by now
        assert wait(blocker, timeout=30) == "go"
        assert [v for _, v in forkwait.wait_all(futs, timeout=30)] == [1, 4, 9]
    finally:
        if opener.ident is None:
            opener.start()  # never leave the worker blocked on the gate
        opener.join(30)
        logger.removeHandler(logged)


def test_finished_calls_do_not_keep_their_pool_alive() -> None:
    with forkwait.offload("processes"):
        fut = fork(pid_and_square, 2)
    wait(fut)
    processes.stop()
    handle = fut._handle
    assert handle.run is None
    assert handle.packed is None


def test_a_scripts_function_whose_globals_cannot_travel_goes_by_name(tmp_path: Path) -> None:
    """By value it cannot go (its lock), so it goes by name, as a process pool sends it:
    the worker imports the script, whose function it is."""
    script = tmp_path / "uses_a_lock.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import threading

            import forkwait
            from forkwait import fork, wait

            LOCK = threading.Lock()


            def double(x):
                with LOCK:
                    return x * 2, os.getpid()


            if __name__ == "__main__":
                with forkwait.offload("processes"):
                    value, pid = wait(fork(double, 21), timeout=30)
                print(value, pid != os.getpid())
            """
        )
    )
    result = run_python(str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "True"]


def test_a_worker_cut_off_by_its_forkserver_ending_is_stopped_and_its_call_fails(
    tmp_path: Path,
) -> None:
    """The forkserver (the workers' parent) is killed while a worker runs a call: the
    pool hears of an end that is not the worker's. The call fails saying so, and the
    worker, which nothing else would stop, is stopped (it ran on, past the program)."""
    script = tmp_path / "forkserver_killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import signal
            import sys
            import time

            import psutil

            import forkwait
            from forkwait import fork, wait


            def runs_long(started):
                open(started, "w").close()
                time.sleep(60)


            if __name__ == "__main__":
                started = sys.argv[1]
                forkwait.configure(max_processes=1)
                with forkwait.offload("processes"):
                    fut = fork(runs_long, started)
                deadline = time.monotonic() + 30
                while not os.path.exists(started) and time.monotonic() < deadline:
                    time.sleep(0.01)  # another process: no event to wait on
                [server] = [
                    p for p in psutil.Process().children()
                    if "forkserver" in " ".join(p.cmdline())
                ]
                [worker] = server.children()
                os.kill(server.pid, signal.SIGKILL)
                try:
                    wait(fut, timeout=30)
                except Exception as exc:
                    print(type(exc).__name__, "forkserver process ended" in str(exc))
                running = True
                deadline = time.monotonic() + 10
                while running and time.monotonic() < deadline:  # a signal takes a moment
                    try:
                        running = worker.status() != psutil.STATUS_ZOMBIE
                    except psutil.NoSuchProcess:
                        running = False
                    time.sleep(0.01)
                print("worker running:", running)
            """
        )
    )
    result = run_python(str(script), str(tmp_path / "started"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["BrokenProcessPool True", "worker running: False"]


def test_under_python_c_a_function_whose_globals_cannot_travel_fails_at_fork() -> None:
    """No file to import the script from: by name it would fail in the worker, so fork
    says what cannot be pickled, as ever."""
    result = run_script(
        """
        import threading

        import forkwait
        from forkwait import fork

        LOCK = threading.Lock()


        def double(x):
            with LOCK:
                return x * 2


        with forkwait.offload("processes"):
            try:
                fork(double, 21)
            except TypeError as exc:
                print("TypeError", "cannot be pickled" in str(exc))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TypeError", "True"]
