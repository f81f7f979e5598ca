"""Parity with torch.jit.fork and torch.jit.wait: the same programs, the same values.

Each program in torch_parity_program.py is written for torch.jit; its forkwait twin is
the same source with only the import lines changed. The TorchScript version is
compiled with torch.jit.script (where TorchScript can compile it), so its forks really
run asynchronously, as they do for the users who are leaving TorchScript.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import forkwait
from tests import torch_parity_program

pytestmark = pytest.mark.timeout(60)

TORCH_IMPORTS = (
    "from torch.futures import collect_all, wait_all\nfrom torch.jit import fork, wait\n"
)
FORKWAIT_IMPORTS = "from forkwait import collect_all, fork, wait, wait_all\n"


def deprecated_torch(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` for a torch.jit API: its deprecation warning is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return func(*args)


def script(func: Callable[..., Any]) -> Any:
    return deprecated_torch(torch.jit.script, func)


@pytest.fixture(scope="module")
def forkwait_program(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """torch_parity_program with its torch.jit imports swapped for forkwait's."""
    source = Path(torch_parity_program.__file__).read_text()
    assert source.count(TORCH_IMPORTS) == 1, "the program's import lines changed"
    path = tmp_path_factory.mktemp("parity") / "forkwait_parity_program.py"
    path.write_text(source.replace(TORCH_IMPORTS, FORKWAIT_IMPORTS))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.fork is forkwait.fork
    return module


@pytest.mark.parametrize("name", torch_parity_program.SCRIPTABLE)
def test_same_values_as_torchscript(forkwait_program: ModuleType, name: str) -> None:
    x = torch.tensor([1.0, -2.0, 3.5])
    expected = script(getattr(torch_parity_program, name))(x)
    actual = getattr(forkwait_program, name)(x)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("name", torch_parity_program.EAGER_ONLY)
def test_same_values_as_torch_futures(forkwait_program: ModuleType, name: str) -> None:
    """wait_all and collect_all, against torch.futures' on eager torch.jit.fork futures."""
    x = torch.tensor([1.0, -2.0, 3.5])
    expected = deprecated_torch(getattr(torch_parity_program, name), x)
    actual = getattr(forkwait_program, name)(x)
    torch.testing.assert_close(actual, expected)


def test_exceptions_keep_their_type_where_torchscript_makes_a_string(
    forkwait_program: ModuleType,
) -> None:
    x = torch.ones(1)
    with pytest.raises(RuntimeError) as scripted:
        script(torch_parity_program.failing)(x)
    assert "ValueError: bad input" in str(scripted.value)  # the type survives only as text
    with pytest.raises(ValueError, match="bad input"):
        forkwait_program.failing(x)


def test_the_twin_runs_its_forks_at_the_same_time(forkwait_program: ModuleType) -> None:
    """The point of the swap: the first two leaves of the fan-out meet at a barrier, which
    only two threads running them at once can pass (run one by one, they would time out)."""
    meeting = threading.Barrier(2, timeout=10)
    calls = itertools.count()
    leaf = forkwait_program.leaf

    def meeting_leaf(a: Tensor, b: int) -> Tensor:
        if next(calls) < 2:
            meeting.wait()
        return leaf(a, b)

    forkwait_program.leaf = meeting_leaf
    try:
        forkwait_program.fan_out_then_in(torch.ones(2))
    finally:
        forkwait_program.leaf = leaf


# -- the two examples of torch.jit.fork's docstring, with only the import changed -----


def foo(a: Tensor, b: int) -> Tensor:
    return a + b


def bar_torchscript(a: Tensor) -> Tensor:
    fut: torch.jit.Future[Tensor] = torch.jit.fork(foo, a, b=2)
    return torch.jit.wait(fut)


def bar_forkwait(a: Tensor) -> Tensor:
    fut: forkwait.Future[Tensor] = forkwait.fork(foo, a, b=2)
    return forkwait.wait(fut)


def test_docstring_example_fork_a_free_function() -> None:
    script_bar = script(bar_torchscript)
    x = torch.tensor(2)
    assert script_bar(x) == bar_forkwait(x) == torch.tensor(4)


class AddMod(nn.Module):
    def forward(self, a: Tensor, b: int) -> Tensor:
        return a + b


class ModTorchScript(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mod = AddMod()

    def forward(self, input: Tensor) -> Tensor:
        fut = torch.jit.fork(self.mod, input, b=2)
        return torch.jit.wait(fut)


class ModForkwait(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mod = AddMod()

    def forward(self, input: Tensor) -> Tensor:
        fut = forkwait.fork(self.mod, input, b=2)
        return forkwait.wait(fut)


def test_docstring_example_fork_a_module() -> None:
    x = torch.tensor(2)
    assert ModForkwait()(x) == script(ModTorchScript()).forward(x) == torch.tensor(4)
