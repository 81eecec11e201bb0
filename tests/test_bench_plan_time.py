"""bench/plan_time.py times both planners on the served shapes and records them."""
from __future__ import annotations

import json

from bench_module import load_bench


def test_plan_time_records_both_planners_for_each_case(tmp_path):
    out = tmp_path / "plan_time.json"
    assert load_bench("plan_time").main(["--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["cases"]) == 3
    for case in res["cases"].values():
        assert case["vectorized_ms"] > 0 and case["loop_ms"] > 0
