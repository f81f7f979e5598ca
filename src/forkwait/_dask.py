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

    __slots__ = ("fut", "pending", "task", "unsettled")

    def __init__(self, fut: Future[Any], task: DaskFuture, pending: set[DaskCall]) -> None:
        super().__init__()
        self.fut = fut
        self.task: DaskFuture | None = task
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


async def _settle(client: Client, fut: Future[Any], handle: DaskCall, task: DaskFuture) -> None:
    """Finish ``fut`` as its task finished (a coroutine on the client's event loop)."""
    thread_state.serves_others = True  # callbacks must not block the client: see _future
    try:
        packed = await client.gather(task, asynchronous=True)
    except BaseException as exc:
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
        return
    finally:
        handle.task = None  # the cluster may let the result go once this is done
        handle.pending.discard(handle)
    if handle.claim():
        settle_with_outcome(fut, handle, packed, "the cluster")


_lock = threading.Lock()
# By id of the client; while something uses the target (an offload() block, the
# configured default, a fork on its way), so an app's closed clients are let go.
_clusters: weakref.WeakValueDictionary[int, Cluster] = weakref.WeakValueDictionary()
_by_address: dict[str, Cluster] = {}


def cluster_of(client: Any, api: str = "forkwait.offload()") -> Cluster:
    """The target for an app's own ``distributed.Client``; ``api`` names the caller."""
    from distributed import Client as DaskClient

    if not isinstance(client, DaskClient):
        raise ValueError(
            f"{api} takes a distributed.Client, not {type(client).__qualname__}; "
            f"make one with distributed.Client(address) or pass the scheduler address"
        )
    if client.asynchronous:
        raise ValueError(
            f"{api} needs a Client made with asynchronous=False (the default): "
            "forkwait's futures are awaitable from any loop, so it submits from any thread"
        )
    with _lock:
        cluster = _clusters.get(id(client))
        if cluster is None or cluster.client is not client:
            cluster = _clusters[id(client)] = Cluster(client, owned=False)
        return cluster


def cluster_at(address: str, api: str = "forkwait.offload()") -> Cluster:
    """The target for a scheduler address: a client opened on first use, closed at exit;
    ``api`` names the caller."""
    with _lock:
        cluster = _by_address.get(address)
        if cluster is not None and cluster.client.status not in ("closed", "closing"):
            return cluster
        from distributed import Client as DaskClient

        try:
            client = DaskClient(address, set_as_default=False, timeout=10)  # type: ignore[no-untyped-call]
        except Exception as exc:  # OSError: nobody there; ValueError: no such address
            raise ValueError(
                f"{api} could not reach a Dask scheduler at {address!r} "
                f"({type(exc).__name__}: {exc}); check the address, such as "
                f"'tcp://127.0.0.1:8786', or start one (dask scheduler)"
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
