"""Context variables of the forking code are visible in the forked call."""

from __future__ import annotations

import contextvars

import anyio
import anyio.lowlevel
import pytest

from forkwait import fork, wait

pytestmark = pytest.mark.timeout(20)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def read_sync() -> str:
    return request_id.get()


async def read_async() -> str:
    await anyio.lowlevel.checkpoint()
    return request_id.get()


def nested_read() -> tuple[str, str]:
    return wait(fork(read_sync)), wait(fork(read_async))


def test_sync_and_async_calls_see_the_forking_context_from_sync_code() -> None:
    """Set before fork, read inside: in a worker thread and on the default runtime."""
    token = request_id.set("sync-caller")
    try:
        assert wait(fork(read_sync)) == "sync-caller"
        assert wait(fork(read_async)) == "sync-caller"
        assert wait(fork(nested_read)) == ("sync-caller", "sync-caller")
    finally:
        request_id.reset(token)


@pytest.mark.anyio
async def test_sync_and_async_calls_see_the_forking_context_from_async_code() -> None:
    """The same from a task: tasks and worker threads both inherit the context."""
    request_id.set("async-caller")
    assert await fork(read_sync) == "async-caller"
    assert await fork(read_async) == "async-caller"
    assert await fork(nested_read) == ("async-caller", "async-caller")


def test_the_context_is_captured_at_fork_time() -> None:
    """A change after fork does not leak into the call, and the call's changes stay inside."""

    def set_and_read() -> str:
        request_id.set("inside")
        return request_id.get()

    token = request_id.set("at-fork")
    try:
        fut = fork(read_sync)
        request_id.set("after-fork")
        assert wait(fut) == "at-fork"
        assert wait(fork(set_and_read)) == "inside"
        assert request_id.get() == "after-fork"
    finally:
        request_id.reset(token)


def test_then_runs_in_the_context_of_its_caller() -> None:
    """then(fn) sees the context where then() was called, like add_done_callback in asyncio."""
    token = request_id.set("then-caller")
    try:
        assert wait(fork(abs, 1).then(lambda _: request_id.get())) == "then-caller"
    finally:
        request_id.reset(token)
