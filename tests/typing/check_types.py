"""Type tests: mypy --strict and pyright check these lines; pytest does not run them."""

from __future__ import annotations

import functools
from typing import assert_type

import forkwait
from forkwait import Future, fork, wait, wait_all


def double(x: int, *, scale: int = 2) -> int:
    return x * scale


async def fetch(url: str, retries: int = 0) -> bytes:
    return url.encode()


class Model:
    def __call__(self, batch: list[float]) -> float:
        return sum(batch)


class AsyncCallable:
    async def __call__(self, n: int) -> str:
        return str(n)


def sync_script() -> None:
    assert_type(fork(double, 3), Future[int])
    assert_type(fork(double, 3, scale=4), Future[int])
    assert_type(fork(fetch, "u"), Future[bytes])
    assert_type(fork(fetch, "u", retries=2), Future[bytes])
    assert_type(fork(Model(), [1.0]), Future[float])
    assert_type(fork(AsyncCallable(), 1), Future[str])
    assert_type(fork(functools.partial(double, 3)), Future[int])
    assert_type(fork(lambda: "x"), Future[str])
    assert_type(fork(len, "abc"), Future[int])

    fut = fork(double, 3)
    assert_type(wait(fut), int)
    assert_type(wait(fut, timeout=1.5), int)
    assert_type(fut.result(), int)
    assert_type(fut.result(timeout=1), int)
    assert_type(fut.exception(), BaseException | None)
    assert_type(fut.done(), bool)
    assert_type(fut.cancelled(), bool)
    assert_type(fut.cancel(), bool)
    assert_type(fut.then(lambda f: str(f.result())), Future[str])
    assert_type(wait_all([fut, fork(double, 4)]), list[int])
    assert_type(fut.wait(), int)
    assert_type(fut.value(), int)
    assert_type(forkwait.collect_all([fut, fork(double, 4)]), Future[list[Future[int]]])
    fut.add_done_callback(lambda f: print(f.result()))
    forkwait.configure(max_threads=8, loop="asyncio")


async def async_handler() -> None:
    assert_type(await fork(fetch, "u"), bytes)
    assert_type(await fork(double, 1), int)
    fut = fork(fetch, "u")

    async def decode(f: Future[bytes]) -> str:
        return (await f).decode()

    assert_type(fut.then(decode), Future[str])


def rejected_by_the_checkers() -> None:
    fork(double, "three")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    fork(double, 3, scale="x")  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType]
    fork(fetch, "u", bogus=1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
