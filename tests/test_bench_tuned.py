"""bench/tuned.py: a tune sweep's winners reach the plan and the launches for their head size only."""
from __future__ import annotations

import json

import torch

from vllm_anchor.kernels import AnchorConfig, api, plan

from bench_module import load_bench

tuned = load_bench("tuned")


def _sweep(tmp_path, head_dim):
    def row(kind, **kw):
        return {"kernel": kind, "ms": 1.0, **kw}
    best = {"anchor": row("anchor", rows=256, block_n=64, num_warps=8, num_stages=3, split_diagonal=False),
            "sparse": row("sparse", rows=128, block_n=32, num_warps=4, num_stages=5),
            "stripe": row("stripe", segment_tokens=1024, block_n=64),
            "rows": 256}
    best["joint"] = {"anchor": best["anchor"], "sparse": row("sparse", rows=256, block_n=128, num_warps=8,
                                                              num_stages=2, rescale_tau=0.0)}
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"heads": [32, 8, head_dim], "best": best}))
    return path


def test_tuned_parameters_apply_to_their_head_size_on_cuda_only(tmp_path, monkeypatch):
    for name in ("_launch_opts",):
        monkeypatch.setattr(api, name, getattr(api, name))
    for name in ("default_rows", "default_sparse_rows", "default_segment_tokens"):
        monkeypatch.setattr(plan, name, getattr(plan, name))
    cuda = torch.device("cuda")
    before_64 = api._launch_opts(64, cuda)
    tuned.apply([str(_sweep(tmp_path, 128))])
    o = api._launch_opts(128, cuda)
    # the joint winners (one plan for both kernels), not each kernel's own fastest rows
    # options the sweep did not vary keep the defaults (the anchor's lazy rescale threshold)
    assert o["anchor"] == {"BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "SPLIT_DIAGONAL": False,
                           "RESCALE_TAU": api.RESCALE_TAU}
    assert o["sparse"] == {"BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "RESCALE_TAU": 0.0}
    assert o["scan"]["BLOCK_N"] == 64
    assert plan.default_rows(128, cuda) == 256 and plan.default_segment_tokens(128, cuda) == 1024
    # a sweep from before the kernels had separate tiles: its one rows value serves both
    assert plan.default_sparse_rows(128, cuda) == 256
    assert api._launch_opts(64, cuda) == before_64 and plan.default_rows(64, cuda) == 128
    assert plan.default_sparse_rows(64, cuda) == 128
    cpu = plan.plan_anchor_prefill([0, 40], [40], AnchorConfig(group_size=64, pool_block=16), 8, 2, 128, "cpu")
    assert cpu.rows == 16 and cpu.segment_tokens == 4096


def test_launch_overrides_patch_one_option_for_every_head_size(monkeypatch):
    monkeypatch.setattr(api, "_launch_opts", api._launch_opts)
    cuda = torch.device("cuda")
    before = {d: api._launch_opts(d, cuda) for d in (64, 128, 256)}
    assert tuned.override(["anchor.RESCALE_TAU=0", "sparse.SPLIT=False"]) == {
        "anchor": {"RESCALE_TAU": 0}, "sparse": {"SPLIT": False}}
    for d, o in before.items():
        after = api._launch_opts(d, cuda)
        assert after["anchor"] == {**o["anchor"], "RESCALE_TAU": 0}
        assert after["sparse"] == {**o["sparse"], "SPLIT": False} and after["scan"] == o["scan"]
    for bad in ("anchor", "stripe.BLOCK_N=64", "anchor.BLOCK_N="):
        try:
            tuned.override([bad])
        except ValueError as e:
            assert bad in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_sparse_only_sweep_sets_the_sparse_tiles_and_launch_only(tmp_path, monkeypatch):
    """bench/tune.py --kernels sparse: its winner sets the sparse step's rows and launch
    options; the anchor keeps its defaults (the plan cuts the two kernels' tiles separately)."""
    monkeypatch.setattr(api, "_launch_opts", api._launch_opts)
    for name in ("default_rows", "default_sparse_rows", "default_segment_tokens"):
        monkeypatch.setattr(plan, name, getattr(plan, name))
    cuda = torch.device("cuda")
    before = api._launch_opts(128, cuda)
    anchor_rows = plan.default_rows(128, cuda)
    win = {"kernel": "sparse", "rows": 64, "block_n": 64, "num_warps": 8, "num_stages": 3, "ms": 1.0}
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"heads": [32, 8, 128],
                                "best": {"sparse": win, "sparse_rows": 64, "joint": {"sparse": win}}}))
    tuned.apply([str(path)])
    o = api._launch_opts(128, cuda)
    assert o["anchor"] == before["anchor"] and o["scan"] == before["scan"]
    assert o["sparse"] == {**before["sparse"], "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    assert plan.default_sparse_rows(128, cuda) == 64 and plan.default_rows(128, cuda) == anchor_rows != 64
