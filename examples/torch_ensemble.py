"""An ensemble of models forked and waited on, from sync code and from an async handler.

Four MLPs score the same batch under ``inference_mode``. torch releases the GIL inside
its kernels, so forked models run at once, one per core, where calling them one after
another uses one core. Run it with ``python examples/torch_ensemble.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from forkwait import fork, wait_all

MODELS = 4
REPEATS = 5


def make_models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()).eval()
        for _ in range(MODELS)
    ]


def score_sequentially(models: list[nn.Module], batch: Tensor) -> list[Tensor]:
    return [model(batch) for model in models]


def score_forked(models: list[nn.Module], batch: Tensor) -> list[Tensor]:
    """The same, with each model forked: the two-line change from a Python loop."""
    return wait_all([fork(model, batch) for model in models])


async def handle_request(models: list[nn.Module], batch: Tensor) -> list[Tensor]:
    """An async handler: the models run in worker threads while the loop stays free."""
    with torch.inference_mode():  # applies in the workers too, as for torch.jit.fork
        futures = [fork(model, batch) for model in models]
        return [await future for future in futures]


def best_time(score: Callable[[], list[Tensor]]) -> tuple[list[Tensor], float]:
    """The outputs, and the best of REPEATS timings of ``score()``."""
    outputs, best = score(), float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        outputs = score()
        best = min(best, time.perf_counter() - start)
    return outputs, best


def main() -> None:
    # One intra-op thread per model call: the parallelism comes from running models
    # at once (with torch's default, each call would already use every core).
    torch.set_num_threads(1)
    models = make_models()
    batch = torch.randn(64, 1024)
    with torch.inference_mode():
        expected, sequential = best_time(lambda: score_sequentially(models, batch))
        from_sync, forked_sync = best_time(lambda: score_forked(models, batch))
    loop = asyncio.new_event_loop()
    try:
        from_async, forked_async = best_time(
            lambda: loop.run_until_complete(handle_request(models, batch))
        )
    finally:
        loop.close()

    print(f"{MODELS} models, batch of {batch.shape[0]}, best of {REPEATS}:")
    print(f"  sequential:             {sequential * 1e3:6.1f} ms")
    for label, seconds in [("sync code", forked_sync), ("async handler", forked_async)]:
        print(
            f"  forked from {label + ':':14}{seconds * 1e3:6.1f} ms ({sequential / seconds:.2f}x)"
        )
    same = all(
        torch.equal(a, b) and torch.equal(a, c)
        for a, b, c in zip(expected, from_sync, from_async, strict=True)
    )
    print(f"same outputs: {same}; inference tensors: {all(map(torch.is_inference, from_async))}")


if __name__ == "__main__":
    main()
