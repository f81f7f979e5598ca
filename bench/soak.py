"""``python -m bench.soak``: many fork/wait cycles; RSS and threads must stay flat.

Runs ``--cycles`` fork/wait cycles in four kinds (sync and async callers, sync and
async callees), printing resident memory and thread count as it goes, then checks the
end state: no pending task, no live Future, no waiter list, threads back to baseline,
and memory within a few MiB of where the first tenth of the run left it.
``make soak`` runs a million; the test suite runs 50,000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import threading
import time
import tracemalloc
from typing import Any

import psutil
import uvloop

from forkwait import Future, fork, wait
from forkwait._future import _lists
from forkwait._runtime import runtime
from forkwait._threads import pool

#: How far memory may drift from the level after the first tenth of the run.
RSS_SLACK_MIB = 8.0


async def anoop(x: int) -> int:
    return x


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def sync_cycles(n: int) -> None:
    for i in range(n):
        assert wait(fork(abs, -i)) == i
        assert wait(fork(anoop, i)) == i


async def async_cycles(n: int) -> int:
    for i in range(n):
        assert await fork(abs, -i) == i
        assert await fork(anoop, i) == i
    return len(asyncio.all_tasks()) - 1  # not this one


def runtime_tasks() -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), runtime.loop()).result()


def settle_threads(baseline: int) -> int:
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)  # idle workers retire on their own clock
    return threading.active_count()


async def pending_bytes(count: int) -> tuple[float, float]:
    """Bytes per pending coroutine fork and per pending task, ``count`` of each."""
    gate = asyncio.Event()

    async def blocked(i: int) -> int:
        await gate.wait()
        return i

    async def measure(start: Any) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            held = start()
            for _ in range(3):  # every one starts and blocks on the gate
                await asyncio.sleep(0)
            per_item = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
        gate.set()
        values = [await item for item in held]
        assert values == list(range(count)), "a pending fork was lost"
        gate.clear()
        return per_item

    per_fork = await measure(lambda: [fork(blocked, i) for i in range(count)])
    per_task = await measure(lambda: [asyncio.ensure_future(blocked(i)) for i in range(count)])
    return per_fork, per_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--cycles", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000, help="0: skip that part")
    parser.add_argument("--quiet", action="store_true", help="print only the end state")
    args = parser.parse_args(argv)

    if args.pending:
        per_fork, per_task = asyncio.run(pending_bytes(args.pending))
        print(
            f"{args.pending} pending coroutine forks completed: {per_fork:.0f} B each, "
            f"{per_fork / per_task:.2f}x a pending task ({per_task:.0f} B; target <= 1.5x)"
        )

    pool.idle_seconds = 0.2  # idle workers retire quickly, for the thread check
    wait(fork(anoop, 0))
    wait(fork(abs, 0))  # the runtime and a worker are up
    baseline_threads = settle_threads(2)  # the main thread and the runtime's
    # Each step runs cycles/40 of each kind, so that the curve has 10 points.
    step = max(args.cycles // 40, 1)
    settled_rss: float | None = None
    if not args.quiet:
        print(f"{'cycles':>10} {'RSS MiB':>8} {'threads':>7}")
    done = 0
    left_in_async = 0
    for round_ in range(10):
        sync_cycles(step)
        left_in_async += asyncio.run(async_cycles(step))
        left_in_async += uvloop.run(async_cycles(step))
        done += 4 * step
        gc.collect()
        rss = rss_mib()
        if round_ == 0:
            settled_rss = rss
        if not args.quiet:
            print(f"{done:>10} {rss:>8.1f} {threading.active_count():>7}", flush=True)
    gc.collect()
    live = sum(1 for o in gc.get_objects() if type(o) is Future)
    threads_above = settle_threads(baseline_threads) - baseline_threads
    drift = rss_mib() - (settled_rss or 0.0)
    problems = [
        f"{name}: {value}"
        for name, value, bad in [
            ("tasks left in async callers", left_in_async, left_in_async != 0),
            ("tasks left on the runtime", runtime_tasks(), runtime_tasks() != 0),
            ("live futures", live, live != 0),
            ("waiter lists left", len(_lists), len(_lists) != 0),
            ("threads above baseline", threads_above, threads_above > 0),
            ("RSS drift MiB", round(drift, 1), drift > RSS_SLACK_MIB),
        ]
        if bad
    ]
    print(f"{done} cycles; RSS drift {drift:+.1f} MiB after the first tenth", file=sys.stderr)
    if problems:
        print("end state: " + "; ".join(problems))
        return 1
    print("end state: back to baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
