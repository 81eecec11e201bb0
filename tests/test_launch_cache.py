"""kernels.launch: the direct launch of an already compiled Triton kernel. CPU: a fake kernel
stands in for Triton's JITFunction (the real one needs a GPU; tests/gpu checks the real path
against Triton's own launches bit for bit)."""
from __future__ import annotations

import pytest
import torch

from vllm_anchor.kernels.launch import LaunchCache, spec_key


class FakeParam:
    def __init__(self, name, default=None, has_default=False):
        self.name, self.default, self.has_default = name, default, has_default
        self.is_constexpr = name.isupper()  # the kernels' convention


class FakeCompiled:
    def __init__(self):
        self.calls = []
        self.function, self.packed_metadata = "fn", "meta"

    @property
    def run(self):
        return lambda *a: self.calls.append(a)


class FakeKernel:
    """``kernel[grid](*args, **kwargs)`` records the call and returns a new compiled kernel."""

    def __init__(self, names, defaults=None):
        defaults = defaults or {}
        self.params = [FakeParam(n, defaults.get(n), n in defaults) for n in names]
        self.slow = []

    def __getitem__(self, grid):
        def go(*args, **kwargs):
            c = FakeCompiled()
            self.slow.append((grid, args, kwargs, c))
            return c
        return go


class CpuCache(LaunchCache):
    def __init__(self, enabled: bool = True):  # the direct path is off by default: these test it
        super().__init__(enabled)

    def eligible(self, kernel, args):
        return True

    def device(self):
        return 0

    def stream(self, device):
        return 1234


def _kernel():
    return FakeKernel(["x", "n", "scale", "BLOCK", "FLAG"], defaults={"FLAG": False})


def test_second_launch_with_the_same_specialization_skips_triton_with_args_in_param_order():
    cache, k = CpuCache(), _kernel()
    x = torch.zeros(64)
    first = cache.launch(k, (3, 2), x, 48, 0.5, BLOCK=64, num_warps=4)
    assert len(k.slow) == 1 and (cache.misses, cache.hits) == (1, 0)
    y = torch.ones(64)  # another buffer, same dtype and alignment; other int of the same class
    again = cache.launch(k, (5, 2), y, 96, 0.25, BLOCK=64, num_warps=4)
    assert again is first and len(k.slow) == 1 and cache.hits == 1
    (call,) = first.calls
    assert call[:9] == (5, 2, 1, 1234, "fn", "meta", None, None, None)
    assert call[9] is y and call[10:] == (96, 0.25, 64, False)  # BLOCK from kwargs, FLAG's default


@pytest.mark.parametrize("change", ["alignment", "dtype", "int_one", "int_range", "constexpr", "option", "flag"])
def test_anything_triton_specializes_on_takes_triton_s_path(change):
    cache, k = CpuCache(), _kernel()
    base = torch.zeros(64)
    args, kw = [base, 48, 0.5], dict(BLOCK=64, num_warps=4)
    cache.launch(k, (1,), *args, **kw)
    if change == "alignment":
        args[0] = base[1:]  # 4 bytes past a 16-byte boundary
    elif change == "dtype":
        args[0] = base.half()
    elif change == "int_one":
        args[1] = 1
    elif change == "int_range":
        args[1] = 2 ** 32  # divisible by 16 like 48, but a 64-bit integer
    elif change == "constexpr":
        kw["BLOCK"] = 128
    elif change == "option":
        kw["num_warps"] = 8
    elif change == "flag":
        kw["FLAG"] = True
    cache.launch(k, (1,), *args, **kw)
    assert len(k.slow) == 2 and cache.hits == 0


def test_integers_of_one_class_share_a_compiled_kernel():
    cache, k = CpuCache(), _kernel()
    x = torch.zeros(64)
    for n in (17, 33, 1001):  # not 1, not a multiple of 16, int32
        cache.launch(k, (1,), x, n, 0.5, BLOCK=64)
    assert len(k.slow) == 1 and cache.hits == 2


def test_disabled_or_ineligible_launches_always_go_through_triton():
    k = _kernel()
    off = CpuCache(enabled=False)
    x = torch.zeros(64)
    for _ in range(3):
        off.launch(k, (1,), x, 48, 0.5, BLOCK=64)
    assert len(k.slow) == 3 and off.hits == 0
    assert LaunchCache().enabled is False  # off unless ANCHOR_KERNELS_FAST_LAUNCH=1
    plain = LaunchCache(enabled=True)  # CPU tensors: not eligible for the direct path
    plain.launch(k, (1,), x, 48, 0.5, BLOCK=64)
    plain.launch(k, (1,), x, 48, 0.5, BLOCK=64)
    assert len(k.slow) == 5 and plain.hits == 0 and plain.misses == 0


def test_a_kernel_still_compiling_is_not_cached():
    class Pending:
        def result(self):
            return FakeCompiled()

    class AsyncKernel(FakeKernel):
        def __getitem__(self, grid):
            def go(*args, **kwargs):
                self.slow.append((grid, args, kwargs, None))
                return Pending()
            return go

    cache, k = CpuCache(), AsyncKernel(["x", "BLOCK"])
    x = torch.zeros(64)
    cache.launch(k, (1,), x, BLOCK=16)
    cache.launch(k, (1,), x, BLOCK=16)
    assert len(k.slow) == 2 and cache.hits == 0


def test_spec_key_keeps_bools_ints_and_floats_apart():
    assert spec_key(True) != spec_key(1)
    assert spec_key(1) != spec_key(17)
    assert spec_key(16) != spec_key(17)
    assert spec_key(0.5) == spec_key(2.0)
    assert spec_key(-5) != spec_key(5)
    assert spec_key(None) != spec_key(0)


def test_empty_hook_chains_count_as_no_hooks():
    """Triton 3.6 keeps its launch hooks in HookChain objects that are empty unless a tool adds one:
    the first GPU run found the direct path never taken because an empty chain is not None."""
    from triton.knobs import HookChain

    from vllm_anchor.kernels.launch import _hook_set
    chain = HookChain()
    assert not _hook_set(None) and not _hook_set(chain)
    chain.add(print)
    assert _hook_set(chain) and _hook_set(print)
