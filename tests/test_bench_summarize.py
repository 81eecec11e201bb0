"""bench/summarize.py: the score/TTFT table and the per-layer tables come out of the JSON right."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]
summarize = load_bench("summarize")


def _longctx(tmp_path, a_scores, s_scores, lengths):
    rows = lambda scores: [{"length": n, "score": x} for n, xs in zip(lengths, scores) for x in xs]  # noqa: E731
    mean = lambda scores: sum(map(sum, scores)) / sum(map(len, scores))  # noqa: E731
    d = {"lengths": lengths,
         "runs": [{"rows": rows(a_scores), "summary": {"overall": {"mean": mean(a_scores)}}},
                  {"rows": rows(s_scores), "summary": {"overall": {"mean": mean(s_scores)}}}],
         "diff": {"overall": {"mean": mean(a_scores) - mean(s_scores), "ci95": [-0.1, 0.05]}}}
    path = tmp_path / "lc.json"
    path.write_text(json.dumps(d))
    return path


def test_evals_summary_pairs_scores_and_ttft_by_length(tmp_path):
    lc = _longctx(tmp_path, [[1, 1, 0, 0], [1, 0, 0, 0]], [[1, 1, 1, 0], [1, 0, 0, 0]], [8000, 16000])
    tt = tmp_path / "tt.json"
    tt.write_text(json.dumps({"runs": {
        "anchor": {"results": [{"input_len": 8192, "mean_ttft_ms": 50.0}, {"input_len": 16384, "mean_ttft_ms": 60.0}]},
        "stock": {"results": [{"input_len": 8192, "mean_ttft_ms": 40.0}, {"input_len": 16384, "mean_ttft_ms": 80.0}]}}}))
    lines = summarize.evals_summary([("x", str(lc), str(tt))])
    row8 = next(r for r in lines if r.startswith("| x | 8000 |")).split("|")
    row16 = next(r for r in lines if r.startswith("| x | 16000 |")).split("|")
    assert row8[3].strip().startswith("0.500") and row8[4].strip().startswith("0.750")
    assert row8[5].strip().startswith("-25.0")  # paired difference, in points
    assert row8[8].strip() == "1.25" and row16[8].strip() == "0.75"  # TTFT of the nearest length
    assert row16[5].strip().startswith("+0.0")
    overall = next(r for r in lines if "**all**" in r)
    assert "-12.5 [-10.0, +5.0]" in overall


def test_layer_tables_from_both_sources():
    lines = summarize.layers_from_kernel_bench(json.loads((ROOT / "bench/results/kernels_smollm2_h100.json").read_text()))
    assert sum(1 for x in lines if x.startswith("| 29 |")) == 3  # last layer, at each of 3 lengths
    lines = summarize.layers_from_calibrate(json.loads((ROOT / "bench/results/calibrate_gemma3_270m_cpu.json").read_text()))
    assert [x.split("|")[1].strip() for x in lines if x.startswith("| 5 |") or x.startswith("| 17 |")][:2] == ["5", "17"]
    assert any("sliding window" in x for x in lines)


def _point(theta, recall, speedup, variant="base"):
    return {"tokens": 8, "variant": variant, "theta": theta, "layers": 2, "speedup_all_layers": speedup,
            "fa3_ms_all_layers": 10.0, "recall_mean": recall, "recall_p5_mean": recall - 0.1,
            "worst_layer": 1, "worst_layer_recall_mean": recall - 0.05, "attended_fraction_mean": 0.2}


def test_speedup_at_recall_interpolates_between_the_thetas_around_the_target():
    pts = [_point(10, 0.96, 2.0), _point(8, 0.94, 3.0), _point(12, 0.99, 1.5)]  # any order
    theta, speed = summarize.speedup_at_recall(pts, 0.95)
    assert theta == pytest.approx(9.0) and speed == pytest.approx(2.5)
    assert summarize.speedup_at_recall(pts, 0.99) == (12, 1.5)  # reached exactly at a measured theta
    assert summarize.speedup_at_recall(pts, 0.90) == (8, 3.0)  # already at the smallest theta
    assert summarize.speedup_at_recall(pts, 0.995) is None
    # the same on the p5 column (recall - 0.1 here): 0.85 is reached halfway between 8 and 10
    assert summarize.speedup_at_recall(pts, 0.85, "recall_p5_mean") == pytest.approx((9.0, 2.5))


def test_sweep_tables_list_every_variant_and_its_frontier():
    d = {"meta": {"command": "bench/kernels.py smollm2 --sweep base group_size=1024", "gpu": "H100"},
         "summary": [_point(8, 0.94, 3.0), _point(10, 0.96, 2.0),
                     _point(8, 0.93, 3.4, "group_size=1024"), _point(10, 0.97, 2.4, "group_size=1024")]}
    text = "\n".join(summarize.sweep_tables(d, 0.95, 0.86))
    assert "| group_size=1024 | 8 | 3.40× | 0.930 |" in text
    assert "| base | 9.00 | 2.50× |" in text and "| group_size=1024 | 9.00 | 2.90× |" in text
    assert "| base | 10.00 | 2.00× |" in text.split("p5 recall reaches 0.86")[1]  # p5 0.86 at theta 10
    assert "not reached" in "\n".join(summarize.sweep_tables(d, 0.99, 0.86))


def test_gzipped_results_regenerate_their_committed_summary():
    """Large results are committed gzipped; the summary made from them must still come out the same."""
    path = "bench/results/config_sweep_h100/sweep_group.json.gz"
    lines = summarize.sweep_tables(summarize.load_json(str(ROOT / path)), 0.95, 0.93)
    committed = (ROOT / "bench/results/config_sweep_h100/summary.md").read_text().splitlines()
    rows = [x for x in lines if x.startswith("| base |") or x.startswith("| group_size=")]
    assert len(rows) >= 24 and all(r in committed for r in rows)


def test_sweep_tables_add_the_guarded_table_when_the_summary_has_it():
    guarded = {"guard": 0.5, "dense_layers_guarded": [0, 3], "speedup_guarded": 1.8,
               "recall_mean_guarded": 0.975, "recall_p5_mean_guarded": 0.951, "worst_layer_recall_guarded": 0.9}
    d = {"meta": {"command": "bench/kernels.py smollm2", "gpu": "H100"},
         "summary": [{**_point(8, 0.94, 3.0), **guarded}, {**_point(10, 0.96, 2.0), **guarded,
                                                         "dense_layers_guarded": []}]}
    text = "\n".join(summarize.sweep_tables(d, 0.95, 0.86))
    assert "layers above stripe density 0.5 run FA3" in text
    assert "| base | 8 | 1.80× | 0.975 | 0.951 | 0.900 | 2: 0, 3 |" in text
    assert "| base | 10 | 1.80× | 0.975 | 0.951 | 0.900 | 0 |" in text
    # older result files have no guarded figures: no such table
    old = {"meta": d["meta"], "summary": [_point(8, 0.94, 3.0)]}
    assert "density guard" not in "\n".join(summarize.sweep_tables(old, 0.95, 0.86))


def test_sweep_tables_show_the_tail_recall_when_every_row_has_it():
    tail = {"tail_recall_mean": 0.991, "tail_recall_p5_mean": 0.962, "tail_worst_layer": 17,
            "tail_worst_layer_recall_mean": 0.9}
    d = {"meta": {"command": "bench/kernels.py smollm2", "gpu": "H100"},
         "summary": [{**_point(8, 0.94, 3.0), **tail}, {**_point(10, 0.96, 2.0), **tail}]}
    text = "\n".join(summarize.sweep_tables(d, 0.95, 0.86))
    assert "tail recall mean / p5 / worst layer" in text and "| 0.991 / 0.962 / 17: 0.900 |" in text
    d["summary"][1] = _point(10, 0.96, 2.0)  # one row without: no column
    assert "tail recall" not in "\n".join(summarize.sweep_tables(d, 0.95, 0.86))
