"""bench/guard_key_summary.py: per-length windows of the worker stats and the TTFT ratios."""
import json

import pytest

from bench_module import load_bench

gks = load_bench("guard_key_summary")


def _stats(folder, layers):
    folder.mkdir(parents=True)
    (folder / "worker-1.json").write_text(json.dumps(layers))


def _ttft(path, n, anchor_ms, stock_ms):
    path.write_text(json.dumps({"comparison": [{
        "input_len": n, "anchor_keyed_mean_ttft_ms": anchor_ms, "anchor_keyed_completed": 5,
        "anchor_keyed_p99_ttft_ms": anchor_ms, "stock_mean_ttft_ms": stock_ms, "stock_completed": 5}]}))


def test_the_long_window_is_the_difference_of_the_two_snapshots(tmp_path):
    _stats(tmp_path / "stats_keyed_32K", {
        "l0": {"calls": 6, "fallbacks": 4, "measured": 2, "density_sum": 1.4, "last_density": 0.7},
        "l1": {"calls": 6, "fallbacks": 0, "measured": 6, "density_sum": 1.8, "last_density": 0.3}})
    _stats(tmp_path / "stats_keyed_131000", {
        "l0": {"calls": 22, "fallbacks": 4, "measured": 18, "density_sum": 5.4, "last_density": 0.2},
        "l1": {"calls": 22, "fallbacks": 0, "measured": 22, "density_sum": 6.6, "last_density": 0.3}})
    _ttft(tmp_path / "ttft_keyed_32K_vs_stock.json", 32768, 150.0, 148.0)
    _ttft(tmp_path / "ttft_keyed_131000_vs_stock.json", 131000, 750.0, 1500.0)
    s = gks.summarize(str(tmp_path))
    assert list(s) == ["keyed"]  # no unkeyed server's files: no unkeyed entry
    short, long = s["keyed"]["32K"], s["keyed"]["131000"]
    assert (short["guard"]["calls"], short["guard"]["fallbacks"], short["guard"]["measured"]) == (12, 4, 8)
    assert short["guard"]["layer_density"] == pytest.approx({"l0": 0.7, "l1": 0.3})
    assert short["guard"]["layers_mean_density_above_0_5"] == 1
    assert (long["guard"]["calls"], long["guard"]["fallbacks"], long["guard"]["measured"]) == (32, 0, 32)
    assert long["guard"]["layer_density"] == pytest.approx({"l0": 0.25, "l1": 0.3})
    assert long["ttft"]["ratio"] == pytest.approx(0.5) and short["ttft"]["anchor_ms"] == 150.0


def test_layers_are_listed_in_model_order():
    names = [f"model.layers.{i}.self_attn.attn" for i in (10, 2, 0, 1)]
    assert sorted(names, key=gks.layer_order) == [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 2, 10)]
