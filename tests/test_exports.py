"""The public surface: names, module metadata, and what `import forkwait` loads."""

from __future__ import annotations

import pytest

import forkwait
from tests.conftest import run_script


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a deliberate change to this list."""
    assert sorted(forkwait.__all__) == [
        "CancelledError",
        "Configuration",
        "Future",
        "InvalidStateError",
        "Scope",
        "Trace",
        "collect_all",
        "configure",
        "fork",
        "offload",
        "scope",
        "sequential",
        "trace",
        "wait",
        "wait_all",
    ]


def test_public_objects_claim_the_package_as_their_module() -> None:
    """Tracebacks and reprs say forkwait.Future, not forkwait._future.Future."""
    for name in forkwait.__all__:
        assert getattr(forkwait, name).__module__ == "forkwait", name


def test_future_has_no_public_constructor() -> None:
    """Futures come from fork(); constructing one says so."""
    with pytest.raises(TypeError, match=r"fork\(func"):
        forkwait.Future()


def test_import_loads_neither_torch_nor_trio_nor_uvloop() -> None:
    """`import forkwait` stays light: torch (seconds), trio, Dask and the process pool
    load only when used."""
    result = run_script(
        """
        import sys
        import forkwait
        heavy = ("torch", "trio", "uvloop", "distributed", "cloudpickle", "multiprocessing")
        print(sorted(m for m in heavy if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cancelled_error_is_not_the_awaiters_cancellation() -> None:
    """A cancelled call raises an Exception, not asyncio's BaseException cancellation."""
    import asyncio
    import concurrent.futures

    assert issubclass(forkwait.CancelledError, concurrent.futures.CancelledError)
    assert issubclass(forkwait.CancelledError, Exception)
    assert not issubclass(forkwait.CancelledError, asyncio.CancelledError)
