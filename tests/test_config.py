"""configure(): validation and its effect."""

from __future__ import annotations

from typing import Any

import pytest

import forkwait

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_bad_max_threads_raises_value_error_naming_the_option(value: Any) -> None:
    """A limit that is not a whole number >= 1 is refused, and the message names it."""
    with pytest.raises(ValueError, match=r"max_threads"):
        forkwait.configure(max_threads=value)


@pytest.mark.parametrize("value", ["trio", "UVLOOP", 1])
def test_bad_loop_raises_value_error_naming_the_option(value: Any) -> None:
    """Only "asyncio" and "uvloop" name a default loop."""
    with pytest.raises(ValueError, match=r"configure\(loop=\.\.\.\)"):
        forkwait.configure(loop=value)


def test_max_threads_applies_at_once(max_threads: Any) -> None:
    """The pool reads the new limit immediately."""
    from forkwait._threads import pool

    max_threads(3)
    assert pool._limit == 3


def test_none_leaves_settings_unchanged(max_threads: Any) -> None:
    """configure() with nothing given changes nothing."""
    from forkwait._config import settings

    max_threads(5)
    before = (settings.max_threads, settings.loop)
    forkwait.configure()
    assert (settings.max_threads, settings.loop) == before
