"""Shared fixtures: backends, the thread limit, and running scripts in a fresh interpreter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

import forkwait
from forkwait._config import DEFAULT_MAX_THREADS

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """anyio's backend fixture: asyncio with and without uvloop, and trio."""
    return request.param  # type: ignore[no-any-return]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """pytest-asyncio runs each `@pytest.mark.asyncio` test on asyncio and on uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Any:
    """A new-event-loop function for tests that run their own loops, for both loop kinds."""
    return asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop


@pytest.fixture
def max_threads() -> Iterator[Any]:
    """``configure(max_threads=n)`` for one test, restored afterwards."""
    yield lambda n: forkwait.configure(max_threads=n)
    forkwait.configure(max_threads=DEFAULT_MAX_THREADS)


def run_script(
    source: str, *, timeout: float = 30.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter that imports this checkout's forkwait."""
    return run_python("-X", "dev", "-c", textwrap.dedent(source), timeout=timeout, cwd=cwd)


def run_python(
    *args: str, timeout: float = 50.0, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a fresh interpreter that imports this checkout's forkwait, with
    ``env`` added to the environment; output captured."""
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        cwd=cwd,
        check=False,
    )
