"""``offload(client)``: sync calls as tasks of a Dask cluster (``distributed``).

The call travels pickled as forkwait packs it (``_payload``), so it fails at ``fork``
if it cannot, and comes back with its exception's own type. A ``distributed.Client``
given by the app stays the app's; one that forkwait opened for a scheduler address is
closed at exit. Cancelling a future releases its task on the cluster: one not started
never runs, and the result of one running is dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._callables import describe
from ._future import new_future
from ._hosts import Remote, thread_state
from ._offload import Target
from ._payload import pack_call, run_packed, settle_with_outcome
from ._state import RUNNING

if TYPE_CHECKING:
    from ._future import Future

logger = logging.getLogger("forkwait")

# distributed is typed in part only: its clients and futures are Any here.
Client = Any
DaskFuture = Any


class DaskCall(Remote):
    """A task on the cluster."""

    __slots__ = ("fetch", "fut", "pending", "task", "unsettled")

    def __init__(self, fut: Future[Any], task: DaskFuture, pending: set[DaskCall]) -> None:
        super().__init__()
        self.fut = fut
        self.task: DaskFuture | None = task
        #: How its outcome is fetched once the task has finished: None while undecided
        #: (changed only on the client's event loop), ALONE, or the _Batch of a wait_all.
        self.fetch: _Batch | object | None = None
        #: Its cluster's calls not settled yet, which it is one of until it is.
        self.pending = pending
        pending.add(self)
        #: One item, which whoever settles the future pops (list.pop is atomic): its
        #: outcome in _settle, or cancel().
        self.unsettled = [True]

    def claim(self) -> bool:
        """Make the caller the one that settles the future."""
        try:
            return self.unsettled.pop()
        except IndexError:
            return False

    def cancel(self) -> bool:
        task = self.task
        if task is None or task.done() or not self.claim():
            return self.fut.cancelled()
        task.cancel()  # a request to the scheduler: the task is released there soon
        self.task = None
        self.fut._set_cancelled()  # at once, as for a queued call in this process
        return True


class Cluster(Target):
    """A Dask cluster, through one ``distributed.Client``."""

    __slots__ = ("__weakref__", "address", "client", "name", "owned", "pending")

    def __init__(self, client: Client, owned: bool) -> None:
        self.client = client
        #: Whether forkwait opened the client (for an address), and so closes it.
        self.owned = owned
        #: The calls not settled yet (for the one warning at exit).
        self.pending: set[DaskCall] = set()
        self.address = str(client.scheduler.address)
        self.name = f"dask {self.address}"

    def submit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        packed = pack_call(func, args, kwargs, f"the Dask cluster at {self.address}")
        fut = new_future(RUNNING, func)
        key = f"{describe(func)}-{uuid.uuid4().hex}"  # as Dask names tasks: shown on its dashboard
        task = self.client.submit(run_on_worker, packed, key=key, pure=False)
        handle = DaskCall(fut, task, self.pending)
        fut._handle = handle
        # Dask runs done callbacks on one thread, where fetching each result would wait
        # for the one before: fetch on the client's event loop instead, all at once.
        self.client.loop.add_callback(_settle, self.client, fut, handle, task)
        return fut


def run_on_worker(packed: bytes) -> bytes:
    """``run_packed`` on a Dask worker, which names itself by its address."""
    from distributed import get_worker

    return run_packed(packed, f"dask worker {get_worker().address}")


#: A call's outcome is fetched on its own, as soon as its task has finished.
ALONE = object()


async def _settle(client: Client, fut: Future[Any], handle: DaskCall, task: DaskFuture) -> None:
    """Finish ``fut`` as its task finished (a coroutine on the client's event loop)."""
    thread_state.serves_others = True  # callbacks must not block the client: see _future
    # Until it has finished, failed or been cancelled there, fetching nothing: as Dask's
    # own done callbacks wait (its public ways to wait fetch the result, or need a thread).
    try:
        while task.status == "pending":
            await task._state.wait()
    except BaseException as exc:  # the client's loop stopping under it, say
        _release(handle)
        _fail(client, fut, handle, task, exc)
        return
    batch = handle.fetch
    if batch is None:
        handle.fetch = ALONE
        await _fetch_alone(client, fut, handle, task)
    elif isinstance(batch, _Batch):
        finished = task.status == "finished"
        last = batch.arrived(handle, task, finished)
        if not finished:  # failed or cancelled there: nothing to fetch, so no need to wait
            await _fetch_alone(client, fut, handle, task)
        if last:
            await batch.fetch(client)


async def _fetch_alone(
    client: Client, fut: Future[Any], handle: DaskCall, task: DaskFuture
) -> None:
    """Fetch the outcome of one finished task, or report why it has none."""
    try:
        packed = await client.gather(task, asynchronous=True)
    except BaseException as exc:
        _fail(client, fut, handle, task, exc)
        return
    finally:
        _release(handle)
    if handle.claim():
        settle_with_outcome(fut, handle, packed, "the cluster")


def _release(handle: DaskCall) -> None:
    """Forget the task: the cluster may let its result go."""
    handle.task = None
    handle.pending.discard(handle)


def _fail(
    client: Client, fut: Future[Any], handle: DaskCall, task: DaskFuture, exc: BaseException
) -> None:
    """Fail ``fut``, whose task ended with no outcome to fetch, saying why."""
    if not handle.claim():
        return  # cancel() settled it
    if client.status in ("closing", "closed"):  # the app closed its client meanwhile
        fut._set_exception(
            RuntimeError(
                f"fork({describe(fut._func)}) cannot finish: its Dask client was "
                f"closed while the task was pending"
            )
        )
    elif task.status == "cancelled" or isinstance(exc, asyncio.CancelledError):
        # Not by cancel(), which settles the future first: the cluster dropped the
        # task (its scheduler was lost, or the client restarted it). A failure, not
        # a cancellation: nobody asked for it, and it must not go unseen.
        error = RuntimeError(
            f"fork({describe(fut._func)}) cannot finish: the Dask cluster at "
            f"{client.scheduler.address} dropped its task ({type(exc).__name__}: {exc})"
        )
        error.__cause__ = exc
        fut._set_exception(error)
    else:  # the task's own failure is inside the outcome: this is the cluster's
        fut._set_exception(exc)  # KilledWorker, say


class _Batch:
    """The calls of one ``wait_all`` on one cluster: their outcomes are fetched in one
    request once all their tasks have finished, as Dask's ``client.gather`` does.

    Fetched one by one, each outcome would cost its worker a request served while it
    runs its next task, and the client and scheduler one request each: on a busy
    machine, about a tenth of a 30 ms task (row 15 of ``make bench``).
    """

    __slots__ = ("finished", "running")

    def __init__(self, members: list[DaskCall]) -> None:
        #: How many members' tasks have not finished, failed or been cancelled yet.
        self.running = len(members)
        #: (handle, task) of each member whose task has finished: its outcome to fetch.
        self.finished: list[tuple[DaskCall, DaskFuture]] = []

    def arrived(self, handle: DaskCall, task: DaskFuture, finished: bool) -> bool:
        """Note that ``handle``'s task is over: ``True`` for the last of the batch."""
        if finished:
            self.finished.append((handle, task))
        self.running -= 1
        return self.running == 0

    async def fetch(self, client: Client) -> None:
        """Fetch the finished tasks' outcomes in one request (or, if that fails, one by
        one, each reporting its own failure)."""
        finished = self.finished
        if len(finished) > 1:
            try:
                outcomes = await client.gather([t for _, t in finished], asynchronous=True)
            except BaseException:  # a worker lost since, say: each finds out on its own
                pass
            else:
                for (handle, _), packed in zip(finished, outcomes, strict=True):
                    _release(handle)
                    if handle.claim():
                        settle_with_outcome(handle.fut, handle, packed, "the cluster")
                return
        for handle, task in finished:
            await _fetch_alone(client, handle.fut, handle, task)


def fetch_together(futs: list[Future[Any]]) -> None:
    """Have the outcomes of ``futs`` that run on one cluster fetched together (wait_all)."""
    by_cluster: dict[int, list[DaskCall]] = {}  # by id of the cluster's pending set
    for fut in futs:
        handle = fut._handle
        if type(handle) is DaskCall and handle.fetch is None and handle.task is not None:
            by_cluster.setdefault(id(handle.pending), []).append(handle)
    for handles in by_cluster.values():
        task = handles[0].task
        if len(handles) > 1 and task is not None:
            task.client.loop.add_callback(_form_batch, handles)


def _form_batch(handles: list[DaskCall]) -> None:
    """On the client's event loop, where each call's fetch is decided: batch the calls
    still undecided (their tasks not over yet, nor in another batch)."""
    undecided = list({id(h): h for h in handles if h.fetch is None}.values())
    if len(undecided) > 1:
        batch = _Batch(undecided)
        for handle in undecided:
            handle.fetch = batch


_lock = threading.Lock()
# By id of the client; while something uses the target (an offload() block, the
# configured default, a fork on its way), so an app's closed clients are let go.
_clusters: weakref.WeakValueDictionary[int, Cluster] = weakref.WeakValueDictionary()
_by_address: dict[str, Cluster] = {}


def cluster_of(client: Any) -> Cluster:
    """The target for an app's own ``distributed.Client``."""
    from distributed import Client as DaskClient

    if not isinstance(client, DaskClient):
        raise ValueError(
            f"forkwait.offload() takes a distributed.Client, not {type(client).__qualname__}; "
            f"make one with distributed.Client(address) or pass the scheduler address"
        )
    if client.asynchronous:
        raise ValueError(
            "forkwait.offload() needs a Client made with asynchronous=False (the default): "
            "forkwait's futures are awaitable from any loop, so it submits from any thread"
        )
    with _lock:
        cluster = _clusters.get(id(client))
        if cluster is None or cluster.client is not client:
            cluster = _clusters[id(client)] = Cluster(client, owned=False)
        return cluster


def cluster_at(address: str) -> Cluster:
    """The target for a scheduler address: a client opened on first use, closed at exit."""
    with _lock:
        cluster = _by_address.get(address)
        if cluster is not None and cluster.client.status not in ("closed", "closing"):
            return cluster
        from distributed import Client as DaskClient

        try:
            client = DaskClient(address, set_as_default=False, timeout=10)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ValueError(
                f"forkwait.offload({address!r}) could not reach a Dask scheduler there "
                f"({exc}); check the address, or start one (dask scheduler)"
            ) from exc
        cluster = _by_address[address] = Cluster(client, owned=True)
        _clusters[id(client)] = cluster
        return cluster


def _close_owned_clients() -> None:
    """At exit: close the clients forkwait opened. Their calls still pending fail first,
    counted in one warning, as the process pool's are (not one "never retrieved" each)."""
    with _lock:
        owned = list(_by_address.values())
        _by_address.clear()
    for cluster in owned:
        dropped = 0
        for handle in list(cluster.pending):
            if handle.claim():
                handle.fut._set_exception(
                    RuntimeError(
                        f"fork({describe(handle.fut._func)}) was pending on the Dask cluster "
                        f"at {cluster.address} when the interpreter exited"
                    )
                )
                handle.fut._mark_retrieved()  # the warning below counts it
                dropped += 1
        cluster.client.close()
        if dropped:
            logger.warning(
                "forkwait: at exit, %d offloaded call(s) still pending on the Dask cluster "
                "at %s were dropped with forkwait's client of it",
                dropped,
                cluster.address,
            )


atexit.register(_close_owned_clients)
