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
