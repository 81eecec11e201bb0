"""bench/trace_gaps.py: GPU busy/idle time, the idle gaps and the host calls inside them, per-step
busy time and runtime totals, on a hand-made profiler trace whose answers are known."""
from __future__ import annotations

import gzip
import json

import pytest

from bench_module import load_bench

tg = load_bench("trace_gaps")


def ev(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1}


def trace():
    # two steps; kernels at [0, 1000) and [900, 2000) overlap, then a 3 ms hole the host spends
    # in a stream synchronize, then [5000, 6000) and, after a 0.1 ms hole, [6100, 7000)
    return [ev("kernel", "k1", 0, 1000), ev("kernel", "k2", 900, 1100), ev("gpu_memcpy", "Memcpy HtoD", 5000, 1000),
            ev("kernel", "k3", 6100, 900),
            ev("cuda_runtime", "cudaStreamSynchronize", 1900, 3000), ev("cuda_runtime", "cudaLaunchKernel", 4950, 20),
            ev("cuda_runtime", "cudaLaunchKernel", 6050, 30), ev("cpu_op", "aten::copy_", 2500, 100),
            ev("user_annotation", "execute_context_1(16384)", 0, 2500),
            ev("user_annotation", "execute_context_1(16384)", 2500, 4500),
            {"ph": "i", "cat": "kernel", "name": "instant", "ts": 10}]


def test_gpu_busy_idle_and_the_gap_with_its_host_call(tmp_path):
    path = tmp_path / "t.pt.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": trace()}, f)
    res = tg.summarize(tg.load_events(path), min_gap_us=200.0)
    assert res["gpu"]["window_ms"] == pytest.approx(7.0)
    assert res["gpu"]["busy_ms"] == pytest.approx(2.0 + 1.0 + 0.9)
    assert res["gpu"]["idle_ms"] == pytest.approx(3.0 + 0.1)
    assert res["gpu"]["gaps_over_min"] == 1 and res["gpu"]["idle_in_gaps_over_min_ms"] == pytest.approx(3.0)
    gap = res["gaps"][0]
    assert gap["start_ms"] == pytest.approx(2.0) and gap["idle_ms"] == pytest.approx(3.0)
    assert gap["host"][0]["event"] == "cuda_runtime: cudaStreamSynchronize"
    assert gap["host"][0]["overlap_ms"] == pytest.approx(2.9)
    assert [s["gpu_busy_ms"] for s in res["steps"]] == pytest.approx([2.0, 1.9])
    launches = res["runtime"]["cudaLaunchKernel"]
    assert launches == {"count": 2, "total_ms": pytest.approx(0.05), "max_ms": pytest.approx(0.03)}
    assert list(res["runtime"])[0] == "cudaStreamSynchronize"
    # GPU time per kernel name, longest first; copies are not kernels
    assert res["kernels"] == {"k2": {"count": 1, "total_ms": pytest.approx(1.1), "max_ms": pytest.approx(1.1)},
                              "k1": {"count": 1, "total_ms": pytest.approx(1.0), "max_ms": pytest.approx(1.0)},
                              "k3": {"count": 1, "total_ms": pytest.approx(0.9), "max_ms": pytest.approx(0.9)}}
    assert list(res["kernels"]) == ["k2", "k1", "k3"]
    assert list(tg.summarize(tg.load_events(path), top_kernels=1)["kernels"]) == ["k2"]


def test_plain_json_list_and_no_gpu_events(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace()))
    assert tg.summarize(tg.load_events(path))["gpu"]["busy_ms"] == pytest.approx(3.9)
    with pytest.raises(ValueError, match="no GPU events"):
        tg.summarize([ev("cpu_op", "x", 0, 1)])


def test_cli_writes_the_summary(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": trace()}))
    tg.main([str(path), "--out", str(tmp_path / "s.json")])
    assert json.loads((tmp_path / "s.json").read_text())["gpu"]["gaps_over_min"] == 1
    assert "cudaStreamSynchronize" in capsys.readouterr().out


def test_op_host_breakdown_charges_nested_host_events_to_each_call():
    events = [ev("cpu_op", "attn", 0, 1000), ev("cpu_op", "attn", 2000, 600),
              ev("cpu_op", "aten::sum", 100, 200), ev("cuda_driver", "cuLaunchKernelEx", 400, 50),
              ev("cpu_op", "aten::sum", 2100, 100), ev("cpu_op", "aten::sum", 1500, 100),  # between calls
              ev("kernel", "k", 0, 5000)]
    res = tg.op_host_breakdown(events, "attn")
    assert res["calls"] == 2 and res["host_ms_per_call"] == pytest.approx(0.8)
    inside = {r["event"]: r for r in res["inside_per_call"]}
    assert inside["cpu_op: aten::sum"] == {"event": "cpu_op: aten::sum", "count": 1.0, "us": 150.0}
    assert inside["cuda_driver: cuLaunchKernelEx"]["us"] == pytest.approx(25.0)
    skipped = tg.op_host_breakdown(events, "attn", skip=1)
    assert skipped["calls"] == 1 and skipped["host_ms_per_call"] == pytest.approx(0.6)
    assert tg.op_host_breakdown(events, "nothing") == {"op": "nothing", "calls": 0}
