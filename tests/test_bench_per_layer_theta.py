"""bench/per_layer_theta.py on hand-made per-layer measurements whose best pick is known."""
from __future__ import annotations

import pytest
from bench_module import load_bench

plt = load_bench("per_layer_theta")


def _row(tokens, layer, theta, ms, recall, fa3=10.0):
    return {"tokens": tokens, "layer": layer, "variant": "base", "theta": theta, "anchor_ms": ms,
            "fa3_ms": fa3, "recall_mean": recall, "recall_p5": recall - 0.1}


def _files():
    # layer 0: θ 12 buys little recall for its time; layer 1: θ 12 buys a lot cheaply
    rows = [_row(100, 0, 8, 1.0, 0.90), _row(100, 0, 12, 4.0, 0.92),
            _row(100, 1, 8, 1.0, 0.80), _row(100, 1, 12, 1.5, 0.98),
            _row(200, 0, 8, 2.0, 0.95), _row(200, 0, 12, 3.0, 0.96),
            _row(200, 1, 8, 2.0, 0.70), _row(200, 1, 12, 2.5, 0.99)]
    return [{"rows": rows}]


def test_the_fastest_pick_at_a_recall_target_raises_the_layer_where_recall_is_cheap():
    res = plt.analyse(_files(), [0.92])
    p = res["lengths"]["100"]["per_layer"]["0.92"]
    # θ 12 on layer 1 only: recall (0.90 + 0.98) / 2 = 0.94, time 2.5 ms against FA3's 20 ms
    assert p["pick"] == {"0": 8.0, "1": 12.0}
    assert p["speedup"] == pytest.approx(20.0 / 2.5) and p["recall"] == pytest.approx(0.94)
    uniform = res["lengths"]["100"]["uniform"]
    assert uniform["12.0"]["speedup"] == pytest.approx(20.0 / 5.5)
    # one θ for all reaches 0.92 between θ 8 (0.85, 10x) and θ 12 (0.95, 3.64x)
    assert p["uniform_interpolated"] == pytest.approx(10.0 + (20 / 5.5 - 10.0) * 0.7)


def test_a_target_that_needs_dense_layers_takes_them_and_an_impossible_one_is_left_out():
    res = plt.analyse(_files(), [0.99, 1.01])
    p = res["lengths"]["100"]["per_layer"]["0.99"]
    assert p["pick"]["0"] == "dense" and p["recall"] >= 0.99
    assert "1.01" not in res["lengths"]["100"]["per_layer"]


def test_a_table_picked_at_one_length_is_scored_at_the_other():
    res = plt.analyse(_files(), [0.92])
    (t,) = [t for t in res["transfer"] if t["picked_at"] == 100]
    assert t["scored_at"] == 200
    assert t["recall"] == pytest.approx((0.95 + 0.99) / 2) and t["speedup"] == pytest.approx(20.0 / 4.5)
    assert "| 100 | 0.92 | 200 |" in plt.markdown(res, ["x.json"])
