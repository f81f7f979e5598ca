"""Import cost: ``import forkwait`` vs ``import anyio, uvloop``, each in a fresh process.

Each sample is the wall time of one ``python -c ...``; the median of ``python -c pass``
is subtracted, leaving the import (and its share of interpreter shutdown).
"""

from __future__ import annotations

import compileall
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter

import forkwait

from ._harness import Config, Contenders, Measure, Scenario
from ._work import loop_names


def _python(code: str) -> Measure:
    command = [sys.executable, "-c", code]

    def measure(runs: int) -> float:
        start = perf_counter()
        for _ in range(runs):
            subprocess.run(command, check=True)
        return (perf_counter() - start) / runs

    return measure


def _anchor_modules() -> str:
    return "anyio, uvloop" if "uvloop" in loop_names() else "anyio"


@contextmanager
def _imports(_: Config) -> Iterator[Contenders]:
    # Installing a wheel compiles its modules to bytecode, as anyio's and uvloop's were;
    # an editable install leaves forkwait's as source, which every fresh process would
    # compile again where PYTHONDONTWRITEBYTECODE is set. Compile them as an install
    # would, so that the row compares the imports a user gets.
    compileall.compile_dir(Path(forkwait.__file__).parent, quiet=1)
    modules = _anchor_modules()
    yield Contenders(
        anchors=[(f"import {modules}", _python(f"import {modules}"))],
        forkwait=_python("import forkwait"),
        baseline=_python("pass"),
    )


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "8 import time, fresh process",
            "ms",
            1.1,
            _imports,
            fixed_n=1,
            rounds=(21, 5),  # process start-up is the noisiest thing measured here
        )
    ]
