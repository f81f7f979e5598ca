"""The forking thread's torch state, carried into the thread that runs a sync call.

torch keeps grad mode, inference mode, autocast, the current CUDA device and stream,
the modes (``torch.device(...)`` as a context, ``set_default_device``, a
``TorchDispatchMode`` such as ``FlopCounterMode``) and the saved-tensor hooks per
thread, and ``torch.jit.fork`` carries them into its tasks; so does ``fork``, or a
module forked under ``inference_mode()`` would build autograd graphs in its worker.
Also which calls are modules: those run at most as many at once as ``torch.jit.fork``
runs tasks (see ``_threads.module_pool_for``).

This module never imports torch: ``fork`` calls it only once the app has imported torch
(``"torch" in sys.modules``), so ``import forkwait`` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any

_modules = sys.modules


class TorchState:
    """What ``capture`` read: the torch state that a call runs under."""

    __slots__ = ("autocast", "autocast_cache", "cuda", "grad", "inference", "modes", "plain")

    def __init__(
        self,
        grad: bool,
        inference: bool,
        autocast: tuple[tuple[str, Any], ...],
        autocast_cache: bool,
        cuda: tuple[Any, Any] | None,
        modes: Modes | None = None,
    ) -> None:
        self.grad = grad
        self.inference = inference
        self.autocast = autocast  # (device type, dtype) of each device type with autocast on
        self.autocast_cache = autocast_cache
        self.cuda = cuda  # (device index, stream), once CUDA is initialized
        self.modes = modes  # None: no mode and no saved-tensor hooks
        #: Grad and inference mode alone: the usual state, inference_mode() around a fork.
        self.plain = not autocast and cuda is None and modes is None

    def __repr__(self) -> str:
        return (
            f"TorchState(grad={self.grad}, inference={self.inference}, "
            f"autocast={self.autocast}, cuda={self.cuda}, modes={self.modes})"
        )


class Modes:
    """A thread's torch function modes, dispatch modes (each stack from the bottom) and
    the saved-tensor hooks that pack tensors (the top pair: only it is used)."""

    __slots__ = ("dispatch", "function", "hidden_hooks", "hooks", "hooks_disabled")

    def __init__(
        self, function: tuple[Any, ...], dispatch: tuple[Any, ...], hooks: tuple[Any, Any] | None
    ) -> None:
        self.function = function
        self.dispatch = dispatch
        self.hooks = hooks
        #: Below the top pair, bottom first: only those popped to be put back (see
        #: _take_modes); the top pair alone packs tensors.
        self.hidden_hooks: tuple[tuple[Any, Any], ...] = ()
        #: The message of ``disable_saved_tensors_hooks`` (torch.func's transforms use
        #: it) if the thread had them disabled: only a thread's own, taken to be put back.
        self.hooks_disabled: str | None = None

    def __repr__(self) -> str:
        return f"Modes(function={self.function}, dispatch={self.dispatch}, hooks={self.hooks})"


#: A fresh thread's state: what a worker has between calls.
FRESH = TorchState(grad=True, inference=False, autocast=(), autocast_cache=True, cuda=None)


def _load_probes() -> bool:
    """Look up torch's checks once torch is usable; then run the grad check."""
    global _grad_enabled, _inference, _any_autocast, _mps_autocast_off, _maia_autocast_off
    global _cuda_initialized, _function_modes, _dispatch_modes, _saved_hooks, _hooks_enabled
    torch: Any = _modules["torch"]
    try:  # all looked up before any is used: a half-imported torch changes nothing
        probes = (
            torch.is_grad_enabled,
            torch.is_inference_mode_enabled,
            torch._C._is_any_autocast_enabled,
            _autocast_off_probe(torch, "mps"),
            _autocast_off_probe(torch, "maia"),
            torch.cuda.is_initialized,
            *_mode_probes(torch._C),
        )
    except AttributeError:  # torch is still being imported, in another thread
        return True
    _inference, _any_autocast, _mps_autocast_off, _maia_autocast_off = probes[1:5]
    _cuda_initialized, _function_modes, _dispatch_modes, _saved_hooks = probes[5:9]
    _hooks_enabled = probes[9]
    _grad_enabled = probes[0]
    never_awaitable.add(torch.Tensor)
    return _grad_enabled()


def _off() -> bool:
    return False


def _none() -> None:
    return None


def _mode_probes(
    torch_c: Any,
) -> tuple[
    Callable[[], int], Callable[[], int], Callable[[], tuple[Any, Any] | None], Callable[[], bool]
]:
    """How many torch function modes and dispatch modes this thread has, its top
    saved-tensor hooks, and whether those are enabled; on a torch without them (private
    API), none."""
    try:
        return (
            torch_c._len_torch_function_stack,
            torch_c._len_torch_dispatch_stack,
            functools.partial(torch_c._autograd._top_saved_tensors_default_hooks, False),
            torch_c._autograd._saved_tensors_hooks_is_enabled,
        )
    except AttributeError:
        return (_off, _off, _none, _on)


def _on() -> bool:
    return True


def _autocast_off_probe(torch: Any, device: str) -> Callable[[], bool]:
    """Whether autocast is off for ``device``, one of the device types that torch's
    ``_is_any_autocast_enabled()`` misses (torch 2.13: "mps", an Apple GPU's, whose
    autocast would otherwise stay behind, and "maia").

    Autocast on a device type is its key missing from the thread's excluded dispatch
    keys: asked so, through a C partial, the check costs a third of
    ``torch.is_autocast_enabled(device)``, which parses the name each time.
    """
    if device not in _autocast_device_types(torch):
        return _on
    parse = getattr(torch._C, "_parse_dispatch_key", None)
    excluded = getattr(torch._C, "_dispatch_tls_is_dispatch_key_excluded", None)
    key = None if parse is None else parse(f"Autocast{device.upper()}")
    if key is None or excluded is None:  # another torch: ask by name
        enabled: Callable[[str], bool] = torch.is_autocast_enabled
        return lambda: not enabled(device)
    return functools.partial(excluded, key)


def autocast_on() -> bool:
    """Whether this thread has autocast on for any device type."""
    return _any_autocast() or not _mps_autocast_off() or not _maia_autocast_off()


#: Result types that are never awaitable, so that a worker skips inspect.isawaitable
#: for them (1 us for a tensor): plain data, and ``torch.Tensor`` once torch is usable.
never_awaitable: set[type[object]] = {
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    list,
    tuple,
    dict,
}


# torch's checks of the parts of the state; until torch is usable, a fresh state.
_grad_enabled: Callable[[], bool] = _load_probes
_inference: Callable[[], bool] = _off
_any_autocast: Callable[[], bool] = _off
_mps_autocast_off: Callable[[], bool] = _on
_maia_autocast_off: Callable[[], bool] = _on
_cuda_initialized: Callable[[], bool] = _off
_function_modes: Callable[[], int] = _off
_dispatch_modes: Callable[[], int] = _off
_saved_hooks: Callable[[], tuple[Any, Any] | None] = _none
_hooks_enabled: Callable[[], bool] = _on


#: How many wrappers is_module_call looks through: one per scope or trace around the
#: fork, so no more than they nest; a proxy whose __wrapped__ is itself stops there.
_MAX_WRAPPERS = 64
#: ``torch.nn.Module``, once torch is usable.
_module_type: type | None = None


def is_module_call(func: object, depth: int = 0) -> bool:
    """Whether ``func`` is a ``torch.nn.Module`` or a method of one, also as wrapped by a
    scope or a trace (plain functions that set ``__wrapped__``). About 0.2 us."""
    module_type = _module_type or _load_module_type()
    if module_type is None:  # no torch, or it is still being imported in another thread
        return False
    if isinstance(func, module_type):
        return True
    kind = type(func)
    if kind is MethodType:
        return isinstance(func.__self__, module_type)  # type: ignore[attr-defined]
    if kind is not FunctionType or depth == _MAX_WRAPPERS:  # a partial, a builtin, ...
        return False
    wrapped = getattr(func, "__wrapped__", None)
    return wrapped is not None and is_module_call(wrapped, depth + 1)


def is_plain_module(func: object) -> bool:
    """Whether ``func`` is a ``torch.nn.Module`` with the ``__call__`` of all modules
    (sync), as ``fork`` asks before ``is_async_callable``: that would look for the
    coroutine marker through ``Module.__getattr__``, which raises, 20-30 us cold."""
    module_type = _module_type or _load_module_type()
    return (
        module_type is not None
        and isinstance(func, module_type)
        and type(func).__call__ is module_type.__call__
    )


def _load_module_type() -> type | None:
    """``torch.nn.Module``, remembered once torch is usable; ``None`` until then."""
    global _module_type
    _module_type = getattr(_modules.get("torch.nn"), "Module", None)
    return _module_type


def interop_threads() -> int:
    """How many threads ``torch.jit.fork`` runs tasks on: ``torch.get_num_interop_threads()``."""
    count: int = _modules["torch"].get_num_interop_threads()
    return max(count, 1)


def is_fresh() -> bool:
    """Whether this thread's torch state is a fresh thread's (the usual case): nine
    C-level checks, about 0.6 us, which a sync fork pays about three times (fork, the
    call's clean-up, a waiter running it) once torch is imported."""
    return (
        _grad_enabled()
        and not _inference()
        and not _any_autocast()
        and _mps_autocast_off()
        and _maia_autocast_off()
        and not _cuda_initialized()
        and not _function_modes()
        and not _dispatch_modes()
        and _saved_hooks() is None
    )


def _has_modes() -> bool:
    """Whether this thread has a torch function mode, a dispatch mode or saved-tensor
    hooks, or has those hooks disabled."""
    return (
        bool(_function_modes() or _dispatch_modes())
        or _saved_hooks() is not None
        or not _hooks_enabled()
    )


def _capture_modes(torch_c: Any) -> Modes | None:
    """This thread's modes and saved-tensor hooks; ``None`` if it has none."""
    functions, dispatches, hooks = _function_modes(), _dispatch_modes(), _saved_hooks()
    if not functions and not dispatches and hooks is None:
        return None
    return Modes(
        tuple(torch_c._get_function_stack_at(i) for i in range(functions)),
        tuple(torch_c._get_dispatch_stack_at(i) for i in range(dispatches)),
        hooks,
    )


#: The states without autocast and CUDA, by (grad, inference, autocast cache): one
#: object each, as a fork under ``inference_mode()`` captures the same state every time.
_plain_states: dict[tuple[bool, bool, bool], TorchState] = {}


def capture() -> TorchState:
    """This thread's torch state, in full."""
    torch: Any = _modules["torch"]
    any_autocast = autocast_on()
    modes = _capture_modes(torch._C)
    if not any_autocast and modes is None and not _cuda_initialized():
        key = (_grad_enabled(), _inference(), torch.is_autocast_cache_enabled())
        state = _plain_states.get(key)
        if state is None:
            state = _plain_states[key] = TorchState(key[0], key[1], (), key[2], None)
        return state
    autocast: tuple[tuple[str, Any], ...] = ()
    if any_autocast:
        autocast = tuple(
            (device, torch.get_autocast_dtype(device))
            for device in _autocast_device_types(torch)
            if torch.is_autocast_enabled(device)
        )
    cuda = None
    if torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        cuda = (device, torch.cuda.current_stream(device))
    return TorchState(
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        autocast,
        torch.is_autocast_cache_enabled(),
        cuda,
        modes,
    )


def bind(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, made to run under this thread's torch state wherever it runs."""
    return func if is_fresh() else InState(capture(), func)


def bind_inline(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a call taken from the queue) made to run here under its forker's state.

    A call that ``bind`` left alone was forked from a fresh state; run inline in a thread
    that is not fresh (a waiter inside ``no_grad()``), it needs that state put back.
    """
    if type(func) is InState or (is_fresh() and _hooks_enabled()):
        return func
    return InState(FRESH, func)  # also for a waiter with saved-tensor hooks disabled


def clean_up(func: Callable[..., Any]) -> None:
    """After ``func`` ran in this thread: if it left grad mode or autocast changed (a call
    of ``torch.set_grad_enabled(False)``), put back a fresh thread's, so that neither the
    next call in a worker nor the waiter that ran it inline inherits the change.

    An ``InState`` call restores what it found itself; any other call started from a
    fresh state (see ``bind`` and ``bind_inline``).
    """
    if type(func) is InState or is_fresh():
        return
    torch: Any = _modules["torch"]
    torch.set_grad_enabled(True)
    if autocast_on():
        _autocast_off(torch)
    _take_modes(torch._C)


def _take_modes(torch_c: Any) -> Modes | None:
    """Pop this thread's modes and saved-tensor hooks, to put back with ``_put_modes``."""
    if not _has_modes():
        return None
    function = [torch_c._pop_torch_function_stack() for _ in range(_function_modes())]
    dispatch = [torch_c._pop_torch_dispatch_stack(None) for _ in range(_dispatch_modes())]
    hooks: list[tuple[Any, Any]] = []
    while (top := _saved_hooks()) is not None:
        hooks.append(top)
        torch_c._autograd._pop_saved_tensors_default_hooks()
    modes = Modes(tuple(reversed(function)), tuple(reversed(dispatch)), None)
    modes.hooks = hooks[0] if hooks else None
    modes.hidden_hooks = tuple(reversed(hooks[1:]))
    if not _hooks_enabled():  # enabled while it is taken: the forker's may be pushed
        modes.hooks_disabled = torch_c._autograd._saved_tensors_hooks_get_disabled_error_message()
        torch_c._autograd._saved_tensors_hooks_enable()
    return modes


def _put_modes(torch_c: Any, modes: Modes | None) -> None:
    """Push ``modes`` on this thread's stacks, bottom first."""
    if modes is None:
        return
    for mode in modes.function:
        torch_c._push_on_torch_function_stack(mode)
    for mode in modes.dispatch:
        torch_c._push_on_torch_dispatch_stack(mode)
    for pack, unpack in (*modes.hidden_hooks, *((modes.hooks,) if modes.hooks else ())):
        torch_c._autograd._push_saved_tensors_default_hooks(pack, unpack)
    if modes.hooks_disabled is not None:
        torch_c._autograd._saved_tensors_hooks_disable(modes.hooks_disabled)


def _autocast_off(torch: Any) -> None:
    for device in _autocast_device_types(torch):
        if torch.is_autocast_enabled(device):
            torch.set_autocast_enabled(device, False)


class InState:
    """A callable that runs ``func`` under ``state``, then restores the thread's own."""

    __slots__ = ("func", "in_fresh_worker", "state")

    def __init__(self, state: TorchState, func: Callable[..., Any]) -> None:
        self.state = state
        self.func = func
        #: Set by the worker that takes the call: a worker is fresh between calls (see
        #: clean_up), but for guards a call kept, so it has little to look at first.
        self.in_fresh_worker = False

    def __repr__(self) -> str:
        return f"InState({self.state!r}, {self.func!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        torch: Any = _modules["torch"]
        state = self.state
        # Not fresh after all: a call (or a done callback) kept an inference_mode() or
        # disable_saved_tensors_hooks() guard alive, which clean_up cannot undo.
        if self.in_fresh_worker and state.plain and not _inference() and _hooks_enabled():
            return self._call_in_fresh_worker(torch, args, kwargs)
        if state.modes is None and not _has_modes():
            try:
                return self._call(torch, args, kwargs)
            finally:
                if _has_modes():  # the call left one pushed: not to the next call
                    _take_modes(torch._C)
        # The forker's modes, and none of this thread's (a waiter's, running it inline).
        own = _take_modes(torch._C)
        _put_modes(torch._C, self.state.modes)
        try:
            return self._call(torch, args, kwargs)
        finally:
            _take_modes(torch._C)  # the forker's, and any the call left pushed
            _put_modes(torch._C, own)

    def _call_in_fresh_worker(
        self, torch: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The usual case (a model forked under ``inference_mode()``) in a worker: grad
        and inference mode set and put back, without first asking torch for a state
        known to be fresh; the first call after the models ran is cold, so each of
        torch's checks costs 1-3 us there."""
        torch_c = torch._C
        try:
            return self._call_in_modes(torch_c, self.state, args, kwargs, fresh=True)
        finally:
            # What the call left turned on (it may set autocast or push a mode without
            # a with block) is not passed on to the worker's next call.
            if autocast_on():
                _autocast_off(torch)
            if _has_modes():
                _take_modes(torch_c)

    def _call(self, torch: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = self.state
        if not autocast_on():
            # The thread had autocast off: so it has after the call, even if the call
            # turned it on and left it so (the stack below undoes only what it entered).
            try:
                if not state.autocast and state.cuda is None:
                    return self._call_in_modes(torch._C, state, args, kwargs)
                return self._call_under(torch, state, args, kwargs)
            finally:
                if autocast_on():
                    _autocast_off(torch)
        # The thread had autocast on somewhere (a waiter running the call inline): the
        # device types the call turned on or off outside the stack's own are put back.
        devices = _autocast_device_types(torch)
        before = [torch.is_autocast_enabled(device) for device in devices]
        try:
            return self._call_under(torch, state, args, kwargs)
        finally:
            for device, was_on in zip(devices, before, strict=True):
                if torch.is_autocast_enabled(device) != was_on:
                    torch.set_autocast_enabled(device, was_on)

    def _call_in_modes(
        self,
        torch_c: Any,
        state: TorchState,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fresh: bool = False,
    ) -> Any:
        """``_call_under`` for a state of grad and inference mode alone (the usual one,
        ``inference_mode()`` around a model's fork): torch's own guards, without the
        Python layers of its context managers and of an ExitStack (10 us a call).
        ``fresh``: the thread's state is known to be a fresh thread's, so not asked."""
        inference = None
        if state.inference if fresh else torch_c.is_inference_mode_enabled() != state.inference:
            inference = torch_c._InferenceMode(state.inference)
            inference.__enter__()
        try:
            # Inside inference_mode grad is off unless the forker turned it back on.
            grad = not state.inference if fresh else torch_c.is_grad_enabled()
            torch_c._set_grad_enabled(state.grad)
            try:
                return self.func(*args, **kwargs)
            finally:
                torch_c._set_grad_enabled(grad)
        finally:
            if inference is not None:
                inference.__exit__(None, None, None)

    def _call_under(
        self, torch: Any, state: TorchState, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        with contextlib.ExitStack() as stack:
            if torch.is_inference_mode_enabled() != state.inference:
                stack.enter_context(torch.inference_mode(state.inference))
            # Inside inference_mode grad is off unless the forker turned it back on.
            stack.enter_context(torch.set_grad_enabled(state.grad))
            _enter_autocast(torch, state, stack)
            if state.cuda is not None:
                device, stream = state.cuda
                stack.enter_context(torch.cuda.device(device))
                stack.enter_context(torch.cuda.stream(stream))
            return self.func(*args, **kwargs)


def _enter_autocast(torch: Any, state: TorchState, stack: contextlib.ExitStack) -> None:
    wanted = dict(state.autocast)
    if autocast_on():
        for device in _autocast_device_types(torch):
            if device not in wanted and torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
    for device, dtype in state.autocast:
        stack.enter_context(torch.autocast(device, dtype=dtype, cache_enabled=state.autocast_cache))


def _autocast_device_types(torch: Any) -> list[str]:
    supported: Callable[[], list[str]] | None = getattr(
        torch._C, "_autocast_supported_devices", None
    )
    return supported() if supported is not None else ["cpu", "cuda"]
