"""bench/itl_ab.py: the step time it reads from vLLM's per-request stats, and its paired summary."""
import random
from types import SimpleNamespace

import pytest

from bench_module import load_bench

itl_ab = load_bench("itl_ab")


def _output(first, last, n):
    return SimpleNamespace(metrics=SimpleNamespace(first_token_ts=first, last_token_ts=last, num_generation_tokens=n))


def test_step_time_is_decode_time_over_steps_between_first_and_last_token():
    # 513 tokens: 512 decode steps after the first token (which the prefill produced)
    assert itl_ab.step_time_s(_output(10.0, 10.0 + 512 * 0.002, 513)) == pytest.approx(0.002)


def test_step_time_refuses_outputs_without_timestamps():
    with pytest.raises(RuntimeError, match="disable_log_stats"):
        itl_ab.step_time_s(SimpleNamespace(metrics=None))
    with pytest.raises(RuntimeError):
        itl_ab.step_time_s(_output(0.0, 0.0, 1))


def test_paired_summary_recovers_a_known_ratio_under_a_common_drift():
    rng = random.Random(1)
    drift = [1.0 + 0.4 * rng.random() for _ in range(10)]  # the machine moves every engine by up to 40%
    fa = [0.002 * d for d in drift]
    an = [0.002 * d * 1.02 * (1 + rng.uniform(-0.002, 0.002)) for d in drift]
    fa2 = [0.002 * d * (1 + rng.uniform(-0.002, 0.002)) for d in drift]
    labels = itl_ab.engine_labels(["FLASH_ATTN", "anchor", "FLASH_ATTN"])
    assert labels == ["FLASH_ATTN#0", "anchor#1", "FLASH_ATTN#2"]
    s = itl_ab.paired_summary(dict(zip(labels, (fa, an, fa2))), labels[0])
    anchor, control = s["vs_FLASH_ATTN#0"]["anchor#1"], s["vs_FLASH_ATTN#0"]["FLASH_ATTN#2"]
    assert anchor["pairs"] == 10 and "FLASH_ATTN#0" not in s["vs_FLASH_ATTN#0"]
    assert anchor["median_pair_ratio"] == pytest.approx(1.02, abs=0.003)
    assert control["median_pair_ratio"] == pytest.approx(1.0, abs=0.003)
    lo, hi = anchor["median_pair_ratio_ci95"]
    assert lo <= anchor["median_pair_ratio"] <= hi and hi - lo < 0.01
    assert s["median_step_ms"]["FLASH_ATTN#0"] == pytest.approx(1e3 * sorted(fa)[4] / 2 + 1e3 * sorted(fa)[5] / 2)


def test_prompt_and_decode_must_fit_the_model_length(capsys):
    with pytest.raises(SystemExit):
        itl_ab.sys.argv = ["itl_ab.py", "--max-model-len", "1024", "--prompt-lens", "1000", "--tokens", "512", "--out", "x"]
        itl_ab.main()
    assert "do not fit" in capsys.readouterr().err
