"""Run the kernels with launch parameters from ``bench/tune.py`` results instead of the defaults.

``bench/kernels.py --tuned results/tune_*.json`` measures a sweep's winners in the same device
call that found them; once measured, they are copied into ``kernels/api.py:_default_launch_opts`` and
``kernels/plan.py`` (rows per program of each kernel, segment size), which is where production
reads them. Each file applies to its own head size; shapes with other head sizes keep the
defaults.
"""
from __future__ import annotations

import json

import torch

from vllm_anchor.kernels import api, plan
from vllm_anchor.kernels.launch_env import lay_over

_KNOBS = ("BLOCK_N", "num_warps", "num_stages")


def load(path: str) -> tuple[int, dict]:
    """``(head_dim, {"opts": launch options, "rows": ..., "segment_tokens": ...})`` of a sweep."""
    res = json.loads(open(path).read())
    best = res["best"]
    joint = best.get("joint", best)
    kinds = [k for k in ("anchor", "sparse") if k in joint]  # a sweep may cover one kernel only
    opts = {k: {n: joint[k][m] for n, m in zip(_KNOBS, ("block_n", "num_warps", "num_stages"))} for k in kinds}
    if "split_diagonal" in joint.get("anchor", {}):
        opts["anchor"]["SPLIT_DIAGONAL"] = joint["anchor"]["split_diagonal"]
    for k in kinds:
        if "rescale_tau" in joint[k]:
            opts[k]["RESCALE_TAU"] = joint[k]["rescale_tau"]
    # sweeps from before the sparse step had its own tiles chose one ``rows`` for both kernels
    tuned = {"opts": opts, "rows": best.get("rows"),
             "sparse_rows": best.get("sparse_rows", best.get("rows") if "sparse" in kinds else None)}
    if "stripe" in best:
        tuned["scan_block_n"] = best["stripe"]["block_n"]
        tuned["segment_tokens"] = best["stripe"]["segment_tokens"]
    return res["heads"][2], tuned


def apply(paths: list[str]) -> dict:
    """Patch the defaults for the head sizes of ``paths``; returns what was applied."""
    by_dim = dict(load(p) for p in paths)
    launch, rows, seg = api._launch_opts, plan.default_rows, plan.default_segment_tokens
    sparse_rows = plan.default_sparse_rows

    def launch_opts(head_dim, device):
        o = launch(head_dim, device)
        t = by_dim.get(head_dim)
        if t is None or device.type != "cuda":
            return o
        scan = {"scan": {"BLOCK_N": t["scan_block_n"]}} if "scan_block_n" in t else {}
        return lay_over(o, {**t["opts"], **scan})

    def tuned(head_dim, device, key):
        t = by_dim.get(head_dim) if torch.device(device).type == "cuda" else None
        return t.get(key) if t else None

    def default_rows(head_dim, device):
        return tuned(head_dim, device, "rows") or rows(head_dim, device)

    def default_sparse_rows(head_dim, device):
        return tuned(head_dim, device, "sparse_rows") or sparse_rows(head_dim, device)

    def default_segment_tokens(head_dim, device):
        return tuned(head_dim, device, "segment_tokens") or seg(head_dim, device)

    api._launch_opts = launch_opts
    plan.default_rows = default_rows
    plan.default_sparse_rows = default_sparse_rows
    plan.default_segment_tokens = default_segment_tokens
    return by_dim


def override(pairs: list[str]) -> dict:
    """Patch single launch options for every head size: ``["sparse.RESCALE_TAU=0", ...]``
    (``KERNEL.OPTION=VALUE``, KERNEL one of anchor / sparse / scan / tail). Used to time the previous
    default beside the current one in the same device call. Returns what was applied."""
    patch: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        kind, _, name = key.partition(".")
        if kind not in ("anchor", "sparse", "scan", "tail") or not name or not value:
            raise ValueError(f"--launch wants KERNEL.OPTION=VALUE with KERNEL anchor/sparse/scan/tail, got {pair!r}")
        patch.setdefault(kind, {})[name] = json.loads(value.lower() if value in ("True", "False") else value)
    launch = api._launch_opts

    def launch_opts(head_dim, device):
        return lay_over(launch(head_dim, device), patch)

    api._launch_opts = launch_opts
    return patch
