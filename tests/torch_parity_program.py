"""Programs written for torch.jit.fork; test_torch_parity runs them again with only the
import lines changed to forkwait's, and compares the results."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.futures import collect_all, wait_all
from torch.jit import fork, wait


def leaf(a: Tensor, b: int) -> Tensor:
    return a * 2 + b


def middle(a: Tensor) -> Tensor:
    fut = fork(leaf, a, b=3)
    return wait(fut) + 1


def nested(a: Tensor) -> Tensor:
    futs = [fork(middle, a + i) for i in range(3)]
    return torch.stack([wait(f) for f in futs])


def keywords(a: Tensor) -> Tensor:
    return wait(fork(leaf, b=5, a=a))


def tuple_of_futures(a: Tensor) -> tuple[Tensor, Tensor]:
    pair = (fork(leaf, a, 1), fork(leaf, a, 2))
    return wait(pair[0]), wait(pair[1])


def loop_of_forks(a: Tensor) -> Tensor:
    total = torch.zeros_like(a)
    for i in range(8):
        total = total + wait(fork(leaf, a, i))
    return total


def fan_out_then_in(a: Tensor) -> Tensor:
    futs = [fork(leaf, a, i) for i in range(8)]
    total = torch.zeros_like(a)
    for fut in futs:
        total = total + wait(fut)
    return total


def boom(a: Tensor) -> Tensor:
    raise ValueError("bad input")


def failing(a: Tensor) -> Tensor:
    return wait(fork(boom, a))


# Eager only: TorchScript cannot compile torch.futures' untyped Future annotations.


def collected(a: Tensor) -> list[Tensor]:
    return wait_all([fork(leaf, a, i) for i in range(4)])


def collected_futures(a: Tensor) -> list[Tensor]:
    done = collect_all([fork(leaf, a, i) for i in range(4)]).wait()
    return [fut.value() for fut in done]


SCRIPTABLE = ["nested", "keywords", "tuple_of_futures", "loop_of_forks", "fan_out_then_in"]
EAGER_ONLY = ["collected", "collected_futures"]
