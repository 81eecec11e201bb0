"""CPU tests of ``vllm-anchor calibrate`` on a Gemma-3-shaped model, without Gemma's weights.

A tiny randomly initialised ``Gemma3ForCausalLM`` (4 layers: sliding, full, sliding, full; window
64; 4 query heads on 1 KV head; q/k norm; ``query_pre_attn_scalar`` chosen so that the softmax
scale differs from ``1/sqrt(head_dim)``) with the tiny offline BPE tokenizer (which prepends a
BOS) goes through the real capture path: the captured Q/K/V and scale must reproduce each global
layer's attention output, the forward must equal transformers' eager Gemma-3 (sliding windows
applied), sliding layers must be reported as not anchored and kept out of the recommendation.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from vllm_anchor import calibrate as cal
from vllm_anchor.kernels import reference as ref

from tiny_tokenizer import build_tiny_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEAD_DIM, WINDOW, PRE_ATTN_SCALAR = 32, 64, 20
SCALE = PRE_ATTN_SCALAR ** -0.5  # 0.2236, not 1/sqrt(32) = 0.1768
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
GLOBAL, SLIDING = [1, 3], [0, 2]
N = 320


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    d = tmp_path_factory.mktemp("tiny_gemma3")
    build_tiny_tokenizer(d)
    tok = AutoTokenizer.from_pretrained(d)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=HEAD_DIM,
        query_pre_attn_scalar=PRE_ATTN_SCALAR, sliding_window=WINDOW, layer_types=LAYER_TYPES,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial q/k norm gains: peaked, head-dependent attention
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 2.0)
            layer.self_attn.k_norm.weight.uniform_(0.5, 2.0)
    model.save_pretrained(d)
    return str(d)


def test_sliding_window_attention_matches_explicit_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 50, 8, generator=g)
    k, v = torch.randn(1, 2, 50, 8, generator=g), torch.randn(1, 2, 50, 8, generator=g)
    i, j = torch.arange(50)[:, None], torch.arange(50)[None, :]
    for window, chunk in ((7, 5), (7, 16), (64, 16)):
        mask = (j <= i) & (j > i - window)
        s = torch.einsum("bhqd,bhkd->bhqk", q, k.repeat_interleave(2, 1)) * 0.3
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        want = torch.einsum("bhqk,bhkd->bqhd", p, v.repeat_interleave(2, 1))
        out, w = cal.sliding_window_attention(q, k, v, 0.3, window, chunk=chunk)
        assert w is None and out.shape == (1, 50, 4, 8)
        assert torch.allclose(out, want, atol=1e-5), (window, chunk)


@pytest.mark.parametrize("window", [None, 7])
def test_soft_capped_attention_matches_the_formula(window):
    """Gemma-2's logit soft-cap (transformers' SDPA path refuses it): scores capped by
    ``cap * tanh(s / cap)``, causal (and windowed) softmax, any chunk size."""
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 40, 8, generator=g) * 3, torch.randn(1, 2, 40, 8, generator=g) * 3, \
        torch.randn(1, 2, 40, 8, generator=g)
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    mask = (j <= i) & ((j > i - window) if window else True)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k.repeat_interleave(2, 1)) * 0.3
    s = 5.0 * torch.tanh(s / 5.0)
    want = torch.einsum("bhqk,bhkd->bqhd", torch.softmax(s.masked_fill(~mask, float("-inf")), -1),
                        v.repeat_interleave(2, 1))
    for chunk in (7, 64):
        out, _ = cal.sliding_window_attention(q, k, v, 0.3, window, chunk=chunk, softcap=5.0)
        assert torch.allclose(out, want, atol=1e-5), (window, chunk)


def test_capture_runs_a_soft_capped_layer_itself_and_skips_it():
    store = {"captured": {}, "info": {}, "layers": None}
    capture = cal.make_capture(store)
    module = type("Attn", (), {"layer_idx": 3, "scaling": 0.25, "attn_logit_softcapping": 50.0})()
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    out, _ = capture(module, q, k, v, None, scaling=0.25, softcap=50.0)  # used to raise in SDPA
    want, _ = cal.sliding_window_attention(q, k, v, 0.25, None, softcap=50.0)
    assert torch.equal(out, want) and store["info"][3]["skipped"] == cal.SOFTCAP_REASON
    assert 3 not in store["captured"]


def test_yarn_rope_keeps_a_partial_rotary_dimension():
    class Cfg:  # StableLM-like: a quarter of the head dimension rotates
        rope_parameters = {"rope_type": "llama3", "rope_theta": 1e4, "partial_rotary_factor": 0.25,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0}

    r = cal.yarn_rope(Cfg(), 4096)
    assert r["partial_rotary_factor"] == 0.25 and r["rope_type"] == "yarn" and r["rope_theta"] == 1e4
    assert "low_freq_factor" not in r and r["original_max_position_embeddings"] == 4096


def test_yarn_rope_keeps_model_theta_and_sliding_layers():
    class Cfg:
        rope_parameters = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}

    r = cal.yarn_rope(Cfg(), 32768)
    assert r["sliding_attention"] == Cfg.rope_parameters["sliding_attention"]
    assert r["full_attention"] == {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                   "original_max_position_embeddings": 32768}

    class Flat:  # SmolLM2: exactly the historical YaRN x4 parameters
        rope_parameters = {"rope_theta": 100000.0, "rope_type": "default"}

    assert cal.yarn_rope(Flat(), 8192) == cal.YARN


def test_gemma_capture_is_post_norm_post_rope_with_module_scale(gemma_dir):
    from transformers import AutoModelForCausalLM

    model, tok, store, yarn = cal.load_model(gemma_dir, "cpu", torch.float32, None, N)
    assert not yarn  # N is below the native context
    ids = cal.corpus_ids(tok, N, "pydoc")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    attn_in = {}
    hooks = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args, i=i: attn_in.__setitem__(i, args[0][0].detach().clone()))
        for i in range(4)]
    cap, info = cal.capture_qkv(model, store, ids, "cpu", None)
    for h in hooks:
        h.remove()
    assert sorted(cap) == GLOBAL  # sliding layers are never captured
    for i in SLIDING:
        assert info[i]["skipped"] == cal.SLIDING_REASON and info[i]["sliding_window"] == WINDOW
    for i in GLOBAL:
        assert "skipped" not in info[i]
        assert info[i]["scale"] == pytest.approx(model.model.layers[i].self_attn.scaling)
        assert info[i]["scale"] == pytest.approx(SCALE)
        assert (info[i]["num_heads"], info[i]["num_kv_heads"], info[i]["head_dim"]) == (4, 1, 32)
        q, k, v = cap[i]
        assert q.shape == (N, 4, HEAD_DIM) and k.shape == v.shape == (N, 1, HEAD_DIM)
        # the captured Q/K/V with the recorded scale reproduce the layer's attention output
        out = ref.dense_causal_attention(q, k, v, 0, info[i]["scale"]).reshape(N, -1)
        assert torch.allclose(out, attn_in[i], atol=1e-5)
        # ... and 1/sqrt(head_dim) does not (the scale matters)
        wrong = ref.dense_causal_attention(q, k, v, 0, HEAD_DIM ** -0.5).reshape(N, -1)
        assert not torch.allclose(wrong, attn_in[i], atol=1e-3)
    # the capture forward equals transformers' own Gemma-3 (sliding windows of 64 applied)
    x = torch.tensor([ids])
    with torch.no_grad():
        got = model(x, use_cache=False).logits
        eager = AutoModelForCausalLM.from_pretrained(
            gemma_dir, dtype=torch.float32, attn_implementation="eager").eval()
        want = eager(x, use_cache=False).logits
        # ... and the window matters at this length: full causal attention everywhere differs
        no_window = AutoModelForCausalLM.from_pretrained(
            gemma_dir, dtype=torch.float32, attn_implementation="eager",
            sliding_window=10 ** 6).eval()
        full = no_window(x, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(full, want, atol=1e-2)


def test_gemma_calibrate_reports_sliding_layers_and_anchored_recall(gemma_dir, tmp_path):
    out = tmp_path / "cal.json"
    rc = cal.main(["--model", gemma_dir, "--lengths", str(N), "--thetas", "-2", "2", "inf",
                   "--group-size", "128", "--pool-block", "16", "--sink-tokens", "16",
                   "--local-tokens", "16", "--samples", "32", "--corpus", "pydoc",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["layers"] == GLOBAL
    assert res["skipped_layers"] == [
        {"layer": i, "reason": "sliding window: stock attention", "sliding_window": WINDOW}
        for i in SLIDING]
    assert res["yarn"] is None
    assert res["command"].startswith("vllm-anchor calibrate --model")
    (r,) = res["results"]
    rows = {float(t): v for t, v in r["layers"].items()}
    assert sorted(rows) == [-2.0, 2.0, math.inf]
    for t, layer_rows in rows.items():
        assert [x["layer"] for x in layer_rows] == GLOBAL
        for x in layer_rows:
            assert x["scale"] == pytest.approx(SCALE)
            # (p5 may exceed the mean: a few very low rows pull the mean below it)
            assert 0.0 <= x["recall_min"] <= min(x["recall_p5"], x["recall_mean"]) + 1e-6
            assert max(x["recall_p5"], x["recall_mean"]) <= 1.0 + 1e-6
            assert 0.0 <= x["stripe_density"] <= 1.0
            assert len(x["per_query_head"]["recall_mean"]) == 4
            assert len(x["per_kv_head"]["recall_mean"]) == 1  # GQA 4:1
            assert x["sampled_queries"] == 2 * 32  # groups 1 and 2, 2 blocks of 16 each
    for x in rows[math.inf]:  # every candidate kept: dense attention
        assert x["recall_mean"] == pytest.approx(1.0, abs=1e-5)
        assert x["recall_min"] == pytest.approx(1.0, abs=1e-5)
        assert x["stripe_density"] == pytest.approx(1.0)
        assert x["rel_err"] < 1e-5
    for lo, hi in zip(rows[-2.0], rows[2.0]):
        assert lo["recall_mean"] <= hi["recall_mean"] + 1e-6
        assert lo["stripe_density"] <= hi["stripe_density"]
    assert min(x["recall_mean"] for x in rows[-2.0]) < 0.99  # a sparse theta drops real mass
    # the recommendation averages the anchored layers only
    for s in r["recommendation"]["summary"]:
        layer_rows = rows[s["theta"]]
        assert s["mean_recall"] == pytest.approx(
            sum(x["recall_mean"] for x in layer_rows) / len(GLOBAL))
        assert s["worst_layer"] in GLOBAL
    assert res["recommended_theta"] is not None
    assert (tmp_path / "cal.png").read_bytes()[:8] == PNG_MAGIC


def test_gemma_calibrate_sliding_only_subset_has_no_recommendation(gemma_dir, tmp_path):
    res = cal.calibrate(gemma_dir, [N], [8.0], cal.AnchorConfig(
        sink_tokens=16, local_tokens=16, group_size=128, pool_block=16), layers=[0, 2],
        samples_per_group=16, corpus="pydoc", log=lambda m: None)
    assert res["layers"] == [] and [x["layer"] for x in res["skipped_layers"]] == SLIDING
    assert res["recommended_theta"] is None
    assert "no anchored layer" in res["recommendation_note"]
    assert res["results"][0]["recommendation"]["summary"] == []


@pytest.mark.parametrize("window", [None, 5])
def test_sinks_attention_matches_transformers_gpt_oss_eager_path(window):
    """gpt-oss's learned sinks: one more softmax column per head that holds no value. transformers'
    SDPA path drops it, so calibrate computes such layers itself; it must equal the model's own
    eager attention (with its causal, optionally sliding, additive mask)."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 19, 8, generator=g)
    k, v = (torch.randn(1, 2, 19, 8, generator=g) for _ in range(2))
    module = torch.nn.Module()
    module.sinks = torch.nn.Parameter(torch.randn(4, generator=g) * 2)
    module.num_key_value_groups = 2
    i, j = torch.arange(19)[:, None], torch.arange(19)[None, :]
    allowed = (j <= i) & ((j > i - window) if window else True)
    mask = torch.zeros(19, 19).masked_fill(~allowed, float("-inf"))[None, None]
    with torch.no_grad():
        want, _ = eager_attention_forward(module, q, k, v, mask, 0.3)
        for chunk in (6, 64):
            out, _ = cal.sliding_window_attention(q, k, v, 0.3, window, chunk=chunk, sinks=module.sinks)
            assert torch.allclose(out, want, atol=1e-5), chunk
        plain, _ = cal.sliding_window_attention(q, k, v, 0.3, window)
    assert not torch.allclose(plain, want, atol=1e-3)  # the sinks matter at these values


def test_capture_runs_sink_and_wide_head_layers_and_skips_them():
    """Layers the backend leaves on stock attention are not measured: learned sinks (computed here
    with the sinks, which SDPA would drop) and head size > 256 (computed by SDPA as usual)."""
    store = {"captured": {}, "info": {}, "layers": None}
    capture = cal.make_capture(store)
    g = torch.Generator().manual_seed(3)
    sinks = torch.randn(2, generator=g)
    module = type("Attn", (), {"layer_idx": 1, "scaling": 0.25, "sinks": sinks})()
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        out, _ = capture(module, q, k, v, None, scaling=0.25, s_aux=sinks)
        want, _ = cal.sliding_window_attention(q, k, v, 0.25, None, sinks=sinks)
    assert torch.equal(out, want) and store["info"][1]["skipped"] == cal.SINKS_REASON
    wide = type("Attn", (), {"layer_idx": 2, "scaling": 0.05, "is_causal": True})()
    q, k, v = (torch.randn(1, 2, 8, 320, generator=g) for _ in range(3))
    capture(wide, q, k, v, None, scaling=0.05, is_causal=True)
    assert store["info"][2]["skipped"] == cal.HEAD_SIZE_REASON and store["info"][2]["head_dim"] == 320
    assert not store["captured"]
