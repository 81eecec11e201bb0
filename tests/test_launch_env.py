"""ANCHOR_KERNELS_LAUNCH: launch options for a served model's worker processes (kernels/launch_env.py)."""
import os
import subprocess
import sys

import pytest
import torch

from vllm_anchor.kernels import api, launch_env, plan


def test_parse_reads_kernel_options_and_the_scan_segment():
    opts, seg = launch_env.parse(" scan.BLOCK_N=128,scan.num_stages=1  sparse.num_warps=4 scan.segment_tokens=1024 ")
    assert opts == {"scan": {"BLOCK_N": 128, "num_stages": 1}, "sparse": {"num_warps": 4}}
    assert seg == 1024
    assert launch_env.parse("") == ({}, None)


@pytest.mark.parametrize("text,why", [
    ("scan.BLOCK_N=100", "power of two"),
    ("scan.BLOCK_N=8", "power of two"),
    ("sparse.BLOCK_N=512", "from 16 to 256"),
    ("scan.num_warps=3", "one of 1, 2, 4, 8, 16"),
    ("anchor.num_stages=0", "between 1 and 8"),
    ("scan.segment_tokens=1000", "multiple of 16"),
    ("anchor.segment_tokens=1024", "anchor takes"),
    ("scan.block_n=64", "not 'block_n'"),
    ("decode.BLOCK_N=64", "KERNEL one of"),
    ("scan.BLOCK_N", "KERNEL.OPTION=VALUE"),
    ("scanBLOCK_N=64", "KERNEL.OPTION=VALUE"),
    ("scan.BLOCK_N=6x4", "not an integer"),
])
def test_parse_rejects_bad_entries_naming_the_variable_and_the_entry(text, why):
    with pytest.raises(ValueError, match=why) as e:
        launch_env.parse(f"scan.num_warps=4 {text}")
    assert str(e.value).startswith("ANCHOR_KERNELS_LAUNCH: ") and repr(text) in str(e.value)


def test_overrides_apply_on_the_gpu_only(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    before = {d: api._launch_opts(d, cuda) for d in (64, 128, 256)}
    cpu_before = api._launch_opts(64, cpu)
    monkeypatch.setattr(api, "LAUNCH_OVERRIDES", {"scan": {"BLOCK_N": 32, "num_stages": 4}, "tail": {"num_warps": 2}})
    for d, opts in before.items():
        got = api._launch_opts(d, cuda)
        assert got["scan"] == {**opts["scan"], "BLOCK_N": 32, "num_stages": 4}
        assert got["tail"] == {**opts["tail"], "num_warps": 2}
        assert got["anchor"] == opts["anchor"] and got["sparse"] == opts["sparse"]
    assert api._launch_opts(64, cpu) == cpu_before  # the interpreter keeps its small blocks
    assert plan.default_segment_tokens(64, "cuda") == 2048
    monkeypatch.setattr(plan, "SEGMENT_TOKENS_OVERRIDE", 512)
    assert plan.default_segment_tokens(64, "cuda") == plan.default_segment_tokens(128, "cuda") == 512
    assert plan.default_segment_tokens(64, "cpu") == 2048


def _import_with(value):
    env = {**os.environ, "ANCHOR_KERNELS_LAUNCH": value}
    code = ("from vllm_anchor.kernels import launch_env, api, plan; "
            "print(api.LAUNCH_OVERRIDES, plan.SEGMENT_TOKENS_OVERRIDE, repr(launch_env.describe()))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_variable_is_read_at_import_and_a_bad_one_stops_it():
    ok = _import_with("scan.BLOCK_N=128 scan.segment_tokens=1024")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == ("{'scan': {'BLOCK_N': 128}} 1024 "
                                 "'scan.BLOCK_N=128 scan.segment_tokens=1024'")
    bad = _import_with("scan.BLOCK_N=96")
    assert bad.returncode != 0
    assert "ANCHOR_KERNELS_LAUNCH: 'scan.BLOCK_N=96': scan.BLOCK_N must be a power of two from 16 to 256" in bad.stderr


def test_launcher_checks_the_variable_before_starting_vllm():
    from vllm_anchor.serving.launcher import LaunchError, check_kernel_launch
    check_kernel_launch(None)
    check_kernel_launch("scan.BLOCK_N=128 scan.num_stages=2")
    with pytest.raises(LaunchError, match=r"kernel launch options: ANCHOR_KERNELS_LAUNCH: 'tail.num_warps=5'"):
        check_kernel_launch("scan.BLOCK_N=128 tail.num_warps=5")


def test_plugin_registration_stops_on_a_bad_variable():
    """vLLM calls every general plugin uncaught: a bad value stops the process at start-up."""
    env = {**os.environ, "ANCHOR_KERNELS_LAUNCH": "sparse.num_stages=9"}
    code = "from vllm_anchor.plugin import register; register()"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "ANCHOR_KERNELS_LAUNCH: 'sparse.num_stages=9': sparse.num_stages must be between 1 and 8" in run.stderr


def test_ray_workers_get_the_kernel_switches(monkeypatch):
    """vLLM copies only its own prefixes to Ray workers; the plugin adds ANCHOR_KERNELS_ to the
    additive list, keeping what the operator put there, and only once."""
    from vllm.ray.ray_env import get_env_vars_to_copy

    from vllm_anchor.plugin import RAY_PREFIXES_ENV, _ray_copies_kernel_switches
    monkeypatch.setenv("ANCHOR_KERNELS_LAUNCH", "scan.BLOCK_N=128")
    monkeypatch.setenv(RAY_PREFIXES_ENV, "MY_")
    assert "ANCHOR_KERNELS_LAUNCH" not in get_env_vars_to_copy()
    _ray_copies_kernel_switches()
    _ray_copies_kernel_switches()
    assert os.environ[RAY_PREFIXES_ENV] == "MY_,ANCHOR_KERNELS_"
    assert "ANCHOR_KERNELS_LAUNCH" in get_env_vars_to_copy()
    monkeypatch.delenv(RAY_PREFIXES_ENV)
    _ray_copies_kernel_switches()
    assert os.environ[RAY_PREFIXES_ENV] == "ANCHOR_KERNELS_"
