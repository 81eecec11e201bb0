"""bench/prefill_trace.py: the served YaRN set-ups, and the refusal to profile an engine core that
runs in another process (the profiler would then see no engine step, as the server's did)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
pt = load_bench("prefill_trace")


def test_yarn_overrides_match_the_served_setups():
    x4, x16 = pt.yarn_overrides(32768), pt.yarn_overrides(131072)
    assert x4["rope_parameters"]["factor"] == 4.0 and x4["max_position_embeddings"] == 32768
    assert x16["rope_parameters"]["factor"] == 16.0 and x16["max_position_embeddings"] == 131072
    assert x16["rope_parameters"]["original_max_position_embeddings"] == 8192


def test_engine_core_in_another_process_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    with pytest.raises(SystemExit):
        pt.main(["--out", "/tmp/x.json", "--trace", "/tmp/x.pt.trace.json.gz"])
    assert "VLLM_ENABLE_V1_MULTIPROCESSING=0" in capsys.readouterr().err


def test_engine_times_come_from_vllms_request_clocks():
    from types import SimpleNamespace
    m = SimpleNamespace(queued_ts=10.0, scheduled_ts=10.002, first_token_ts=10.122, first_token_latency=0.131)
    t = pt.engine_times_ms(m)
    assert t["queued_to_scheduled"] == pytest.approx(2.0)
    assert t["scheduled_to_first_token"] == pytest.approx(120.0)
    assert t["frontend_first_token_latency"] == pytest.approx(131.0)
    assert pt.engine_times_ms(None) == {} and pt.engine_times_ms(SimpleNamespace(first_token_ts=0.0)) == {}
