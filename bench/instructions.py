"""Instructions per operation under valgrind's callgrind: the hot paths, repeatably.

Wall-clock ratios on a shared 2-core machine swing by 0.3 from run to run; counted
instructions do not. Each case runs in a fresh interpreter under
``valgrind --tool=callgrind`` twice, with 0 and with N operations, and the difference
over N is the cost of one operation. Run with ``python -m bench.instructions``
(``make bench-instructions``); it takes a minute or two.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import uvloop

import forkwait
from forkwait import configure, fork, wait

from .fib import HelpingPool

N = 4000
FIB_N = 12  # 464 forks and waits


async def _anoop() -> int:
    return 1


async def _await_create_task(n: int) -> None:
    create_task = asyncio.get_running_loop().create_task
    for _ in range(n):
        await create_task(_anoop())


async def _await_fork(n: int) -> None:
    for _ in range(n):
        await fork(_anoop)


async def _fan_out_create_task(n: int) -> None:
    create_task = asyncio.get_running_loop().create_task
    for _ in range(n // 1000):
        tasks = [create_task(_anoop()) for _ in range(1000)]
        for task in tasks:
            await task


async def _fan_out_fork(n: int) -> None:
    for _ in range(n // 1000):
        futs = [fork(_anoop) for _ in range(1000)]
        for fut in futs:
            await fut


def _fib_forkwait(k: int) -> int:
    if k < 2:
        return k
    a, b = fork(_fib_forkwait, k - 1), fork(_fib_forkwait, k - 2)
    return wait(a) + wait(b)


def _run_fib(which: str, n: int) -> None:
    """fib with its one worker held busy, so that every fork is waited on inline."""
    gate = threading.Event()
    if which == "forkwait":
        configure(max_threads=1)
        fork(gate.wait)
        fib = _fib_forkwait
    else:
        pool = HelpingPool(1)
        pool.submit(gate.wait)

        def fib(k: int) -> int:
            if k < 2:
                return k
            a, b = pool.submit(fib, k - 1), pool.submit(fib, k - 2)
            return pool.join(a) + pool.join(b)  # type: ignore[no-any-return]

    if n:
        fib(FIB_N)
    gate.set()


async def _await_start_soon(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            await tg.start_soon(_anoop)


async def _await_scoped_fork(n: int) -> None:
    async with forkwait.scope():
        for _ in range(n):
            await fork(_anoop)


ASYNC_CASES = {
    "await create_task": _await_create_task,
    "await fork(coro)": _await_fork,
    "fan-out create_task": _fan_out_create_task,
    "fan-out fork(coro)": _fan_out_fork,
    "await tg.start_soon()": _await_start_soon,
    "scoped await fork(coro)": _await_scoped_fork,
}


def _child(case: str, loop: str, n: int) -> None:
    if loop == "trio":
        anyio.run(ASYNC_CASES[case], n, backend="trio")
    elif case in ASYNC_CASES:
        run = asyncio.run if loop == "asyncio" else uvloop.run
        run(ASYNC_CASES[case](n))
    else:
        _run_fib(case, n)


def _instructions(case: str, loop: str, n: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.instructions", "--child", case, loop, str(n)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr}")
    return int(found.group(1))


def _per_op(case: str, loop: str, n: int, ops: int) -> float:
    return (_instructions(case, loop, n) - _instructions(case, loop, 0)) / ops


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count", file=sys.stderr)
        return 2
    print("| case | anchor instr/op | forkwait instr/op | ratio |")
    print("|---|---:|---:|---:|")
    for loop in ("uvloop", "asyncio"):
        for anchor, ours in (
            ("await create_task", "await fork(coro)"),
            ("fan-out create_task", "fan-out fork(coro)"),
        ):
            a, f = _per_op(anchor, loop, N, N), _per_op(ours, loop, N, N)
            print(f"| {ours} [{loop}] | {a:,.0f} | {f:,.0f} | {f / a:.2f} |", flush=True)
    a = _per_op("await tg.start_soon()", "trio", N, N)
    f = _per_op("scoped await fork(coro)", "trio", N, N)
    print(f"| scoped await fork(coro) [trio] | {a:,.0f} | {f:,.0f} | {f / a:.2f} |", flush=True)
    forks = 2 * 232  # fib(12) forks twice in each of its 232 calls with k >= 2
    a = _per_op("helping", "-", 1, forks)
    f = _per_op("forkwait", "-", 1, forks)
    print(f"| sync fork+wait run inline (fib) | {a:,.0f} | {f:,.0f} | {f / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
