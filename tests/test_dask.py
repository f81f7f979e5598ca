"""`forkwait.offload(client)`: sync calls as tasks of a real Dask LocalCluster on loopback."""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import dask
import psutil
import pytest
from distributed import Client, Event, LocalCluster, Queue

import forkwait
from forkwait import fork, wait
from forkwait._dask import _close_owned_clients
from forkwait._payload import RemoteTraceback

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes; a task whose worker dies fails at once."""
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        app_client = Client(cluster, set_as_default=False)
        try:
            yield app_client
        finally:
            _close_owned_clients()  # the ones offload() opened for the scheduler's address
            app_client.close()
            cluster.close()
    # Nothing left running: no worker or nanny process outlives the cluster. (One
    # multiprocessing resource tracker per interpreter stays, and ends with it.)
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in children_before
        and p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE
        and "multiprocessing.resource_tracker" not in " ".join(p.cmdline())
    ]
    assert not left, [p.cmdline() for p in left]


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def fail(message: str) -> None:
    raise KeyError(message)


def wait_for_event(name: str) -> str:
    Queue(f"{name}-started").put(os.getpid())  # tell the test this worker is taken
    Event(name).wait(timeout=60)
    return "released"


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def kill_myself() -> None:
    os._exit(9)


def test_a_sync_call_runs_on_a_worker_and_its_value_comes_back(client: Client) -> None:
    with forkwait.offload(client):
        fut = fork(pid_and_square, 6)
        local = fork(lambda: os.getpid())  # a lambda: cloudpickle sends it, as Dask would
    pid, value = wait(fut)
    assert value == 36
    worker_pids = set(client.run(os.getpid).values())
    assert pid in worker_pids
    assert wait(local) in worker_pids


def test_the_exception_keeps_its_type_and_the_workers_traceback(client: Client) -> None:
    with forkwait.offload(client):
        fut = fork(fail, "on the cluster")
    with pytest.raises(KeyError, match="on the cluster") as caught:
        wait(fut)
    assert isinstance(caught.value.__cause__, RemoteTraceback)


def test_an_argument_that_cannot_be_pickled_fails_at_fork(client: Client) -> None:
    with forkwait.offload(client), pytest.raises(TypeError, match=r"argument 0.*Dask cluster"):
        fork(pid_and_square, threading.Lock())


@pytest.mark.anyio
async def test_awaitable_on_every_backend(client: Client, anyio_backend: Any) -> None:
    with forkwait.offload(client):
        futs = [fork(pid_and_square, i) for i in range(3)]
    with anyio.fail_after(60):
        assert [v for _, v in await forkwait.wait_all(futs)] == [0, 1, 4]
        chained = futs[0].then(lambda f: f.result()[1] + 1)
        assert await chained == 1


def test_cancel_releases_a_queued_task_on_the_cluster(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    client.wait_for_workers(2, timeout=60)  # a worker killed by another test is back
    gate = Event("gate", client=client)
    started = Queue("gate-started", client=client)
    with forkwait.offload(client):
        blockers = [fork(wait_for_event, "gate") for _ in range(2)]
    assert len({started.get(timeout=60) for _ in range(2)}) == 2  # both workers busy
    with forkwait.offload(client):
        queued = fork(touch, str(marker))
    try:
        key = queued._handle.task.key
        # On the cluster first: the checks below would pass at once if they overtook the
        # submission, and the task could then reach a worker as the gate opens.
        holder = client.run_on_scheduler(_queued_at, key=key)
        if holder is not None:  # sent to a worker, behind its blocker
            assert client.run(_worker_holds, key=key, workers=[holder])[holder]
        assert queued.cancel()
        assert queued.cancelled(), "expected it cancelled at once, as the docs say"
        with pytest.raises(forkwait.CancelledError):
            wait(queued, timeout=0)
        # The scheduler forgets the task once the client's release reaches it, and the
        # worker that holds it in its queue once the scheduler's message reaches that.
        assert client.run_on_scheduler(_forgets, key=key), "the scheduler still has it"
        assert all(client.run(_worker_forgets, key=key).values()), "a worker still has it"
    finally:
        gate.set()  # whatever happened, free the workers for the other tests
    assert forkwait.wait_all(blockers, timeout=60) == ["released", "released"]
    assert not marker.exists()


async def _queued_at(dask_scheduler: Any, key: str) -> str | None:
    """On the scheduler, once it has ``key`` waiting for a thread: the worker it sent it
    to, or ``None`` if it keeps it queued itself."""
    import asyncio

    for _ in range(3000):
        task = dask_scheduler.tasks.get(key)
        if task is not None and task.state in ("queued", "processing"):
            return None if task.processing_on is None else str(task.processing_on.address)
        await asyncio.sleep(0.01)  # the cluster's own state: nothing to wait on but time
    raise AssertionError(f"the scheduler never queued {key}")


async def _worker_holds(dask_worker: Any, key: str) -> bool:
    """On a worker: whether ``key`` reaches its tasks within 30 s."""
    return await _gone(lambda: key not in dask_worker.state.tasks)


async def _forgets(dask_scheduler: Any, key: str) -> bool:
    """On the scheduler: whether ``key`` leaves its tasks within 30 s."""
    return await _gone(lambda: key in dask_scheduler.tasks)


async def _worker_forgets(dask_worker: Any, key: str) -> bool:
    """On a worker: whether ``key`` leaves its tasks within 30 s."""
    return await _gone(lambda: key in dask_worker.state.tasks)


async def _gone(present: Any) -> bool:
    import asyncio

    for _ in range(3000):
        if not present():
            return True
        await asyncio.sleep(0.01)  # the cluster's own state: nothing to wait on but time
    return False


def test_a_worker_that_dies_gives_the_waiter_an_error(client: Client) -> None:
    with forkwait.offload(client):
        fut = fork(kill_myself)
    with pytest.raises(Exception, match="workers died while running it"):
        wait(fut, timeout=60)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    with forkwait.offload(client):
        assert wait(fork(pid_and_square, 3), timeout=60)[1] == 9


def test_a_scheduler_address_works_as_a_target(client: Client) -> None:
    address = client.scheduler.address
    with forkwait.offload(address):
        pid, value = wait(fork(pid_and_square, 4), timeout=60)
    assert value == 16
    assert pid in set(client.run(os.getpid).values())


def test_configure_offload_to_the_cluster(client: Client) -> None:
    forkwait.configure(offload=client)
    try:
        assert forkwait.configure().offload == f"dask {client.scheduler.address}"
        pid, _ = wait(fork(pid_and_square, 1), timeout=60)
        assert pid != os.getpid()
    finally:
        forkwait.configure(offload="threads")


def test_what_configure_reports_can_be_configured_again(client: Client) -> None:
    """configure() names a cluster target "dask <address>": that goes back in as is."""
    forkwait.configure(offload=client)
    try:
        saved = forkwait.configure()
        forkwait.configure(offload="threads")
        forkwait.configure(offload=saved.offload)
        assert forkwait.configure().offload == saved.offload
        pid, _ = wait(fork(pid_and_square, 1), timeout=60)
        assert pid != os.getpid()
    finally:
        forkwait.configure(offload="threads")


def test_an_apps_subclass_of_client_is_a_target(client: Client) -> None:
    class AppClient(Client):  # type: ignore[misc]
        pass

    with AppClient(client.scheduler.address, set_as_default=False) as app_client:
        with forkwait.offload(app_client):
            fut = fork(pid_and_square, 3)
        assert wait(fut, timeout=60)[1] == 9


@pytest.mark.parametrize("address", ["nosuchscheme://127.0.0.1:1", "tcp://not an address"])
def test_a_bad_scheduler_address_names_the_option_it_was_given_to(address: str) -> None:
    with pytest.raises(ValueError, match=r"^configure\(offload=\.\.\.\) could not reach a Dask"):
        forkwait.configure(offload=address)
    with pytest.raises(ValueError, match=r"^forkwait\.offload\(\) could not reach a Dask"):
        forkwait.offload(address).__enter__()


def test_configure_checks_the_loop_before_it_reaches_for_a_scheduler() -> None:
    with pytest.raises(ValueError, match="must be"):
        forkwait.configure(offload="tcp://127.0.0.1:1", loop="trio")  # type: ignore[arg-type]


def test_scopes_and_traces_see_cluster_calls(client: Client) -> None:
    with (  # noqa: PT012
        forkwait.trace() as tr,
        pytest.raises(ExceptionGroup) as caught,
        forkwait.scope(),
        forkwait.offload(client),
    ):
        fork(pid_and_square, 2)
        fork(fail, "in a scope")
    assert [type(e) for e in caught.value.exceptions] == [KeyError]
    by_name = {call.name: call for call in tr.calls}
    assert str(by_name["fail"].thread).startswith("dask worker tcp://")
    sibling = by_name["pid_and_square"]  # cancelled by the failure, unless it ran first
    assert sibling.outcome == "cancelled" or str(sibling.thread).startswith("dask worker tcp://")


def test_an_async_client_is_refused_clearly(client: Client) -> None:
    async def main() -> None:
        async with Client(client.scheduler.address, asynchronous=True) as async_client:
            with pytest.raises(ValueError, match="asynchronous=False"):
                forkwait.offload(async_client).__enter__()

    anyio.run(main)


def test_an_apps_clients_are_let_go_once_closed(client: Client) -> None:
    """forkwait keeps no client that the app closed and dropped."""
    refs = []
    for i in range(2):
        with (
            Client(client.scheduler.address, set_as_default=False) as other,  # type: ignore[no-untyped-call]
            forkwait.offload(other),
        ):
            assert wait(fork(pid_and_square, i), timeout=60)[1] == i * i
        refs.append(weakref.ref(other))
        del other
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_a_task_the_cluster_drops_fails_its_future(client: Client) -> None:
    """Not a cancellation either: the cluster dropped the task (as when the client loses
    its scheduler), so the future fails, saying so, and nothing goes unseen."""
    started = Queue("dropped-started", client=client)
    with forkwait.offload(client):
        fut = fork(wait_for_event, "dropped")
    try:
        assert started.get(timeout=60)  # running on a worker
        client.cancel(fut._handle.task)  # the cluster's side, not fut.cancel()
        with pytest.raises(RuntimeError, match="dropped its task") as caught:
            wait(fut, timeout=30)
    finally:
        Event("dropped", client=client).set()  # free the worker for the other tests
    assert not fut.cancelled()
    assert "cancelled" in repr(caught.value.__cause__).lower()


def test_at_exit_calls_pending_on_a_cluster_forkwait_opened_get_one_warning(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """As the process pool's: one line counts them, not a "never retrieved" each."""
    started = Queue("exiting-started", client=client)
    with forkwait.offload(client.scheduler.address):
        futs = [fork(wait_for_event, "exiting") for _ in range(3)]
    try:
        assert started.get(timeout=60)  # running on a worker
        with caplog.at_level(logging.WARNING, logger="forkwait"):
            _close_owned_clients()
    finally:
        Event("exiting", client=client).set()  # free the workers for the other tests
    for fut in futs:
        with pytest.raises(RuntimeError, match=r"pending on the Dask cluster .* exited"):
            wait(fut, timeout=30)
    warned = [r.getMessage() for r in caplog.records if r.name == "forkwait"]
    assert len(warned) == 1, warned
    assert "at exit, 3 offloaded call(s) still pending on the Dask cluster" in warned[0]


def test_a_client_closed_under_a_pending_call_says_so(client: Client) -> None:
    """Not a cancellation: nobody cancelled the call, its client went away."""
    started = Queue("closing-started", client=client)
    other = Client(client.scheduler.address, set_as_default=False)  # type: ignore[no-untyped-call]
    try:
        with forkwait.offload(other):
            fut = fork(wait_for_event, "closing")
        assert started.get(timeout=60)  # running on a worker
    finally:
        other.close()
        Event("closing", client=client).set()  # free the worker for the other tests
    with pytest.raises(RuntimeError, match="Dask client was closed while the task was pending"):
        wait(fut, timeout=30)
