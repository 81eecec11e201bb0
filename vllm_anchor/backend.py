"""AnchorAttention as a vLLM attention backend (wraps FlashAttention).

The backend *is* FlashAttention for everything but long prefills: same KV-cache layout, same
cache writes, decode batches captured as full CUDA graphs running stock FA3. A prefill request
whose context reaches ``min_seq_len`` runs the anchor kernels on its current chunk against all
of its cached tokens (prefix-cache hits and earlier chunks included)::

    batch (reordered):  | decodes | short prefills | long prefills (anchor) | short prefills |
    tokens:             0 ....................... token_start .......... token_end ..... num_actual_tokens
                        |<------ FA (fa_head) ------>|<- anchor kernels ->|<- FA (fa_tail) ->|
    per anchor request:    context_len = seq_len - query_len (already in the cache)
                           |<------- context ------->|<-- query chunk -->|
                           0                     context_len          seq_len

``forward`` runs eagerly between CUDA-graph pieces (attention is a splitting op), so the
anchor path may branch on the host; the decode-only path taken at graph capture is stock FA.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from triton.errors import TritonError
from vllm.config import get_current_vllm_config_or_none
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.attention.backends.flash_attn import (FlashAttentionBackend, FlashAttentionImpl,
                                                   FlashAttentionMetadata, FlashAttentionMetadataBuilder)
from vllm.v1.attention.backends.utils import split_decodes_and_prefills

from vllm_anchor.kernels import launch_env
from vllm_anchor.kernels import AnchorPlan, plan_anchor_prefill, stripe_density, warm_up
from vllm_anchor.kernels.api import (AnchorWorkspace, _Call, density_parts, run_anchor_step, run_sparse_step,
                                     run_stripe_step, shared_workspace, step_workspace_nbytes)

from .engine_profile import on_build as profile_step
from .routing import (DeferredDensity, DensityGuard, anchor_run, bidirectional_in_chunk, context_bucket,
                      slice_requests)
from .settings import AnchorSettings, load_settings
from .stats import STATS

logger = logging.getLogger("vllm_anchor")


@dataclass
class AnchorPrefillMetadata:
    plan: AnchorPlan
    block_table: torch.Tensor  # [num_anchor_reqs, max_blocks]
    token_start: int  # first anchor token in the batch
    token_end: int
    context_tokens: int = 0  # the longest anchored request's context after this chunk (the guard's key)
    workspaces: dict = field(default_factory=dict)  # per layer shape, shared by the step's layers
    # what plan_for needs to plan another head shape: the anchored requests' query_start_loc
    # (from 0) and context lengths on the host, and the head size ``plan`` was made for
    query_start_loc: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    head_size: int | None = None
    plans: dict = field(default_factory=dict)  # (heads, kv heads, head size) -> plan, besides ``plan``

    def workspace(self, call: _Call) -> AnchorWorkspace:
        """The step's workspace for this layer shape (``kernels.api.shared_workspace``)."""
        return shared_workspace(self.workspaces, call)

    def plan_for(self, num_heads: int, num_kv_heads: int, head_size: int) -> AnchorPlan:
        """The step's plan for layers of this head shape. The builder plans for the model's own
        shape; a layer of another shape in the same KV-cache group (a draft model's, whose
        builder vLLM makes from the target's config) gets its own plan, made once per step."""
        key = (num_heads, num_kv_heads, head_size)
        if key == (self.plan.num_heads, self.plan.num_kv_heads, self.head_size or head_size):
            return self.plan
        if key not in self.plans:
            if self.query_start_loc is None:
                raise ValueError(f"no plan for {key} heads and nothing to make one from")
            self.plans[key] = plan_anchor_prefill(self.query_start_loc, self.seq_lens, self.plan.cfg, num_heads,
                                                  num_kv_heads, head_size, self.plan.tiles.device)
        return self.plans[key]


@dataclass
class AnchorMetadata:
    fa: FlashAttentionMetadata  # the whole batch, exactly what FLASH_ATTN would use
    fa_head: FlashAttentionMetadata | None  # requests before the anchored ones (None: none)
    anchor: AnchorPrefillMetadata | None  # None: no long prefill in this batch
    fa_tail: FlashAttentionMetadata | None = None  # requests after them, from token anchor.token_end

    @property
    def num_actual_tokens(self) -> int:
        return self.fa.num_actual_tokens


def _settings(vllm_config) -> AnchorSettings:
    return load_settings(getattr(vllm_config, "additional_config", None) or {})


def unplanned_spec(kv_cache_spec, builder_cls: type | None = None) -> str:
    """Why layers with this KV-cache spec (and builder class) never run the anchor path ('' when
    they may).

    vLLM subclasses this builder for chunked-local attention (Llama 4), cross, encoder-only and
    static-sink attention and KV-sharing fast prefill, and hands the subclass batches rewritten
    for those (virtual per-chunk requests with their own block table, other lengths): planning
    them as causal prefills over the whole context would read the wrong pages. A subclass is
    how such layers show even where their spec does not (with the hybrid allocator off, a
    chunked-local layer's spec is a FullAttentionSpec). Sliding-window layers (also a
    FullAttentionSpec with a window, then) are stock FA in AnchorImpl too; R-SWA limits
    generated tokens to a window.
    """
    if builder_cls is not None and builder_cls is not AnchorMetadataBuilder:
        return f"vLLM's {builder_cls.__name__}"
    from vllm.v1 import kv_cache_interface as kvi
    for name in ("ChunkedLocalAttentionSpec", "CrossAttentionSpec", "EncoderOnlyAttentionSpec", "RSWASpec"):
        cls = getattr(kvi, name, None)
        if cls is not None and isinstance(kv_cache_spec, cls):
            return f"KV-cache spec {name}"
    if getattr(kv_cache_spec, "sliding_window", None) is not None:
        return f"sliding window {kv_cache_spec.sliding_window}"
    return ""


class AnchorMetadataBuilder(FlashAttentionMetadataBuilder):
    # Decode-only batches replay full graphs (stock FA); prefills run eagerly.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH
    reorder_batch_threshold: int = 1
    supports_update_block_table: bool = False  # our metadata is not FlashAttentionMetadata

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # With speculative decoding a decode row has 1 + k query tokens: counted (and ordered
        # first) as a decode, not as a chunk of a prompt (is_prefilling checks it again).
        self._init_reorder_batch_threshold(1, supports_spec_as_decode=True)
        self.settings = _settings(vllm_config)
        self.head_size = kv_cache_spec.head_size
        self.num_heads_kv = kv_cache_spec.num_kv_heads
        self.num_heads_q = vllm_config.model_config.get_num_attention_heads(vllm_config.parallel_config)
        unplanned = unplanned_spec(kv_cache_spec, type(self))
        if unplanned and self.settings.enabled:
            logger.info("vllm-anchor: layers with %s run stock FlashAttention", unplanned)
        self._plans = self.settings.enabled and not unplanned

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return cls._cudagraph_support

    def use_cascade_attention(self, *args, **kwargs) -> bool:
        return False

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AnchorMetadata:
        cm = common_attn_metadata
        profile_step(self, cm.num_actual_tokens)  # no-op unless VLLM_ANCHOR_PROFILE_DIR is set
        k, e = self._anchor_run(cm)
        if k == e:  # nothing long: exactly what FLASH_ATTN builds
            return AnchorMetadata(super().build(common_prefix_len, cm, fast_build), None, None)
        fa_head = self._fa_slice(cm, 0, k, fast_build) if k > 0 else None
        fa_tail = self._fa_slice(cm, e, cm.num_reqs, fast_build) if e < cm.num_reqs else None
        if fa_tail is not None and not getattr(self, "_logged_tail", False):  # once: shows the split is in use
            self._logged_tail = True
            logger.info("vllm-anchor: first step with requests after the anchored ones (requests %d-%d of %d "
                        "anchored, the rest on FlashAttention)", k, e - 1, cm.num_reqs)
        fa = super().build(0, cm, fast_build)  # whole batch: density-guard fallback, off layers
        qsl = cm.query_start_loc_cpu[: cm.num_reqs + 1]
        start, end = int(qsl[k]), int(qsl[e])
        anchor_qsl, anchor_seq = qsl[k:e + 1] - start, cm.seq_lens_cpu_upper_bound[k:e]
        plan = plan_anchor_prefill(anchor_qsl, anchor_seq, self.settings.kernel, self.num_heads_q,
                                   self.num_heads_kv, self.head_size, self.device)
        anchor = AnchorPrefillMetadata(plan=plan, block_table=cm.block_table_tensor[k:e],
                                       token_start=start, token_end=end, context_tokens=int(anchor_seq.max()),
                                       query_start_loc=anchor_qsl, seq_lens=anchor_seq, head_size=self.head_size)
        return AnchorMetadata(fa, fa_head, anchor, fa_tail)

    def _fa_slice(self, cm: CommonAttentionMetadata, start: int, end: int, fast_build: bool):
        """FlashAttention's metadata for requests ``[start, end)``, whose tokens start at 0."""
        md = super().build(0, slice_requests(cm, start, end), fast_build)
        # FA3 keeps its AOT schedule in one persistent buffer (for full CUDA graphs) that the
        # next build overwrites; this eager-only metadata keeps its own copy.
        if getattr(md, "scheduler_metadata", None) is not None:
            md.scheduler_metadata = md.scheduler_metadata.clone()
        return md

    def _anchor_run(self, cm: CommonAttentionMetadata) -> tuple[int, int]:
        """Requests ``[start, end)`` that run anchor (``start == end``: none; see
        :func:`routing.anchor_run`).

        The anchor kernels are strictly causal. A batch vLLM builds non-causal (``causal`` False:
        all of it bidirectional; or a tensor of per-request causal flags, FA4's dynamic_causal,
        which would take a device read to tell apart) runs wholly on FlashAttention, and so does
        a request whose chunk holds a PrefixLM multimodal range
        (:func:`routing.bidirectional_in_chunk`); FlashAttention gets them with ``causal`` and
        the ranges as vLLM built them.
        """
        none = (cm.num_reqs, cm.num_reqs)
        if not self._plans:
            return none
        if isinstance(cm.causal, torch.Tensor) or not cm.causal:
            if not getattr(self, "_logged_non_causal", False):  # once, not every step
                self._logged_non_causal = True
                logger.info("vllm-anchor: non-causal batches (causal=%s) run stock FlashAttention: the anchor "
                            "kernels are causal only", "per-request flags" if isinstance(cm.causal, torch.Tensor)
                            else cm.causal)
            return none
        if cm.seq_lens_cpu_upper_bound is None:
            if not getattr(self, "_warned_no_lengths", False):  # once, not every step
                self._warned_no_lengths = True
                logger.warning("vllm-anchor: the model runner gave no host sequence lengths; "
                               "such steps run stock FlashAttention")
            return none
        num_decodes, num_prefills, _, _ = split_decodes_and_prefills(
            cm, decode_threshold=self.reorder_batch_threshold)
        if num_prefills == 0:
            return none
        qsl, seq_lens = cm.query_start_loc_cpu[: cm.num_reqs + 1], cm.seq_lens_cpu_upper_bound[: cm.num_reqs]
        ranges = getattr(cm, "mm_req_doc_ranges", None)
        bidirectional = bidirectional_in_chunk(qsl, seq_lens, ranges) if ranges else None
        if bidirectional and any(bidirectional[num_decodes:]) and not getattr(self, "_logged_prefix_lm", False):
            self._logged_prefix_lm = True
            logger.info("vllm-anchor: prefill chunks holding bidirectional multimodal (PrefixLM) ranges run "
                        "stock FlashAttention: the anchor kernels are causal only")
        return anchor_run(qsl, seq_lens, num_decodes, self.settings.min_seq_len, cm.is_prefilling, bidirectional)


class AnchorImpl(FlashAttentionImpl):
    supports_dcp: ClassVar[bool] = False
    # Held through vLLM's memory-profiling run so that its peak counts the anchor workspace (see
    # _reserve_for_profiling); one per process: the layers of a step share one workspace.
    _profile_reservation: ClassVar[torch.Tensor | None] = None
    _profile_reserved: ClassVar[bool] = False

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap=None, attn_type=AttentionType.DECODER,
                 kv_sharing_target_layer_name=None, **kwargs):
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                         kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, **kwargs)
        self.settings = _settings(get_current_vllm_config_or_none())
        reasons = []
        if attn_type != AttentionType.DECODER:
            reasons.append(f"attention type {attn_type}")
        if sliding_window is not None and tuple(self.sliding_window) != (-1, -1):
            reasons.append(f"sliding window {sliding_window}")
        if alibi_slopes is not None:
            reasons.append("ALiBi")
        if logits_soft_cap:
            reasons.append("logit soft-cap")
        if kwargs.get("sinks") is not None:
            reasons.append("learned attention sinks")
        if kv_cache_dtype not in ("auto", "bfloat16", "float16"):
            reasons.append(f"KV cache dtype {kv_cache_dtype}")
        if head_size > 256:
            reasons.append(f"head size {head_size} > 256")
        self._unsupported = ", ".join(reasons)
        self._layer_on: bool | None = None  # resolved at the first forward (needs the layer name)
        self._guard = DensityGuard(self.settings.density_guard)
        self._density = DeferredDensity()
        self._density_key = None  # the guard key of the call whose density is in flight
        self._sync_density = False
        self._failures = 0  # anchor-path calls that raised and ran stock attention instead
        cfg = get_current_vllm_config_or_none()
        sched, model = getattr(cfg, "scheduler_config", None), getattr(cfg, "model_config", None)
        self._max_tokens = getattr(sched, "max_num_batched_tokens", None)
        self._max_model_len = getattr(model, "max_model_len", None)

    def _reserve_for_profiling(self, layer, query: torch.Tensor) -> None:
        """Allocate, once per process, the workspace of the largest usual step and hold it until
        the first real forward.

        vLLM sizes the KV cache from the peak memory of a dummy forward in which attention gets no
        metadata, so the anchor path does not run there; its workspace (fp32 anchor state per
        query, stripe lists per candidate key: 1.4 GiB for Llama-3.1-8B's shape with a 65536-token
        chunk at 128k, 4.3 GiB at 1M) would otherwise come out of the memory vLLM believes free.
        Held from the first attention layer of that forward to its end, the reservation sits on
        top of the activations, as the real workspace does. Skipped where the anchor path can never
        run (disabled, unsupported layer, prompts shorter than ``min_seq_len``) and during CUDA
        graph capture.
        """
        if AnchorImpl._profile_reserved or not self.settings.enabled or not self._anchor_on(layer):
            return
        AnchorImpl._profile_reserved = True
        if (self._max_tokens is None or self._max_model_len is None
                or self._max_model_len < self.settings.min_seq_len):
            return
        if query.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        try:
            nbytes = step_workspace_nbytes(self.settings.kernel, self.num_heads, self.num_kv_heads, self.head_size,
                                           self._max_tokens, self._max_model_len)
            AnchorImpl._profile_reservation = torch.empty(nbytes, dtype=torch.uint8, device=query.device)
        except Exception as e:  # sizing must never stop start-up; vLLM's own margin then has to do
            logger.warning("vllm-anchor: could not reserve the anchor workspace in the memory profile (%r)", e)
            return
        logger.info("vllm-anchor: memory profile holds %.0f MiB for the anchor workspace (a %d-token chunk "
                    "at %d tokens of context)", nbytes / 2**20, min(self._max_tokens, self._max_model_len),
                    self._max_model_len)

    def process_weights_after_loading(self, act_dtype: torch.dtype):
        super().process_weights_after_loading(act_dtype)
        if not self.settings.enabled or self._unsupported or not torch.cuda.is_available():
            return
        try:  # compile the kernels now, not inside the first long request's TTFT
            if warm_up(self.num_heads, self.num_kv_heads, self.head_size, act_dtype,
                       self.settings.kernel, torch.device("cuda", torch.cuda.current_device())):
                logger.info("vllm-anchor: kernels compiled for %d/%d heads, head size %d, %s%s",
                            self.num_heads, self.num_kv_heads, self.head_size, act_dtype,
                            f" ({launch_env.ENV}: {launch_env.describe()})" if launch_env.describe() else "")
        except Exception as e:  # never block start-up on a warm-up; the first request compiles
            if launch_env.describe():  # unless the operator's launch options are what fails to compile
                raise ValueError(f"vllm-anchor: the kernels do not compile with {launch_env.ENV}="
                                 f"{launch_env.describe()!r} for {self.num_heads}/{self.num_kv_heads} heads, "
                                 f"head size {self.head_size}: {e!r}") from e
            logger.warning("vllm-anchor: kernel warm-up failed (%r); compiling on first use", e)

    def _measure_and_record(self, name: str, plan: AnchorPlan, ws, key) -> bool:
        """Queue this call's density read-back (the guard sees it, under this call's ``key``, at
        the layer's next call) and record the call. Returns True (run dense now) only on the
        fallback path: once the deferred read has failed, the layer reads its density
        synchronously, as it used to."""
        if not self._sync_density:
            try:
                self._density.start(*density_parts(plan, ws))
                self._density_key = key
                STATS.record(name, None, fallback=False)
                return False
            except Exception as e:  # never fail a request over a statistic
                logger.warning("vllm-anchor: deferred density read failed (%r); reading it synchronously", e)
                self._sync_density = True
        density = stripe_density(plan, ws.counts)  # one host sync
        dense = self._guard.dense_after_measuring(density, key)
        STATS.record(name, density, fallback=dense)
        return dense

    def _anchor_on(self, layer) -> bool:
        if self._layer_on is None:
            from vllm.model_executor.models.utils import extract_layer_index
            name = getattr(layer, "layer_name", "")
            try:
                index = extract_layer_index(name)
            except (AssertionError, ValueError):
                index = None
            self._layer_on = self.settings.layer_enabled(index) and not self._unsupported
            if self._unsupported and self.settings.enabled:
                logger.info("vllm-anchor: layer %s runs stock FlashAttention (%s)", name, self._unsupported)
        return self._layer_on

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        """query ``[T, H, D]``, kv_cache logical ``[blocks, Hkv, page, 2D]``, output ``[T, H, D]``."""
        md = attn_metadata
        if md is None:  # memory-profiling run (or a dummy run without metadata)
            self._reserve_for_profiling(layer, query)
            return super().forward(layer, query, key, value, kv_cache, None, output,
                                   output_scale, output_block_scale)
        if AnchorImpl._profile_reservation is not None:  # profiling is over: the real one takes its place
            AnchorImpl._profile_reservation = None
        if md.anchor is None or output_scale is not None or not self._anchor_on(layer):
            return super().forward(layer, query, key, value, kv_cache, md.fa, output,
                                   output_scale, output_block_scale)
        name = getattr(layer, "layer_name", "?")
        density = self._density.take()  # an earlier call's measurement, once it has landed
        if density is not None:
            self._guard.update(density, self._density_key)
            STATS.record_density(name, density)
        a = md.anchor
        bucket = context_bucket(a.context_tokens)
        if self._guard.skip_measurement(bucket):  # too dense lately at this context: stock FA, no waste
            STATS.record(name, None, fallback=True)
            return super().forward(layer, query, key, value, kv_cache, md.fa, output)
        try:
            return self._forward_anchor(layer, query, key, value, kv_cache, md, output, name, bucket)
        except (ValueError, RuntimeError, TritonError) as e:  # torch.OutOfMemoryError is a RuntimeError;
            # Triton's compile and shared-memory errors (OutOfResources) are not
            # never fail a request over the sparse path: stock attention recomputes every row
            self._failures += 1
            if self._failures == 1 or self._failures % 1000 == 0:
                logger.warning("vllm-anchor: layer %s ran stock FlashAttention after the anchor path failed "
                               "(%d times so far): %r", name, self._failures, e)
            return super().forward(layer, query, key, value, kv_cache, md.fa, output)

    def _forward_anchor(self, layer, query, key, value, kv_cache, md, output, name, bucket):
        a = md.anchor
        rows = slice(a.token_start, a.token_end)
        plan = a.plan_for(self.num_heads, self.num_kv_heads, self.head_size)
        call = _Call(query[rows], kv_cache, a.block_table, plan, self.scale)
        ws = a.workspace(call)
        run_anchor_step(call, ws)
        run_stripe_step(call, ws)
        if self._measure_and_record(name, plan, ws, bucket):
            return super().forward(layer, query, key, value, kv_cache, md.fa, output)
        if md.fa_head is not None:
            super().forward(layer, query, key, value, kv_cache, md.fa_head, output)
        if md.fa_tail is not None:
            t = a.token_end
            super().forward(layer, query[t:], None if key is None else key[t:], None if value is None else value[t:],
                            kv_cache, md.fa_tail, output[t:])
        run_sparse_step(call, ws, output[rows])
        return output


class AnchorBackend(FlashAttentionBackend):
    """FlashAttention's KV layout, cache writes and validation, plus the anchor prefill path."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # must be an AttentionBackendEnum key; `anchor` is an alias of it

    @staticmethod
    def get_impl_cls():
        return AnchorImpl

    @staticmethod
    def get_builder_cls():
        return AnchorMetadataBuilder

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        return capability.major >= 8

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return False

    @classmethod
    def supports_non_causal(cls) -> bool:
        return False
