"""Property test: random trees of nested sync and async forks give the sequential answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkwait
from forkwait import fork, wait


class Planned(Exception):
    """Raised by a node the strategy marked as failing."""


@dataclass(frozen=True)
class Node:
    is_async: bool
    fails: bool
    value: int
    children: tuple[Node, ...]


leaves = st.builds(Node, st.booleans(), st.booleans(), st.integers(0, 9), st.just(()))
trees = st.recursive(
    leaves,
    lambda kids: st.builds(
        Node, st.booleans(), st.booleans(), st.integers(0, 9), st.lists(kids, max_size=3).map(tuple)
    ),
    max_leaves=16,
)


def expected(node: Node) -> int:
    """What evaluating the tree with plain calls gives (raises Planned for failures)."""
    total = node.value + sum(expected(child) for child in node.children)
    if node.fails:
        raise Planned(node.value)
    return total


def settle(node: Node, values: list[int], errors: list[Planned]) -> int:
    """Every child's outcome was retrieved (none is left to log); raise the first failure."""
    if errors:
        raise errors[0]
    if node.fails:
        raise Planned(node.value)
    return node.value + sum(values)


def run_sync(node: Node) -> int:
    futs = [fork(run_async if c.is_async else run_sync, c) for c in node.children]
    values: list[int] = []
    errors: list[Planned] = []
    for fut in futs:
        try:
            values.append(wait(fut))
        except Planned as exc:
            errors.append(exc)
    return settle(node, values, errors)


async def run_async(node: Node) -> int:
    futs = [fork(run_async if c.is_async else run_sync, c) for c in node.children]
    values: list[int] = []
    errors: list[Planned] = []
    for fut in futs:
        try:
            values.append(await fut)
        except Planned as exc:
            errors.append(exc)
    return settle(node, values, errors)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except Planned as exc:
        return "error", exc.args


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, limit=st.integers(1, 8))
def test_random_fork_trees_agree_with_plain_calls(tree: Node, limit: int) -> None:
    """Whatever the shape, mix and thread limit: same value or same first failure, no hang."""
    forkwait.configure(max_threads=limit)
    try:
        want = outcome(expected, tree)
        root = run_async if tree.is_async else run_sync
        assert outcome(lambda: wait(fork(root, tree), timeout=30)) == want
        assert outcome(lambda: asyncio.run(_await_root(root, tree))) == want
    finally:
        forkwait.configure(max_threads=40)


async def _await_root(root: Any, tree: Node) -> int:
    return await asyncio.wait_for(fork(root, tree), timeout=30)  # type: ignore[no-any-return]
