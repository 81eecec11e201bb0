"""Host-side decisions of the backend, free of vLLM state so they can be tested on the CPU."""
from __future__ import annotations

import math
from dataclasses import replace

import torch


def anchor_run(query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor, num_decodes: int,
               min_seq_len: int, is_prefilling: torch.Tensor | None = None,
               bidirectional: list[bool] | None = None) -> tuple[int, int]:
    """Requests ``[start, end)`` that run anchor: ``(R, R)`` when none does.

    A request qualifies when it is a prefill (query length > 1, and still in its prompt where
    the model runner says so: a speculative-decoding step of a long conversation also has
    several query tokens, and is a decode) whose context after this chunk reaches
    ``min_seq_len``, and whose chunk vLLM attends causally: one flagged in ``bidirectional``
    (:func:`bidirectional_in_chunk`) never qualifies, the anchor kernels being strictly causal.
    The anchor kernels take one contiguous slice of the batch, and FlashAttention the requests
    before and after it, so the run taken is the contiguous run of qualifying requests with the
    most query tokens (the first of equal ones); a qualifying request outside it runs dense.
    vLLM orders a batch decodes, then chunked-prefill continuations, then first chunks (V2:
    prefills by chunk length), so a short new prompt often follows the long chunks: taking only
    a qualifying tail ran those dense.
    """
    num_reqs = seq_lens_cpu.shape[0]
    q_lens = (query_start_loc_cpu[1:num_reqs + 1] - query_start_loc_cpu[:num_reqs]).tolist()
    seq_lens = seq_lens_cpu.tolist()
    prefilling = is_prefilling[:num_reqs].tolist() if is_prefilling is not None else [True] * num_reqs
    causal = [not b for b in bidirectional[:num_reqs]] if bidirectional is not None else [True] * num_reqs
    ok = [i >= num_decodes and q_lens[i] > 1 and seq_lens[i] >= min_seq_len and prefilling[i] and causal[i]
          for i in range(num_reqs)]
    best, best_tokens = (num_reqs, num_reqs), 0
    i = num_decodes
    while i < num_reqs:
        if not ok[i]:
            i += 1
            continue
        j = i
        while j < num_reqs and ok[j]:
            j += 1
        tokens = sum(q_lens[i:j])
        if tokens > best_tokens:
            best, best_tokens = (i, j), tokens
        i = j
    return best


def bidirectional_in_chunk(query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor,
                           mm_prefix_ranges: dict[int, list[tuple[int, int]]]) -> list[bool]:
    """Per request: whether vLLM attends part of its query chunk bidirectionally (PrefixLM).

    ``mm_prefix_ranges`` is ``CommonAttentionMetadata.mm_req_doc_ranges`` of a PrefixLM model
    (Gemma 3/4, PaliGemma, ...): request index -> inclusive ``(start, end)`` token positions of
    multimodal items whose tokens see each other both ways. FlashAttention (FA4's mask_mod)
    adds "query and key in one range" to the causal mask, in absolute positions, and skips
    ``start >= end``; so only a range that overlaps the chunk ``[c0, seq_len)``,
    ``c0 = seq_len - query_len``, beyond its first token (a query at ``e`` or a range ending at
    ``c0`` sees no key past itself) changes its queries' attention: ``s < e``, ``e > c0`` and
    ``s < seq_len``. One wholly in the cached context (an image of an earlier chunk) or wholly
    after the chunk (a later chunk's image: vLLM never splits a PrefixLM model's image across
    chunks) leaves the chunk plain causal, and the chunk may still run anchor.
    """
    num_reqs = seq_lens_cpu.shape[0]
    q_lens = (query_start_loc_cpu[1:num_reqs + 1] - query_start_loc_cpu[:num_reqs]).tolist()
    seq_lens = seq_lens_cpu.tolist()
    return [any(s < e and e > seq_lens[i] - q_lens[i] and s < seq_lens[i] for s, e in mm_prefix_ranges.get(i) or ())
            for i in range(num_reqs)]


def slice_requests(cm, start: int, end: int):
    """``CommonAttentionMetadata`` of requests ``[start, end)``, rebased so that their first
    query token is token 0 (pass the matching slice of the query and output to attention).
    Per-request and per-token fields are sliced (host copies too, so no getter has to read the
    device again); the per-token request indices of the whole batch are dropped."""
    if not 0 <= start <= end <= cm.num_reqs:
        raise ValueError(f"request slice [{start}, {end}) is not inside a batch of {cm.num_reqs}")
    qsl_cpu = cm.query_start_loc_cpu[start: end + 1]
    qsl = cm.query_start_loc[start: end + 1]
    t0, t1 = int(qsl_cpu[0]), int(qsl_cpu[-1])
    if t0:
        qsl_cpu, qsl = qsl_cpu - t0, qsl - qsl[0]
    q_lens = qsl_cpu[1:] - qsl_cpu[:-1]
    upper = cm.seq_lens_cpu_upper_bound
    n = end - start

    fields = dict(
        query_start_loc=qsl, query_start_loc_cpu=qsl_cpu,
        seq_lens=cm.seq_lens[start:end], num_reqs=n, num_actual_tokens=t1 - t0,
        max_query_len=int(q_lens.max()) if n else 0,
        max_seq_len=int(upper[start:end].max()) if upper is not None and n else cm.max_seq_len,
        block_table_tensor=cm.block_table_tensor[start:end], slot_mapping=cm.slot_mapping[t0:t1],
        _token_to_req_indices_cache=None,  # request indices of the whole batch: rebuilt on demand
    )
    for name in ("seq_lens_cpu_upper_bound", "is_prefilling", "encoder_seq_lens", "encoder_seq_lens_cpu",
                 "dcp_local_seq_lens", "dcp_local_seq_lens_cpu", "rswa_prefix_lens",
                 "_seq_lens_cpu", "_num_computed_tokens_cpu", "_num_computed_tokens_cache"):
        value = getattr(cm, name, None)
        if value is not None:
            fields[name] = value[start:end]
    if isinstance(cm.causal, torch.Tensor):
        fields["causal"] = cm.causal[start:end]
    if cm.positions is not None:
        fields["positions"] = cm.positions[t0:t1]
    ranges = getattr(cm, "mm_req_doc_ranges", None)
    if ranges:
        fields["mm_req_doc_ranges"] = {i - start: r for i, r in ranges.items() if start <= i < end} or None
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
