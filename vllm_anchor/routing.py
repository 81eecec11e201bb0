"""Host-side decisions of the backend, free of vLLM state so they can be tested on the CPU."""
from __future__ import annotations

import math
from dataclasses import replace

import torch


def first_anchor_request(query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor,
                         num_decodes: int, min_seq_len: int) -> int:
    """Index ``k`` such that requests ``[k, R)`` all run anchor; ``R`` when none does.

    The batch is ordered decodes first, then prefills (vLLM reorders it for builders with a
    ``reorder_batch_threshold``; V2 sorts prefills by chunk length). A request qualifies when
    it is a prefill (query length > 1) whose context after this chunk reaches ``min_seq_len``.
    Only a qualifying *tail* is taken, so FlashAttention and the anchor kernels each see one
    contiguous slice; a qualifying request followed by a short one simply runs dense.
    """
    num_reqs = seq_lens_cpu.shape[0]
    q_lens = (query_start_loc_cpu[1:num_reqs + 1] - query_start_loc_cpu[:num_reqs]).tolist()
    seq_lens = seq_lens_cpu.tolist()
    k = num_reqs
    while k > num_decodes and q_lens[k - 1] > 1 and seq_lens[k - 1] >= min_seq_len:
        k -= 1
    return k


def slice_requests(cm, start: int, end: int):
    """``CommonAttentionMetadata`` of requests ``[start, end)`` (``start`` must be 0)."""
    if start != 0:
        raise ValueError("only a head slice [0, end) keeps the token offsets valid")
    qsl_cpu = cm.query_start_loc_cpu[: end + 1]
    n_tok = int(qsl_cpu[-1])
    q_lens = qsl_cpu[1:] - qsl_cpu[:-1]
    upper = cm.seq_lens_cpu_upper_bound
    fields = dict(
        query_start_loc=cm.query_start_loc[: end + 1], query_start_loc_cpu=qsl_cpu,
        seq_lens=cm.seq_lens[:end], num_reqs=end, num_actual_tokens=n_tok,
        max_query_len=int(q_lens.max()) if end else 0,
        max_seq_len=int(upper[:end].max()) if upper is not None and end else cm.max_seq_len,
        block_table_tensor=cm.block_table_tensor[:end], slot_mapping=cm.slot_mapping[:n_tok],
    )
    if upper is not None:
        fields["seq_lens_cpu_upper_bound"] = upper[:end]
    if cm.is_prefilling is not None:
        fields["is_prefilling"] = cm.is_prefilling[:end]
    if cm.positions is not None:
        fields["positions"] = cm.positions[:n_tok]
    return replace(cm, **fields)


def context_bucket(tokens: int) -> int:
    """The half-octave of a call's context (``round(2 * log2(tokens))``), the key under which the
    density guard keeps its verdict: 24576 -> 29, 32768 -> 30, 65536 -> 32, 131000 -> 34."""
    return round(2 * math.log2(tokens)) if tokens > 0 else 0


class DensityGuard:
    """Per-layer decision: sparse, or dense FlashAttention when stripes would not pay off.

    A layer's stripe density is a property of its heads and changes slowly from one chunk to
    the next of similar context, so after a chunk measured above ``threshold`` the layer skips
    the anchor work altogether (no anchor or stripe step wasted) and re-measures only every
    ``probe_every``-th call; the running estimate is the mean of the last measurement and the
    previous estimate. The density does change with the context: served with YaRN x16 at θ 12,
    15 of SmolLM2's 30 layers average above 0.5 on 32K-token prompts and only one on 131000-token
    ones (``bench/results/lease23_h100/guard_key/``), so each ``key`` (the backend passes
    :func:`context_bucket` of the call's context) keeps its own estimate and call count, and a
    verdict learned on 32k-token prompts does not decide a 128k one. The backend feeds each
    measurement in a call late (:class:`DeferredDensity`), with the key of the call that made it:
    a measured call always finishes sparse, and the next calls of that key follow the updated
    estimate.
    """

    def __init__(self, threshold: float, probe_every: int = 16):
        self.threshold = threshold
        self.probe_every = probe_every
        self._estimates: dict = {}
        self._calls: dict = {}

    def estimate_for(self, key=None) -> float | None:
        """The running density estimate of ``key`` (None before its first measurement)."""
        return self._estimates.get(key)

    def skip_measurement(self, key=None) -> bool:
        """Call once per long-prefill call, before any anchor work: True = run dense now."""
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        estimate = self._estimates.get(key)
        return estimate is not None and estimate > self.threshold and calls % self.probe_every != 0

    def update(self, density: float, key=None) -> None:
        """Fold a measured density into the estimate that :meth:`skip_measurement` reads."""
        old = self._estimates.get(key)
        self._estimates[key] = density if old is None else 0.5 * (old + density)

    def dense_after_measuring(self, density: float, key=None) -> bool:
        """Record a measured density; True = too dense to run sparse."""
        self.update(density, key)
        return density > self.threshold


class DeferredDensity:
    """One layer's stripe density, read back a call later so the GPU never waits for the host.

    Reading the selected-pair count right after the stripe step stops the CPU until the GPU has
    caught up, once per anchored layer call, and the GPU then idles while the CPU launches the
    rest of the layer and the next one. Instead ``start`` queues a copy of the count (a 0-dim
    device tensor) into pinned host memory behind a CUDA event, and ``take`` returns the density
    once that copy has landed (None before, and after it was taken). On the CPU the copy is
    immediate. One measurement is in flight at a time; a newer ``start`` replaces an untaken one.
    """

    def __init__(self):
        self._host: torch.Tensor | None = None
        self._event = None
        self._total = 0.0
        self._pending = False

    def start(self, selected: torch.Tensor, total: float) -> None:
        if selected.device.type == "cuda":
            if self._host is None:
                self._host = torch.empty((), dtype=torch.float64, pin_memory=True)
                self._event = torch.cuda.Event()
            self._host.copy_(selected, non_blocking=True)
            self._event.record()
        else:
            self._host = selected.detach().to(torch.float64).clone()
            self._event = None
        self._total = total
        self._pending = True

    def take(self) -> float | None:
        if not self._pending or (self._event is not None and not self._event.query()):
            return None
        self._pending = False
        return float(self._host) / self._total if self._total else 0.0
