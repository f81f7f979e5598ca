"""An ensemble of 4 MLPs under ``inference_mode``, forked and waited on; ms per ensemble.

Each MLP is 3 x (Linear 1024->1024, ReLU) on a batch of 64. Rows 9 and 10 run with
``torch.set_num_threads(1)``, so parallelism comes from running models at once; the
anchor is TorchScript's ``torch.jit.fork`` in a scripted module (the real parallel
fork that users leave), with sequential Python and a 2-thread ThreadPoolExecutor
shown next to it. Target: forkwait at least as fast as TorchScript, from sync code
(row 9) and from async code (row 10). Row 11 keeps torch's default intra-op threads,
where forking must not be slower than sequential Python (>= 0.97x its speed).

torch is imported when a row is built, not with the bench, and these rows run last:
the rows before them measure forkwait in a process that never imported torch.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from forkwait import fork, wait_all

from ._harness import Config, Contenders, Measure, Scenario
from ._work import event_loop

MODELS = 4
BATCH = 64
WIDTH = 1024
LAYERS = 3


def _timed(run: Callable[[], object]) -> Measure:
    def measure(n: int) -> float:
        start = perf_counter()
        for _ in range(n):
            run()
        return (perf_counter() - start) / n

    return measure


@contextmanager
def _ensemble(intra_op_threads: int | None) -> Iterator[dict[str, Any]]:
    """The models, the input and the contenders' runners, under ``inference_mode``."""
    import torch
    from torch import Tensor, nn

    class Ensemble(nn.Module):
        """TorchScript's way: fork each model in a scripted module, then wait."""

        def __init__(self, models: list[nn.Module]) -> None:
            super().__init__()
            self.models = nn.ModuleList(models)

        def forward(self, x: Tensor) -> list[Tensor]:
            futures: list[torch.jit.Future[Tensor]] = []
            for model in self.models:
                futures.append(torch.jit.fork(model, x))
            return [torch.jit.wait(future) for future in futures]

    threads_before = torch.get_num_threads()
    if intra_op_threads is not None:
        torch.set_num_threads(intra_op_threads)
    torch.manual_seed(0)
    models = [
        nn.Sequential(
            *[layer for _ in range(LAYERS) for layer in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]
        ).eval()
        for _ in range(MODELS)
    ]
    x = torch.randn(BATCH, WIDTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        scripted = torch.jit.script(Ensemble(models))
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-torch")
    try:
        with torch.inference_mode():
            yield {"torch": torch, "models": models, "x": x, "scripted": scripted, "pool": pool}
    finally:
        pool.shutdown()
        torch.set_num_threads(threads_before)


def _inferring(model: Callable[[Any], object], x: object) -> object:
    import torch

    with torch.inference_mode():
        return model(x)


def _runners(e: dict[str, Any]) -> dict[str, Callable[[], object]]:
    models, x, scripted, pool = e["models"], e["x"], e["scripted"], e["pool"]
    return {
        "sequential": lambda: [model(x) for model in models],
        "TorchScript fork": lambda: scripted(x),
        # Pool threads start outside inference_mode (that is what forkwait fixes), so
        # each call enters it, as an app would have to, to compare like with like.
        "ThreadPoolExecutor(2)": lambda: [
            f.result() for f in [pool.submit(_inferring, m, x) for m in models]
        ],
        "forkwait": lambda: wait_all([fork(model, x) for model in models]),
    }


@contextmanager
def _sync_build(config: Config) -> Iterator[Contenders]:
    with _ensemble(intra_op_threads=1) as e:
        run = _runners(e)
        yield Contenders(
            anchors=[("TorchScript fork", _timed(run["TorchScript fork"]))],
            forkwait=_timed(run["forkwait"]),
            floor=("sequential", _timed(run["sequential"])),
        )


@contextmanager
def _async_build(config: Config) -> Iterator[Contenders]:
    with _ensemble(intra_op_threads=1) as e, event_loop("asyncio") as loop:
        models, x, torch = e["models"], e["x"], e["torch"]

        async def forked(n: int) -> float:
            # The handler's own inference_mode: the loop thread is not the bench's.
            with torch.inference_mode():
                start = perf_counter()
                for _ in range(n):
                    futures = [fork(model, x) for model in models]
                    for future in futures:
                        await future
                return (perf_counter() - start) / n

        async def to_thread(n: int) -> float:
            with torch.inference_mode():
                start = perf_counter()
                for _ in range(n):
                    await asyncio.gather(
                        *[asyncio.to_thread(_inferring, model, x) for model in models]
                    )
                return (perf_counter() - start) / n

        run = _runners(e)
        yield Contenders(
            anchors=[("TorchScript fork", _timed(run["TorchScript fork"]))],
            forkwait=lambda n: loop.run_until_complete(forked(n)),
            floor=("asyncio.to_thread + gather", lambda n: loop.run_until_complete(to_thread(n))),
        )


@contextmanager
def _default_threads_build(config: Config) -> Iterator[Contenders]:
    with _ensemble(intra_op_threads=None) as e:
        run = _runners(e)
        yield Contenders(
            anchors=[("sequential", _timed(run["sequential"]))],
            forkwait=_timed(run["forkwait"]),
            floor=("ThreadPoolExecutor(2)", _timed(run["ThreadPoolExecutor(2)"])),
        )


def scenarios() -> list[Scenario]:
    return [
        Scenario("9. torch ensemble, 1 intra-op thread, sync wait_all", "ms", 1.0, _sync_build),
        Scenario("10. torch ensemble, 1 intra-op thread, async await", "ms", 1.0, _async_build),
        # At most 1/0.97 of sequential's time: no slowdown beyond noise.
        Scenario(
            "11. torch ensemble, default intra-op threads", "ms", 1 / 0.97, _default_threads_build
        ),
    ]
