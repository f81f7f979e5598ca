"""forkwait.trace(): what it records, and its views (graph, Trace Event JSON, Mermaid, HTML)."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import forkwait
from forkwait import fork, wait

pytestmark = pytest.mark.timeout(30)


async def fetch(value: int) -> int:
    await anyio.sleep(0.01)
    return value


def work(value: int) -> int:
    """A sync call that forks a coroutine back onto the loop and waits for it."""
    return wait(fork(fetch, value)) * 2


def refuse() -> None:
    raise ValueError("refused")


def traced_program() -> forkwait.Trace:
    release = threading.Event()
    with forkwait.trace() as tr:
        doubled = [fork(work, i) for i in range(2)]
        failing = fork(refuse)
        blocker = fork(release.wait, 10)
        assert forkwait.wait_all(doubled) == [0, 2]
        with pytest.raises(ValueError, match="refused"):
            wait(failing)
        release.set()
        wait(blocker)
    return tr


def by_name(tr: forkwait.Trace, name: str) -> list[forkwait._trace.Call]:
    return [call for call in tr.calls if call.name == name]


def test_every_fork_is_recorded_with_parent_thread_times_and_outcome() -> None:
    tr = traced_program()
    assert sorted(call.name for call in tr.calls) == sorted(
        ["work", "work", "refuse", "Event.wait", "fetch", "fetch"]
    )
    works, fetches = by_name(tr, "work"), by_name(tr, "fetch")
    assert {call.parent for call in works} == {None}
    assert {call.parent for call in fetches} == {call.id for call in works}
    for call in tr.calls:
        assert call.started_at is not None
        assert call.ended_at is not None
        assert call.forked_at <= call.started_at <= call.ended_at
        assert call.thread
    for call in fetches:
        assert call.is_async
        assert call.loop is not None  # a coroutine runs on a loop
        assert call.forked_in in {work.thread for work in works}  # forked from the workers
    assert all(call.loop is None for call in works)
    assert {call.outcome for call in works} == {"value"}
    (failed,) = by_name(tr, "refuse")
    assert failed.outcome == "exception"
    assert failed.detail == "ValueError: refused"


def test_waits_say_who_waited_on_what_and_for_how_long() -> None:
    tr = traced_program()
    names = {call.id: call for call in tr.calls}
    waited = {(names[w.call].name, w.waiter) for w in tr.waits}
    work_ids = {call.id for call in by_name(tr, "work")}
    assert ("refuse", None) in waited
    assert {waiter for name, waiter in waited if name == "fetch"} == work_ids
    for record in tr.waits:
        assert record.ended_at is not None
        assert record.started_at <= record.ended_at


def test_a_cancelled_fork_is_recorded_as_cancelled(max_threads: Any) -> None:
    max_threads(1)
    release = threading.Event()
    with forkwait.trace() as tr:
        blocker = fork(release.wait, 10)
        queued = fork(lambda: None)
        assert queued.cancel()
        release.set()
        wait(blocker)
    (call,) = [c for c in tr.calls if c.name.endswith("<lambda>")]
    assert call.outcome == "cancelled"
    assert call.started_at is None


def test_a_call_that_starts_after_the_trace_ended_has_no_negative_duration(
    max_threads: Any,
) -> None:
    """Queued behind another when the trace ends, it starts later, still running: the
    Chrome trace shows it as a point where it started, not as ending before it began."""
    max_threads(1)
    release, started, finish = threading.Event(), threading.Event(), threading.Event()

    def starts_late() -> None:
        started.set()
        assert finish.wait(10)

    with forkwait.trace() as tr:
        blocker = fork(release.wait, 10)
        late = fork(starts_late)
    release.set()
    assert started.wait(10)
    slices = [e for e in tr.to_chrome_trace()["traceEvents"] if e.get("ph") == "X"]
    finish.set()
    wait(blocker)
    wait(late)
    assert len(slices) == 3  # the traced code and both calls
    assert all(event["dur"] >= 0 for event in slices), slices


def test_nothing_is_recorded_outside_the_trace() -> None:
    with forkwait.trace() as tr:
        wait(fork(work, 1))
    count = len(tr.calls)
    wait(fork(work, 2))
    assert len(tr.calls) == count


@pytest.mark.anyio
async def test_async_code_is_traced_on_every_backend() -> None:
    with forkwait.trace() as tr:
        assert await fork(fetch, 3) == 3
        assert await fork(work, 4) == 8
    assert [call.name for call in tr.calls] == ["fetch", "work", "fetch"]
    assert len(tr.waits) == 3  # two awaits, and the worker's wait


def test_the_graph_reads_as_forks_and_waits() -> None:
    text = str(traced_program().graph)
    assert "fork #" in text
    assert "wait #" in text
    lines = text.splitlines()
    nested = [line for line in lines if line.startswith("  fork #") and " fetch " in line]
    assert len(nested) == 2, text  # the coroutines are indented under the calls that forked them


def test_the_trace_event_json_loads_back_with_tracks_slices_and_arrows(tmp_path: Path) -> None:
    tr = traced_program()
    path = tr.save(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    slices = [e for e in events if e["ph"] == "X" and e["cat"] == "call"]
    assert len(slices) == len(tr.calls)
    for call in tr.calls:
        (event,) = [e for e in slices if e["args"]["call"] == call.id]
        assert threads[event["tid"]] == call.thread
        assert event["name"] == call.name
        starts = [e for e in events if e["ph"] == "s" and e["id"] == call.id]
        ends = [e for e in events if e["ph"] == "f" and e["id"] == call.id]
        assert len(starts) == len(ends) == 1, "one arrow from the fork to the call's start"
        assert threads[starts[0]["tid"]] == call.forked_in
    waits = [e for e in events if e["ph"] == "X" and e["cat"] == "wait"]
    assert len(waits) == len(tr.waits)
    joins = [e for e in events if e["ph"] in ("s", "f") and e["cat"] == "wait"]
    assert len(joins) == 2 * len(tr.waits), "an arrow from each call's end to each wait"


def test_the_mermaid_flowchart_has_a_node_per_call_and_fork_and_wait_edges() -> None:
    tr = traced_program()
    chart = tr.to_mermaid()
    assert chart.startswith("flowchart TD\n")
    assert chart.count(" -- fork --> ") == len(tr.calls)
    assert chart.count(" -. wait .-> ") == len(tr.waits)
    for call in tr.calls:
        assert f"  c{call.id}[" in chart


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.calls: set[int] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        found = dict(attrs)
        if tag == "rect" and found.get("class") == "call":
            self.calls.add(int(found["data-call"] or 0))


def test_the_html_page_is_self_contained_well_formed_and_holds_every_call(
    tmp_path: Path,
) -> None:
    tr = traced_program()
    page = tr.save_html(tmp_path / "trace.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    ElementTree.fromstring(svg)  # the timeline is well-formed XML
    collected = _Collect()
    collected.feed(page)
    assert collected.calls == {call.id for call in tr.calls}
    assert "script" not in collected.tags
    assert "link" not in collected.tags
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


@pytest.mark.anyio
async def test_awaiting_a_finished_fork_is_a_wait_too() -> None:
    with forkwait.trace() as tr:
        fut = fork(work, 1)
        await anyio.to_thread.run_sync(lambda: fut.exception(timeout=10))  # finished now
        assert await fut == 2
    assert [w.call for w in tr.waits if w.waiter is None] == [1]


def test_a_sequential_run_inside_a_trace_records_every_call() -> None:
    def parent() -> int:
        return wait(fork(abs, -1)) + 1

    with forkwait.trace() as tr, forkwait.sequential():
        assert wait(fork(parent)) == 2
    assert [(c.name.rsplit(".", 1)[-1], c.outcome) for c in tr.calls] == [
        ("parent", "value"),
        ("abs", "value"),
    ]
    assert {w.call for w in tr.waits} == {1, 2}


def test_nested_traces_each_number_their_own_calls() -> None:
    """As under `python -m forkwait trace` of a script that traces: each trace's parents
    are its own calls."""

    def total(n: int) -> int:
        return sum(forkwait.wait_all([fork(abs, -i) for i in range(n)]))

    with forkwait.trace() as outer:
        wait(fork(abs, 0))  # so that the two traces number the same call differently
        with forkwait.trace() as inner:
            assert wait(fork(total, 3)) == 3
    assert [(c.id, c.parent) for c in inner.calls] == [(1, None), (2, 1), (3, 1), (4, 1)]
    assert [(c.id, c.parent) for c in outer.calls] == [
        (1, None),
        (2, None),
        (3, 2),
        (4, 2),
        (5, 2),
    ]
    assert sorted((w.call, w.waiter or 0) for w in inner.waits) == [(1, 0), (2, 1), (3, 1), (4, 1)]
    assert str(inner.graph).count("  fork #") == 3  # the three under total


def test_a_fork_that_raises_is_recorded_with_what_it_raised() -> None:
    with forkwait.trace() as tr:
        with forkwait.offload("processes"), pytest.raises(TypeError, match="cannot be pickled"):
            fork(abs, threading.Lock())
        assert wait(fork(abs, -2)) == 2
    refused, after = tr.calls
    assert (refused.outcome, refused.started_at) == ("exception", None)
    assert refused.detail.startswith("TypeError at fork: fork(abs) cannot send argument 0")
    assert (after.outcome, after.parent) == ("value", None)
    assert [w.call for w in tr.waits] == [after.id]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


def test_an_exception_whose_str_raises_is_recorded_without_raising() -> None:
    def fails() -> None:
        raise Unprintable

    with forkwait.trace() as tr, pytest.raises(Unprintable):
        wait(fork(fails))
    assert tr.calls[0].detail == "Unprintable: <exception str() failed>"


def test_the_mermaid_node_of_a_call_still_running_says_so() -> None:
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(10)

    with forkwait.trace() as tr:
        fut = fork(busy)
        assert started.wait(10)
    try:
        assert "sync · still running · pending" in tr.to_mermaid()
    finally:
        release.set()
        wait(fut)


def test_a_coroutine_a_sync_call_returns_is_part_of_that_call() -> None:
    """Its loop awaits it as the rest of the call (spec: a result is never a coroutine):
    the call ends with it, and its forks have the call as their parent."""

    def leaf() -> int:
        return 1

    async def body() -> int:
        await anyio.lowlevel.checkpoint()
        return await forkwait.fork(leaf)

    def starts_a_coroutine() -> Any:
        return body()

    with forkwait.trace() as tr:
        assert forkwait.wait(forkwait.fork(starts_a_coroutine)) == 1
    outer, inner = tr.calls
    assert inner.parent == outer.id
    assert outer.ended_at is not None
    assert inner.ended_at is not None
    assert outer.ended_at >= inner.ended_at
    assert (inner.id, outer.id) in [(w.call, w.waiter) for w in tr.waits]
