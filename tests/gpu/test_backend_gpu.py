"""The backend's CUDA-only pieces: the density guard's deferred read-back."""
from __future__ import annotations

import time

import pytest
import torch

from vllm_anchor.routing import DeferredDensity

pytestmark = pytest.mark.gpu


def test_deferred_density_does_not_wait_for_the_gpu():
    """``start`` returns while the stream is still busy, ``take`` says None until the copy has
    landed, then the density; the host never blocks on the GPU."""
    d = DeferredDensity()
    x = torch.tensor(3.0, dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of the copy
    t0 = time.perf_counter()
    d.start(x, 12.0)
    assert d.take() is None, "the copy landed before the work queued ahead of it"
    assert time.perf_counter() - t0 < 0.05, "start() waited for the GPU"
    torch.cuda.synchronize()
    assert d.take() == pytest.approx(0.25)
    assert d.take() is None


def test_memory_profile_reservation_is_on_the_gpu_and_skipped_in_graph_capture(monkeypatch):
    """The workspace held through vLLM's profiling forward is real device memory of the computed
    size; a call without metadata inside a CUDA graph capture reserves nothing (that memory would
    belong to the graph's private pool, not to the profile)."""
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from vllm_anchor.backend import AnchorImpl
    from vllm_anchor.kernels.api import step_workspace_nbytes
    from vllm_anchor.settings import AnchorSettings

    monkeypatch.setattr(FlashAttentionImpl, "forward", lambda self, layer, q, k, v, kv, md, out, *a: out)
    monkeypatch.setattr(AnchorImpl, "_profile_reservation", None)
    monkeypatch.setattr(AnchorImpl, "_profile_reserved", False)
    impl = AnchorImpl(32, 128, 128 ** -0.5, 8, None, None, "auto")
    impl.settings = AnchorSettings(min_seq_len=1)
    impl._max_tokens, impl._max_model_len = 65536, 131072
    layer = type("Layer", (), {"layer_name": "model.layers.0.self_attn.attn"})()
    q = torch.randn(8, 32, 128, device="cuda", dtype=torch.bfloat16)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        impl.forward(layer, q, None, None, None, None, q)
    assert AnchorImpl._profile_reservation is None

    monkeypatch.setattr(AnchorImpl, "_profile_reserved", False)
    before = torch.cuda.memory_allocated()
    impl.forward(layer, q, None, None, None, None, q)
    nbytes = step_workspace_nbytes(impl.settings.kernel, 32, 8, 128, 65536, 131072)
    held = AnchorImpl._profile_reservation
    assert held is not None and held.is_cuda and held.numel() == nbytes
    assert torch.cuda.memory_allocated() - before >= nbytes > 2**30  # 1.36 GiB for this shape
