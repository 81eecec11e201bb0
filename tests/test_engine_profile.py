"""The engine-step profiler (vllm_anchor.engine_profile): which steps it records, what it writes,
and how its environment variables are checked. CPU only; the GPU host runs it under vLLM."""
from __future__ import annotations

import gc
import json
import os
import threading

import pytest
import torch

from vllm_anchor import engine_profile as ep
from vllm_anchor.settings import load_settings


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _report(tmp_path) -> dict:
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json") and not p.endswith(".trace.json")]
    with open(tmp_path / path) as f:
        return json.load(f)


def test_parse_steps_accepts_first_and_count_and_rejects_the_rest():
    assert ep.parse_steps("4:2") == (4, 2)
    assert ep.parse_steps(" 3 ") == (3, 1)
    for bad in ("0:1", "2:0", "a:1", "", "1:x", "-1"):
        with pytest.raises(ValueError, match=ep.STEPS_ENV):
            ep.parse_steps(bad)


def test_from_env_is_off_without_a_folder_and_names_a_bad_variable(tmp_path):
    assert ep.from_env({}) is None
    prof = ep.from_env({ep.DIR_ENV: str(tmp_path), ep.STEPS_ENV: "5:2", ep.MIN_TOKENS_ENV: "4096",
                        ep.TORCH_ENV: "0"})
    assert (prof.first, prof.count, prof.min_tokens, prof.torch_trace) == (5, 2, 4096, False)
    with pytest.raises(ValueError, match=ep.MIN_TOKENS_ENV):
        ep.from_env({ep.DIR_ENV: str(tmp_path), ep.MIN_TOKENS_ENV: "0"})
    with pytest.raises(ValueError, match=ep.STEPS_ENV):
        ep.from_env({ep.DIR_ENV: str(tmp_path), ep.STEPS_ENV: "x"})
    with pytest.raises(ValueError, match=ep.DIR_ENV):
        ep.from_env({ep.DIR_ENV: str(tmp_path / "missing")})
    with pytest.raises(ValueError, match=ep.TORCH_ENV):  # was taken as "on"
        ep.from_env({ep.DIR_ENV: str(tmp_path), ep.TORCH_ENV: "abc"})
    assert ep.from_env({ep.DIR_ENV: str(tmp_path), ep.TORCH_ENV: " Off "}).torch_trace is False
    assert ep.from_env({ep.DIR_ENV: str(tmp_path), ep.TORCH_ENV: "yes"}).torch_trace is True


def test_profile_variables_are_not_rejected_as_unknown_settings(tmp_path):
    env = {ep.DIR_ENV: str(tmp_path), ep.STEPS_ENV: "2:1", ep.MIN_TOKENS_ENV: "10", ep.TORCH_ENV: "0"}
    assert load_settings({}, env).kernel.theta == load_settings({}, {}).kernel.theta
    with pytest.raises(ValueError, match="VLLM_ANCHOR_PROFILE_NOPE"):
        load_settings({}, {**env, "VLLM_ANCHOR_PROFILE_NOPE": "1"})


def test_window_starts_at_the_first_th_long_step_and_ends_when_the_next_step_begins(tmp_path):
    clock = FakeClock()
    prof = ep.StepProfiler(str(tmp_path), first=2, count=1, min_tokens=1024, torch_trace=False, clock=clock)
    builder, other = object(), object()
    for tokens in (10, 2000, 5):  # a decode, long step 1, a decode: nothing recorded yet
        prof.on_build(builder, tokens)
        clock.t += 1
    assert not prof.recording and prof.long_steps == 1
    prof.on_build(builder, 4096)  # long step 2: the window opens
    assert prof.recording
    prof.on_build(other, 4096)  # a second KV-cache group's build of the same step: not counted
    gc.collect()  # inside the window: recorded with its generation
    clock.t += 0.25
    prof.on_build(builder, 1)  # the next step begins: the window closes
    assert prof.done and not prof.recording
    rep = _report(tmp_path)
    assert rep["builds_ms_tokens"] == [[0.0, 4096]]
    assert rep["window_ms"] == pytest.approx(250.0)
    assert rep["first_long_step"] == 2 and rep["torch_trace"] is False
    assert any(g["generation"] == 2 for g in rep["gc"])
    main = threading.main_thread().native_id
    assert main in {t["tid"] for t in rep["threads_cpu_ms"]}
    assert all(t["cpu_ms"] >= 0 for t in rep["threads_cpu_ms"])
    prof.on_build(builder, 4096)  # one window per process
    assert len(prof.written) == 1


def test_a_window_of_two_long_steps_keeps_the_short_ones_between_them(tmp_path):
    clock = FakeClock()
    prof = ep.StepProfiler(str(tmp_path), first=1, count=2, min_tokens=100, torch_trace=False, clock=clock)
    b = object()
    for tokens in (500, 1, 1, 300, 1):
        prof.on_build(b, tokens)
        clock.t += 0.001
    # long, decode, decode, long (the window's second), then a decode ends it
    assert prof.done
    assert [t for _, t in _report(tmp_path)["builds_ms_tokens"]] == [500, 1, 1, 300]


def test_torch_trace_is_written_gzipped_and_readable_by_trace_gaps(tmp_path):
    from bench_module import load_bench
    trace_gaps = load_bench("trace_gaps")
    prof = ep.StepProfiler(str(tmp_path), first=1, count=1, min_tokens=1, torch_trace=True)
    b = object()
    prof.on_build(b, 8)
    x = torch.randn(64, 64)
    (x @ x).sum()
    prof.on_build(b, 8)
    traces = [p for p in prof.written if p.endswith(".pt.trace.json.gz")]
    assert len(traces) == 1 and not os.path.exists(traces[0][:-3])
    names = {e["name"] for e in trace_gaps.load_events(traces[0])}
    assert "aten::mm" in names or "aten::matmul" in names
    assert _report(tmp_path)["torch_trace"] is True


def test_the_hook_is_a_no_op_without_the_variable(monkeypatch):
    monkeypatch.delenv(ep.DIR_ENV, raising=False)
    monkeypatch.setattr(ep, "_LOADED", False)
    monkeypatch.setattr(ep, "_PROFILER", None)
    ep.on_build(object(), 10 ** 6)
    assert ep._LOADED and ep._PROFILER is None
