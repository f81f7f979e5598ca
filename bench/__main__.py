"""``python -m bench``: run the scenarios and print the markdown table."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from . import (
    async_caller,
    fib,
    imports,
    offload,
    scopes,
    sync_caller,
    torch_ensemble,
    tracing,
)
from ._harness import Config, Row, Scenario, format_table, progress, run_scenario


def all_scenarios() -> list[Scenario]:
    return [
        *async_caller.scenarios(),
        *sync_caller.scenarios(),
        *fib.scenarios(),
        *imports.scenarios(),
        *scopes.scenarios(),
        *tracing.scenarios(),
        *offload.scenarios(),
        *torch_ensemble.scenarios(),  # last: it imports torch
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="forkwait next to its anchors, interleaved in one process.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and shorter samples (a smoke run)"
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="run only the scenarios whose name contains SUBSTRING (case-insensitive)",
    )
    args = parser.parse_args(argv)

    scenarios = all_scenarios()
    if args.only:
        scenarios = [s for s in scenarios if args.only.lower() in s.name.lower()]
        if not scenarios:
            names = "\n  ".join(s.name for s in all_scenarios())
            parser.error(f"no scenario name contains {args.only!r}; the names are:\n  {names}")
    if args.quick:
        config = Config(quick=True, rounds=3, sample_seconds=0.015)
    else:
        config = Config(quick=False, rounds=9, sample_seconds=0.12)

    began = time.perf_counter()
    rows: list[Row] = []
    for index, scenario in enumerate(scenarios, 1):
        start = time.perf_counter()
        rows.extend(run_scenario(scenario, config))
        progress(f"[{index}/{len(scenarios)}] {scenario.name}: {time.perf_counter() - start:.1f} s")

    print(
        f"forkwait bench: Python {platform.python_version()} ({platform.machine()}), "
        f"{os.cpu_count()} CPUs{', quick run' if config.quick else ''}; medians of "
        f"{config.rounds} interleaved rounds (memory and import rows set their own); "
        f"ratio = forkwait / best anchor\n"
    )
    print(format_table(rows))
    missed = [row for row in rows if row.missed]
    print(
        f"\n{len(missed)} of {sum(row.target is not None for row in rows)} targets missed"
        f"{': ' + '; '.join(row.scenario for row in missed) if missed else ''}"
        f" ({time.perf_counter() - began:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
