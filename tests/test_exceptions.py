"""The call's own exception reaches the waiter; one nobody retrieved is logged."""

from __future__ import annotations

import gc
import logging
import threading
import traceback

import anyio
import anyio.lowlevel
import pytest

from forkwait import fork, wait

pytestmark = pytest.mark.timeout(20)


class Boom(Exception):
    pass


def deep_inside_the_callee() -> None:
    raise Boom("from the callee")


def sync_callee() -> None:
    deep_inside_the_callee()


async def async_callee() -> None:
    await anyio.lowlevel.checkpoint()
    deep_inside_the_callee()


@pytest.mark.parametrize("callee", [sync_callee, async_callee])
def test_the_same_exception_object_with_the_callees_frames(callee: object) -> None:
    """wait re-raises the very object the callee raised, with its frames in the traceback."""
    fut = fork(callee)  # type: ignore[call-overload]
    with pytest.raises(Boom) as info:
        wait(fut)
    assert info.value is fut.exception()
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "deep_inside_the_callee" in frames
    assert callee.__name__ in frames  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("callee", [sync_callee, async_callee])
async def test_await_raises_the_same_exception_object(callee: object) -> None:
    """`await fut` re-raises the callee's own exception too."""
    fut = fork(callee)  # type: ignore[call-overload]
    with pytest.raises(Boom) as first:
        await fut
    with pytest.raises(Boom) as second:
        await fut
    assert first.value is second.value


def test_retrieving_twice_does_not_grow_the_traceback() -> None:
    """Each retrieval starts from the callee's traceback, as asyncio does."""
    fut = fork(sync_callee)
    lengths = []
    for _ in range(3):
        with pytest.raises(Boom) as info:
            fut.result()
        lengths.append(len(traceback.extract_tb(info.value.__traceback__)))
    assert lengths[0] == lengths[1] == lengths[2]


@pytest.mark.parametrize("callee", [sync_callee, async_callee])
def test_a_failure_nobody_retrieved_is_logged_when_collected(
    callee: object, caplog: pytest.LogCaptureFixture
) -> None:
    """An unretrieved exception is reported once the future is garbage collected."""
    fut = fork(callee)  # type: ignore[call-overload]
    finished = threading.Event()
    fut.add_done_callback(lambda _: finished.set())  # completion without retrieval
    assert finished.wait(timeout=10)
    with caplog.at_level(logging.WARNING, logger="forkwait"):
        del fut
        gc.collect()
    assert "never retrieved" in caplog.text
    assert "Boom" in caplog.text
    assert callee.__name__ in caplog.text  # type: ignore[attr-defined]


def test_a_retrieved_failure_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Once someone has seen the exception, collection stays quiet."""
    fut = fork(sync_callee)
    assert isinstance(fut.exception(), Boom)
    with caplog.at_level(logging.WARNING, logger="forkwait"):
        del fut
        gc.collect()
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_reach_the_waiter(
    exc_type: type[BaseException],
) -> None:
    """BaseExceptions raised in a forked call belong to the waiter, not to a worker or loop."""

    def raiser() -> None:
        raise exc_type

    async def araiser() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        wait(fork(raiser))
    with pytest.raises(exc_type):
        wait(fork(araiser))
    assert wait(fork(abs, -1)) == 1  # the runtime and the pool survived
