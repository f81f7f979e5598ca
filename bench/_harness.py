"""The harness: calibrate, warm up, time contenders interleaved round by round, tabulate."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

Unit = Literal["us", "ms", "B"]

Measure = Callable[[int], float]
"""Runs ``n`` operations and returns the cost of one: seconds, or bytes for memory rows."""


@dataclass(frozen=True)
class Config:
    quick: bool
    rounds: int
    # Wall time one sample of one contender should take; calibration picks ``n`` for it.
    sample_seconds: float


@dataclass(frozen=True)
class Contenders:
    """What one scenario times: its anchors, forkwait, and optional extras."""

    anchors: Sequence[tuple[str, Measure]]
    forkwait: Measure
    # Timed in the same rounds and shown as an extra row with no target.
    floor: tuple[str, Measure] | None = None
    # Timed in the same rounds and subtracted from every median (process start-up).
    baseline: Measure | None = None


Build = Callable[[Config], AbstractContextManager[Contenders]]
"""Sets up a scenario's resources (loops, threads) and yields its contenders."""


@dataclass(frozen=True)
class Scenario:
    name: str
    unit: Unit
    target: float
    build: Build
    # Set for rows whose sample has a fixed size (memory, subprocesses): no calibration.
    fixed_n: int | None = None
    # (full, quick) round counts, for rows that want more samples than the default.
    rounds: tuple[int, int] | None = None


@dataclass(frozen=True)
class Row:
    scenario: str
    anchor: str
    anchor_value: float
    forkwait_value: float
    unit: Unit
    target: float | None  # None: informational

    @property
    def ratio(self) -> float:
        return self.forkwait_value / self.anchor_value if self.anchor_value > 0 else float("inf")

    @property
    def missed(self) -> bool:
        return self.target is not None and self.ratio > self.target


def _sample(measure: Measure, n: int) -> float:
    # Every sample starts from the same heap state; the collector stays on during it,
    # because allocating more objects per op (and so collecting more) is a real cost.
    gc.collect()
    return measure(n)


def _calibrate(measure: Measure, seconds: float) -> int:
    n = 1
    while True:
        gc.collect()  # as _sample does, but outside the timing: with torch loaded it
        start = time.perf_counter()  # takes longer than a sample should
        measure(n)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or n >= 1 << 22:
            return max(1, round(n * seconds / max(elapsed, 1e-9)))
        n *= 4


def run_scenario(scenario: Scenario, config: Config) -> list[Row]:
    """Time one scenario; one row, plus one for its floor if it has one."""
    with scenario.build(config) as contenders:
        timed: list[tuple[str, Measure]] = [*contenders.anchors]
        if contenders.floor is not None:
            timed.append(contenders.floor)
        if contenders.baseline is not None:
            timed.append(("baseline", contenders.baseline))
        timed.append(("forkwait", contenders.forkwait))

        if scenario.fixed_n is not None:
            n = scenario.fixed_n
        else:
            # Calibrate warm: a first call that starts threads (or a loop, or torch's
            # thread teams) can take longer than a whole sample should, and calibration
            # would then time one cold operation per sample.
            _sample(contenders.forkwait, 1)
            n = _calibrate(contenders.forkwait, config.sample_seconds)
        for _, measure in timed:  # warm-up: threads started, code paths and caches hot
            _sample(measure, n)

        rounds = config.rounds
        if scenario.rounds is not None:
            rounds = scenario.rounds[1] if config.quick else scenario.rounds[0]
        samples: dict[str, list[float]] = {label: [] for label, _ in timed}
        for index in range(rounds):
            # Alternate the order so that neither side always runs on a just-warmed cache.
            order = timed if index % 2 == 0 else timed[::-1]
            for label, measure in order:
                samples[label].append(_sample(measure, n))

    medians = {label: statistics.median(values) for label, values in samples.items()}
    base = medians.pop("baseline", 0.0)
    medians = {label: value - base for label, value in medians.items()}
    forkwait = medians["forkwait"]

    best_label, best = min(
        ((label, medians[label]) for label, _ in contenders.anchors), key=lambda item: item[1]
    )
    others = [
        f"{label} {_format(medians[label], scenario.unit)}"
        for label, _ in contenders.anchors
        if label != best_label
    ]
    anchor = best_label if not others else f"{best_label} (best; {', '.join(others)})"
    rows = [Row(scenario.name, anchor, best, forkwait, scenario.unit, scenario.target)]
    if contenders.floor is not None:
        label = contenders.floor[0]
        rows.append(
            Row(f"{scenario.name}: floor", label, medians[label], forkwait, scenario.unit, None)
        )
    return rows


def _format(value: float, unit: Unit) -> str:
    if unit == "us":
        return f"{value * 1e6:.2f}"
    if unit == "ms":
        return f"{value * 1e3:.2f} ms"
    return f"{value:.0f} B"


def format_table(rows: Sequence[Row]) -> str:
    """The markdown table; values are us/op unless a cell names its unit."""
    lines = [
        "| scenario | anchor | anchor us/op | forkwait us/op | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.target is None:
            target = "info"
        else:
            shown = (
                f"{row.target:.1f}" if round(row.target, 1) == row.target else f"{row.target:.3g}"
            )
            target = f"<= {shown} " + ("**MISS**" if row.missed else "ok")
        lines.append(
            f"| {row.scenario} | {row.anchor} | {_format(row.anchor_value, row.unit)} "
            f"| {_format(row.forkwait_value, row.unit)} | {row.ratio:.2f} | {target} |"
        )
    return "\n".join(lines)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
