"""Triton launches without Triton's per-launch Python binding, once a kernel has been compiled.

``kernel[grid](*args)`` re-derives the specialization of every argument, builds and hashes a cache
key, reads Triton's knobs, builds launch metadata for its (empty) launch-hook chains and calls
them, on every call. The anchor path was host-bound at 32k: under the profiler an anchored layer
call took 0.5-1.7 ms of host time against 0.2-0.5 ms for stock FlashAttention
(bench/results/lease25_h100/engine_profile/). Since the planner's single upload the 32k defaults'
step is GPU-bound in process (lease26_h100/host_path/trace32k/). :func:`launch` keeps the compiled kernel the first
call returns, keyed by a specialization key of its own that distinguishes at least everything
Triton specializes on (tensor dtype and 16-byte alignment; integers equal to 1, divisible by 16,
their sign and their i32 / i64 / u64 range; constexpr values; the launch options), and calls the
compiled kernel's launcher directly when the key matches. A new key (or a kernel still compiling)
takes Triton's own path, which also compiles.

Measured on the H100 (bench/host_overhead.py, SmolLM2 shape, 2048-token chunk at 8192, one
anchored layer call's host sequence): 425 vs 496 us with Triton's launches (lease25_h100/host_path_fix/),
415 vs 564 us (lease26_h100/host_path/), and with the variants in alternating rounds 409 vs 525 us and
246 vs 274 us in two leases (lease26_h100/served32k_seed0/, served32k_run1/). The whole GPU suite passes
with it on (51 passed, twice). Served, it did not shorten a 32000-token prefill: median TTFT 133.0 vs
130.8 ms, 150.3 vs 142.6 ms and 178.8 vs 162.3 ms against the defaults' server beside it, one
comparison after the other (lease26_h100/served32k_*). So it stays off by default;
``ANCHOR_KERNELS_FAST_LAUNCH=1`` turns it on. What an anchored call spends is mostly the launches
themselves (30-80 us each: the compiled launcher's argument handling and the driver call) and the
backend's Python.

Never used on the CPU interpreter or while a Triton launch hook is set (proton and friends want
every launch).
"""
from __future__ import annotations

import os

import torch

try:  # what Triton's own launch path uses for the current stream
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # pragma: no cover - older torch
    def _raw_stream(device: int) -> int:
        return torch.cuda.current_stream(device).cuda_stream

FAST_LAUNCH = os.environ.get("ANCHOR_KERNELS_FAST_LAUNCH") == "1"

_I32 = (-2 ** 31, 2 ** 31)


def spec_key(value):
    """What Triton could specialize a kernel argument on, as a hashable key."""
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.data_ptr() % 16 == 0)
    if isinstance(value, bool):  # before int: bool is an int
        return ("b", value)
    if isinstance(value, int):
        return ("i", value == 1, value % 16 == 0, _I32[0] <= value < _I32[1], value >= 0, value >= 2 ** 63)
    if isinstance(value, float):
        return ("f",)
    if value is None:
        return ("n",)
    return (type(value).__name__, value)  # constexpr-like (str, dtype, ...): by value


class LaunchCache:
    """Compiled kernels by (kernel, launch options, argument specialization).

    ``hits`` and ``misses`` count the two paths (tests and benchmarks read them). ``enabled``
    False sends every launch through Triton."""

    def __init__(self, enabled: bool = FAST_LAUNCH):
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._compiled: dict = {}
        self._layout: dict = {}

    def _param_layout(self, kernel, names: tuple):
        """``(param names, defaults, launch options)`` for a kernel called with keyword ``names``."""
        key = (id(kernel), names)
        layout = self._layout.get(key)
        if layout is None:
            params = list(kernel.params)
            param_names = [p.name for p in params]
            defaults = {p.name: p.default for p in params if p.has_default}
            options = tuple(n for n in names if n not in param_names)
            # constexprs are compiled in: keyed by value (a parameter that does not say is one)
            by_value = tuple(getattr(p, "is_constexpr", True) for p in params)
            layout = self._layout[key] = (param_names, defaults, options, by_value)
        return layout

    def launch(self, kernel, grid, *args, **kwargs):
        """``kernel[grid](*args, **kwargs)``, through the compiled kernel when it is known."""
        if not self.enabled or not self.eligible(kernel, args):
            return kernel[grid](*args, **kwargs)
        param_names, defaults, options, by_value = self._param_layout(kernel, tuple(kwargs))
        full = list(args)
        for name in param_names[len(args):]:
            if name in kwargs:
                full.append(kwargs[name])
            elif name in defaults:
                full.append(defaults[name])
            else:  # a missing argument: let Triton say so
                return kernel[grid](*args, **kwargs)
        device = self.device()
        key = (id(kernel), device, tuple((o, kwargs[o]) for o in options),
               tuple(("v", v) if const else spec_key(v) for v, const in zip(full, by_value)))
        compiled = self._compiled.get(key)
        if compiled is None:
            self.misses += 1
            compiled = kernel[grid](*args, **kwargs)
            if compiled is not None and not hasattr(compiled, "result") and hasattr(compiled, "run"):
                self._compiled[key] = compiled  # a finished compile only (not a pending future)
            return compiled
        self.hits += 1
        g = tuple(grid) + (1, 1)
        # launch metadata and enter/exit hooks are None: _fast_ok saw no hook set
        compiled.run(g[0], g[1], g[2], self.stream(device), compiled.function, compiled.packed_metadata,
                     None, None, None, *full)
        return compiled

    # The three hooks below are what tests replace to run the cache without a GPU.
    def eligible(self, kernel, args) -> bool:
        return _fast_ok(kernel, args)

    def device(self) -> int:
        """The launch's device: the current one, as Triton's own path takes it."""
        return torch.cuda.current_device()

    def stream(self, device: int) -> int:
        return _raw_stream(device)


def _hook_set(hook) -> bool:
    """Triton 3.6 keeps launch hooks in (normally empty) ``HookChain`` objects, older ones in a
    plain attribute that is None when unset."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _launch_hooks_set() -> bool:
    try:
        from triton import knobs
        return _hook_set(knobs.runtime.launch_enter_hook) or _hook_set(knobs.runtime.launch_exit_hook)
    except Exception:  # an older Triton without knobs: stay on Triton's path
        return True


def _fast_ok(kernel, args) -> bool:
    """The direct path needs a compiled (not interpreted) kernel on a CUDA tensor and no hooks."""
    if not hasattr(kernel, "params") or not args:
        return False
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None or not first.is_cuda:
        return False
    return not _launch_hooks_set()


LAUNCHES = LaunchCache()


def launch(kernel, grid, *args, **kwargs):
    """Launch through the process-wide :data:`LAUNCHES` cache."""
    return LAUNCHES.launch(kernel, grid, *args, **kwargs)
