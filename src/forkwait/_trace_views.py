"""Views of a trace: the indented graph, Trace Event JSON, Mermaid, and an HTML timeline."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._trace import Call, Trace, Wait

ROOT = "traced code"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.1f}"


def _span(call: Call) -> str:
    if call.started_at is None:
        return "never started"
    return f"{_ms(call.started_at)}-{_ms(call.ended_at)} ms"


def _outcome(call: Call) -> str:
    return f"{call.outcome} {call.detail}".strip()


# -- str(tr.graph) ------------------------------------------------------------------------


def graph_text(trace: Trace) -> str:
    """Each call under the call that forked it, with the waits each made."""
    children: dict[int | None, list[Call]] = {}
    for call in trace.calls:
        children.setdefault(call.parent, []).append(call)
    waits: dict[int | None, list[Wait]] = {}
    for record in trace.waits:
        waits.setdefault(record.waiter, []).append(record)
    names = {call.id: call.name for call in trace.calls}
    lines = [f"trace: {len(trace.calls)} forks, {len(trace.waits)} waits, {_ms(trace.ended_at)} ms"]

    def emit(parent: int | None, depth: int) -> None:
        pad = "  " * depth
        for call in children.get(parent, []):
            where = call.thread or "-"
            if call.loop:
                where += f", {call.loop}"
            kind = "async" if call.is_async else "sync"
            lines.append(
                f"{pad}fork #{call.id} {call.name} ({kind}; forked in {call.forked_in} at "
                f"{_ms(call.forked_at)} ms; ran in {where}, {_span(call)}): {_outcome(call)}"
            )
            emit(call.id, depth + 1)
        for record in waits.get(parent, []):
            lines.append(
                f"{pad}wait #{record.call} {names.get(record.call, '?')} in {record.thread}: "
                f"{_ms(record.started_at)}-{_ms(record.ended_at)} ms"
            )

    emit(None, 0)
    return "\n".join(lines)


# -- Trace Event Format ---------------------------------------------------------------------


def chrome_trace(trace: Trace) -> dict[str, Any]:
    """One track per thread; a slice per call and per wait; flow arrows from each fork
    to the start of its call, and from each call's end to the waits on it."""
    tids: dict[str, int] = {}

    def tid(thread: str | None) -> int:
        name = thread or "(never ran)"
        return tids.setdefault(name, len(tids) + 1)

    def us(seconds: float | None) -> float:
        return round((seconds or 0.0) * 1e6, 3)

    end = trace.ended_at or 0.0
    events: list[dict[str, Any]] = [
        # The code that entered the trace, so that forks made there have a slice to
        # start their arrows from.
        _slice(ROOT, "trace", 0.0, us(end), tid(trace.thread), {}),
    ]
    by_id = {call.id: call for call in trace.calls}
    for call in trace.calls:
        if call.started_at is None:
            continue
        # Still running when the trace ended: until then, or a point if it started later.
        ended = call.ended_at if call.ended_at is not None else max(end, call.started_at)
        args = {
            "call": call.id,
            "parent": call.parent,
            "outcome": _outcome(call),
            "async": call.is_async,
            "loop": call.loop,
        }
        events.append(
            _slice(
                call.name,
                "call",
                us(call.started_at),
                us(ended - call.started_at),
                tid(call.thread),
                args,
            )
        )
        events.append(_flow("s", call.id, "fork", us(call.forked_at), tid(call.forked_in)))
        events.append(_flow("f", call.id, "fork", us(call.started_at), tid(call.thread)))
    flow_id = len(trace.calls) + 1
    for record in trace.waits:
        ended = record.ended_at if record.ended_at is not None else max(end, record.started_at)
        waited = by_id.get(record.call)
        name = waited.name if waited is not None else "?"
        events.append(
            _slice(
                f"wait {name}",
                "wait",
                us(record.started_at),
                us(ended - record.started_at),
                tid(record.thread),
                {"call": record.call},
            )
        )
        if waited is not None and waited.ended_at is not None and waited.thread is not None:
            events.append(_flow("s", flow_id, "wait", us(waited.ended_at), tid(waited.thread)))
            events.append(_flow("f", flow_id, "wait", us(ended), tid(record.thread)))
            flow_id += 1
    for name, number in tids.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": number, "args": {"name": name}}
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _slice(
    name: str, cat: str, ts: float, dur: float, tid: int, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "ts": ts,
        "dur": dur,
        "pid": 1,
        "tid": tid,
        "args": args,
    }


def _flow(phase: str, flow_id: int, name: str, ts: float, tid: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "name": name,
        "cat": name,
        "ph": phase,
        "id": flow_id,
        "ts": ts,
        "pid": 1,
        "tid": tid,
    }
    if phase == "f":
        event["bp"] = "e"  # bind to the slice enclosing the arrow's end
    return event


# -- Mermaid --------------------------------------------------------------------------------


def mermaid(trace: Trace) -> str:
    """``flowchart TD``: a node per call, ``fork`` edges from parent to child, ``wait``
    edges from a call to whoever waited on it."""

    def node(call_id: int | None) -> str:
        return "root" if call_id is None else f"c{call_id}"

    def label(text: str) -> str:
        return html.escape(text, quote=True).replace("&quot;", "#quot;")

    lines = ["flowchart TD", f'  root(["{ROOT}"])']
    for call in trace.calls:
        if call.started_at is None:
            duration = "never ran"
        elif call.ended_at is None:
            duration = "still running"  # when the trace ended
        else:
            duration = f"{_ms(call.ended_at - call.started_at)} ms"
        kind = "async" if call.is_async else "sync"
        lines.append(
            f'  {node(call.id)}["{label(call.name)}<br/>{kind} · {duration} · '
            f'{label(call.outcome)}"]'
        )
    for call in trace.calls:
        lines.append(f"  {node(call.parent)} -- fork --> {node(call.id)}")
    for record in trace.waits:
        lines.append(f"  {node(record.call)} -. wait .-> {node(record.waiter)}")
    return "\n".join(lines) + "\n"


# -- the HTML timeline ----------------------------------------------------------------------

_COLOURS = {
    "value": "#4c8be8",
    "exception": "#e0533f",
    "cancelled": "#9aa0a6",
    "pending": "#f2b63c",
}
_LANE = 34
_LEFT = 190
_WIDTH = 1000


def html_timeline(trace: Trace) -> str:
    """A page with an inline SVG: a lane per thread, a bar per call and per wait, arrows
    from fork to start and from end to wait; then a table of the calls."""
    threads: list[str] = []
    for name in [
        trace.thread or "",
        *(c.forked_in for c in trace.calls),
        *(c.thread for c in trace.calls if c.thread),
        *(w.thread for w in trace.waits),
    ]:
        if name and name not in threads:
            threads.append(name)
    lane = {name: index for index, name in enumerate(threads)}
    end = max(trace.ended_at or 0.0, 1e-6)

    def x(seconds: float | None) -> float:
        return _LEFT + (seconds or 0.0) / end * _WIDTH

    def y(thread: str | None) -> float:
        return 30 + lane.get(thread or "", 0) * _LANE

    height = 30 + len(threads) * _LANE + 20
    svg: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#555"/></marker></defs>',
    ]
    for name, index in lane.items():
        top = 30 + index * _LANE
        svg.append(
            f'<rect x="0" y="{top - 4}" width="{_LEFT + _WIDTH + 20}" height="{_LANE}" '
            f'fill="{"#f6f6f6" if index % 2 else "#ffffff"}"/>'
        )
        svg.append(f'<text x="8" y="{top + 15}">{html.escape(name)}</text>')
    for tick in range(11):
        at = _LEFT + tick * _WIDTH / 10
        svg.append(f'<line x1="{at:.1f}" y1="20" x2="{at:.1f}" y2="{height - 20}" stroke="#ddd"/>')
        svg.append(
            f'<text x="{at:.1f}" y="14" text-anchor="middle" fill="#666">'
            f"{end * tick / 10 * 1e3:.1f} ms</text>"
        )
    for record in trace.waits:
        ended = record.ended_at if record.ended_at is not None else end
        svg.append(
            f'<rect class="wait" x="{x(record.started_at):.1f}" y="{y(record.thread) + 17}" '
            f'width="{max(x(ended) - x(record.started_at), 1):.1f}" height="8" '
            f'fill="#b39ddb"><title>wait #{record.call}: {_ms(ended - record.started_at)} ms'
            f"</title></rect>"
        )
    for call in trace.calls:
        if call.started_at is None:
            continue
        ended = call.ended_at if call.ended_at is not None else end
        left, right = x(call.started_at), max(x(ended), x(call.started_at) + 2)
        tip = html.escape(f"#{call.id} {call.name}: {_span(call)}, {_outcome(call)}")
        svg.append(
            f'<rect class="call" data-call="{call.id}" x="{left:.1f}" y="{y(call.thread)}" '
            f'width="{right - left:.1f}" height="16" rx="3" '
            f'fill="{_COLOURS.get(call.outcome, "#888")}"><title>{tip}</title></rect>'
        )
        if right - left > 40:
            svg.append(
                f'<text x="{left + 3:.1f}" y="{y(call.thread) + 12}" fill="#fff">'
                f"{html.escape(call.name[: int((right - left) / 7)])}</text>"
            )
        svg.append(
            f'<line class="fork" x1="{x(call.forked_at):.1f}" y1="{y(call.forked_in) + 8}" '
            f'x2="{left:.1f}" y2="{y(call.thread) + 8}" stroke="#555" stroke-width="1" '
            f'marker-end="url(#arrow)"/>'
        )
    by_id = {call.id: call for call in trace.calls}
    for record in trace.waits:
        waited = by_id.get(record.call)
        if waited is None or waited.ended_at is None:
            continue
        ended = record.ended_at if record.ended_at is not None else end
        svg.append(
            f'<line class="join" x1="{x(waited.ended_at):.1f}" y1="{y(waited.thread) + 8}" '
            f'x2="{x(ended):.1f}" y2="{y(record.thread) + 21}" stroke="#555" '
            f'stroke-dasharray="3 2" marker-end="url(#arrow)"/>'
        )
    svg.append("</svg>")
    rows = "\n".join(
        f"<tr><td>{call.id}</td><td>{html.escape(call.name)}</td>"
        f"<td>{'' if call.parent is None else call.parent}</td>"
        f"<td>{'async' if call.is_async else 'sync'}</td>"
        f"<td>{html.escape(call.thread or '')}</td><td>{html.escape(call.loop or '')}</td>"
        f"<td>{_ms(call.forked_at)}</td><td>{_span(call)}</td>"
        f"<td>{html.escape(_outcome(call))}</td></tr>"
        for call in trace.calls
    )
    legend = " ".join(
        f'<span style="background:{colour}">&nbsp;&nbsp;&nbsp;</span> {name}'
        for name, colour in _COLOURS.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>forkwait trace</title>
<style>body{{font-family:sans-serif;margin:16px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}</style></head>
<body><h1>forkwait trace</h1>
<p>{len(trace.calls)} forks, {len(trace.waits)} waits, {_ms(trace.ended_at)} ms.
A lane per thread; a bar per call (colour: outcome); purple bars are waits; solid arrows
go from a fork to the start of its call, dashed ones from a call's end to a wait on it.
{legend} <span style="background:#b39ddb">&nbsp;&nbsp;&nbsp;</span> wait</p>
{"".join(svg)}
<h2>Calls</h2>
<table><tr><th>#</th><th>call</th><th>forked by</th><th>kind</th><th>thread</th>
<th>loop</th><th>forked at (ms)</th><th>ran</th><th>outcome</th></tr>
{rows}
</table></body></html>
"""
