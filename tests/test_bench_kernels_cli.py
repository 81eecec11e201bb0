"""bench/kernels.py's config sweep: each --sweep entry becomes one AnchorConfig on top of the
command line's settings, and a bad entry is rejected before any model is loaded."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vllm_anchor.kernels import AnchorConfig

from bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
bench_kernels = load_bench("kernels")


def test_sweep_entries_override_the_command_line_settings():
    assert bench_kernels.parse_variant("base") == {}
    assert bench_kernels.parse_variant("group_size=1024,share_gqa=false,pool_block=64") == {
        "group_size": 1024, "share_gqa": False, "pool_block": 64}
    assert bench_kernels.parse_variant("share_gqa=True") == {"share_gqa": True}


@pytest.mark.parametrize("bad", ["theta=8", "group=1024", "group_size", "share_gqa=maybe", "pool_block=x"])
def test_bad_sweep_entries_are_rejected(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        bench_kernels.parse_variant(bad)


@pytest.mark.parametrize("bad", ["group_size=100", "pool_block=48", "group_size=1000", "theta=1"])
def test_bad_sweep_entry_stops_the_cli_before_loading_the_model(capsys, bad):
    with pytest.raises(SystemExit):
        bench_kernels.main(["smollm2", "--model", "/nonexistent", "--out", "/tmp/x.json",
                            "--sweep", "base", bad])
    assert repr(bad) in capsys.readouterr().err


def test_sweep_entries_combine_with_the_command_line_settings():
    args = bench_kernels.argparse.Namespace(sink_tokens=None, local_tokens=None, group_size=None,
                                            pool_block=64, no_share_gqa=True,
                                            sweep=["base", "group_size=512"])
    assert bench_kernels.sweep_configs(args) == {
        "base": {"pool_block": 64, "share_gqa": False},
        "group_size=512": {"pool_block": 64, "share_gqa": False, "group_size": 512}}
    args.sweep = ["group_size=8192"]  # 128 pooled blocks of 64 per group: too many
    with pytest.raises(ValueError, match="group_size=8192"):
        bench_kernels.sweep_configs(args)


def test_summary_is_per_variant_and_theta():
    rows = [{"tokens": 8, "layer": li, "variant": v, "theta": t, "fa3_ms": 2.0, "anchor_ms": ms,
             "stripe_density": 0.1, "attended_fraction": 0.2, "recall_mean": r, "recall_p5": r,
             "rel_err_vs_fa3": 0.01}
            for v, ms, r in (("base", 1.0, 0.99), ("group_size=1024", 0.5, 0.9))
            for t in (8.0, 12.0) for li in range(2)]
    out = bench_kernels.summarize(rows, 8, [8.0, 12.0])
    assert [(s["variant"], s["theta"]) for s in out] == [
        ("base", 8.0), ("base", 12.0), ("group_size=1024", 8.0), ("group_size=1024", 12.0)]
    assert [s["speedup_all_layers"] for s in out] == [2.0, 2.0, 4.0, 4.0]
    assert out[2]["recall_mean"] == pytest.approx(0.9)
    assert AnchorConfig(**bench_kernels.parse_variant("group_size=1024")).group_size == 1024


def test_row_relative_error_finds_the_one_bad_row_a_norm_hides():
    import torch
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(4096, 4, 64, generator=g)
    out = ref.clone()
    out[17, 2] *= 1.05  # one (token, head) row 5% off
    assert bench_kernels.rel_err(out, ref) < 2e-3  # the whole-tensor norm barely moves
    r = bench_kernels.row_rel_err(out, ref)
    assert r["max_row_rel_err"] == pytest.approx(0.05, rel=1e-4)
    assert r["p999_row_rel_err"] < 1e-6  # every other row is exact
    # a reference row of zeros does not divide by zero
    ref[5, 0] = 0.0
    out[5, 0] = 0.0
    assert bench_kernels.row_rel_err(out, ref)["max_row_rel_err"] == pytest.approx(0.05, rel=1e-4)


def test_yarn_factor_gives_the_served_rope_and_length():
    rope, max_pos = bench_kernels.yarn(16)
    assert (rope["factor"], max_pos) == (16.0, 131072)  # bench/gpu/setup.sh's $YARN16
    rope4, max_pos4 = bench_kernels.yarn(4)
    assert (rope4, max_pos4) == ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 100000.0,
                                  "original_max_position_embeddings": 8192}, 32768)  # every earlier SmolLM2 result
    with pytest.raises(ValueError, match="factor"):
        bench_kernels.yarn(0.5)


def test_corpus_gives_exact_lengths_or_says_it_is_too_short(tmp_path):
    from transformers import AutoTokenizer
    from tiny_tokenizer import build_tiny_tokenizer
    tok = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path))
    for corpus in ("pydoc", "auto"):
        ids = bench_kernels.corpus_text_ids(tok, 3000, corpus)
        assert ids.shape == (1, 3000) and ids.dtype == bench_kernels.torch.long
    # pydoc keeps the text every earlier result was measured on: the sorted topics, joined
    import pydoc_data.topics
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    assert bench_kernels.corpus_text_ids(tok, 500, "pydoc").tolist()[0] == tok(text).input_ids[:500]
    with pytest.raises(ValueError, match="only"):
        bench_kernels.corpus_text_ids(tok, 10**8, "pydoc")


def test_guarded_summary_serves_dense_layers_at_fa3_time_with_full_recall():
    # layer 0 too dense for the guard (0.8 > 0.5): served by FA3 (4 ms, recall 1); layer 1 sparse
    rows = [{"tokens": 8, "layer": 0, "theta": 12.0, "fa3_ms": 4.0, "anchor_ms": 5.0, "stripe_density": 0.8,
             "attended_fraction": 0.9, "recall_mean": 0.97, "recall_p5": 0.90, "rel_err_vs_fa3": 0.01},
            {"tokens": 8, "layer": 1, "theta": 12.0, "fa3_ms": 4.0, "anchor_ms": 1.0, "stripe_density": 0.1,
             "attended_fraction": 0.2, "recall_mean": 0.96, "recall_p5": 0.80, "rel_err_vs_fa3": 0.02}]
    (s,) = bench_kernels.summarize(rows, 8, [12.0], guard=0.5)
    assert s["speedup_all_layers"] == pytest.approx(8 / 6)
    assert s["dense_layers_guarded"] == [0]
    assert s["speedup_guarded"] == pytest.approx(8 / 5)
    assert s["recall_mean_guarded"] == pytest.approx((1.0 + 0.96) / 2)
    assert s["recall_p5_mean_guarded"] == pytest.approx((1.0 + 0.80) / 2)
    assert s["worst_layer_recall_guarded"] == pytest.approx(0.96)
    (off,) = bench_kernels.summarize(rows, 8, [12.0], guard=1.0)  # guard off: the kernels' figures
    assert off["dense_layers_guarded"] == [] and off["speedup_guarded"] == pytest.approx(off["speedup_all_layers"])


def test_summary_reports_the_tail_recall_when_every_layer_has_it():
    base = {"tokens": 8, "theta": 12.0, "fa3_ms": 4.0, "anchor_ms": 1.0, "stripe_density": 0.1,
            "attended_fraction": 0.2, "recall_mean": 0.9, "recall_p5": 0.5, "rel_err_vs_fa3": 0.02}
    rows = [{**base, "layer": 0, "tail_recall_mean": 0.99, "tail_recall_p5": 0.97},
            {**base, "layer": 1, "tail_recall_mean": 0.95, "tail_recall_p5": 0.90}]
    (s,) = bench_kernels.summarize(rows, 8, [12.0])
    assert s["tail_recall_mean"] == pytest.approx(0.97) and s["tail_recall_p5_mean"] == pytest.approx(0.935)
    assert (s["tail_worst_layer"], s["tail_worst_layer_recall_mean"]) == (1, 0.95)
    (s,) = bench_kernels.summarize([rows[0], {**base, "layer": 1}], 8, [12.0])  # one layer without a tail
    assert "tail_recall_mean" not in s


def test_recall_of_the_kernels_lists_matches_the_reference():
    """The SmolLM2 bench's recall (dense softmax mass on anchor | the kernels' stripe lists) equals
    the reference's ``attention_mass_recall`` on the same keys, sampled rows and tail rows alike
    (CPU: the Triton kernels under the interpreter, fp32, one 300-token sequence)."""
    import torch
    from paged_case import make_case
    from vllm_anchor.kernels import new_workspace, plan_anchor_prefill
    from vllm_anchor.kernels import reference as R
    from vllm_anchor.kernels.api import _Call

    cfg = AnchorConfig(theta=1.0, sink_tokens=16, local_tokens=16, group_size=64, pool_block=16, tail_tokens=8)
    case = make_case([(0, 300)], 4, 2, 32, seed=5, strong_frac=0.2, strong_gain=1.5)
    k, v = case.seq_kv(0)
    n = 300
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cpu")
    ws = new_workspace(_Call(case.q, case.kv_cache, case.block_table, plan, case.scale))
    bench_kernels.anchor_prefill(case.q, case.kv_cache, case.block_table, plan, case.scale, workspace=ws)
    assert 0 < int(ws.counts.sum()) < int(plan.candidate_pairs)  # some columns kept, not all
    q = case.q.float()
    items = plan.items_cpu.tolist()
    checked_tail = False
    for it, item in enumerate(items):
        cand_end = item[1]
        if cand_end <= cfg.sink_tokens:
            continue
        g = (cand_end + cfg.local_tokens) // cfg.group_size
        lo, hi = g * cfg.group_size, min(n, (g + 1) * cfg.group_size)
        lo, hi = (max(lo, n - cfg.tail_tokens), hi) if item[bench_kernels.ITEM_NTAIL] else (lo, min(hi, n - cfg.tail_tokens))
        rows = torch.arange(lo, hi)
        got = bench_kernels._item_recall(q, k, plan, ws, cfg, case.scale, it, g, rows).view(4, -1)
        off = int(plan.items_cpu[it, bench_kernels.ITEM_LIST_OFF])
        mask = R.anchor_region_mask(lo, hi - lo, hi, cfg)[None].repeat(4, 1, 1)
        for hs in range(ws.counts.shape[1]):
            sel = ws.lists[hs, off:off + int(ws.counts[it, hs])].long()
            heads = slice(hs * (4 // ws.counts.shape[1]), (hs + 1) * (4 // ws.counts.shape[1]))
            mask[heads, :, sel] = True
        want = R.attention_mass_recall(q[lo:hi], k[:hi], lo, case.scale, mask)
        assert torch.allclose(got, want, atol=1e-5), (it, (got - want).abs().max())
        checked_tail |= bool(item[bench_kernels.ITEM_NTAIL])
    assert checked_tail
    sampled, tail = bench_kernels.recall_sampled(q, k, plan, ws, cfg, case.scale, n)
    assert tail.numel() == 4 * cfg.tail_tokens and bool((tail <= 1 + 1e-6).all()) and bool((sampled > 0).all())
    assert float(tail.min()) < 1.0  # theta 1 misses some mass: the test can fail
