"""Draw the plot of a saved result JSON again: the load test's TTFT panels (``vllm-anchor bench``,
``bench/gpu/*`` TTFT and ITL runs), the long-context suite's scores (``vllm_anchor.evals``) or
a calibration's recall heat map (``vllm-anchor calibrate``).

``bench/results/`` keeps the JSONs, not their PNGs: every device call carries the whole tree
beside one 48 MiB part of the offline install, inside 64 MiB, and the 57 plots were 3.4 MiB of the
16 MiB that leaves (stop 24 removed them; they are in git history up to f08e9a5). Each PNG is a
function of its JSON, drawn by the same code that drew it first, so nothing is lost.
PNGs under ``bench/results/`` are ignored by git: a plot drawn here, or one a GPU job brings back,
neither travels to the device nor lands in a commit.

  python bench/replot.py bench/results/lease29_h100/revalidate_T/ttft_smollm2_128k_defaults_vs_stock.json.gz
  python bench/replot.py FILE.json [FILE.json.gz ...] [--out-dir DIR]   (default: beside each JSON)
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def kind_of(result: dict) -> str:
    """``loadtest`` (one run or an A/B with ``runs``), ``longctx`` (the suite), ``calibrate``, else
    ValueError."""
    def load_rows(run) -> bool:  # a load-test run: its results are rows per prompt length
        rows = run.get("results") if isinstance(run, dict) else None
        return isinstance(rows, list) and all(isinstance(x, dict) and "input_len" in x for x in rows)
    if "thetas" in result and "recommended_theta" in result:
        return "calibrate"
    runs = result.get("runs")
    if load_rows(result) or (isinstance(runs, dict) and runs and all(map(load_rows, runs.values()))):
        return "loadtest"
    if "tasks" in result and isinstance(runs, list):
        return "longctx"
    raise ValueError("not a load-test result (results, or runs with results), a long-context suite "
                     "result (tasks and a list of runs) or a calibration (thetas, recommended_theta); "
                     f"its keys: {sorted(result)[:12]}")


def png_path(path: Path, out_dir: Path | None) -> Path:
    stem = path.name.removesuffix(".gz").removesuffix(".json")
    return (out_dir or path.parent) / f"{stem}.png"


def replot(path: Path, out_dir: Path | None = None) -> Path:
    """The PNG of the result at ``path``, drawn as when it was first written; returns its path."""
    result = load(path)
    out = png_path(path, out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = kind_of(result)
    if kind == "loadtest":
        from vllm_anchor.serving.loadtest import plot_result
        return plot_result(result, out)
    if kind == "longctx":
        from vllm_anchor.evals.harness import plot
        plot(result, str(out))
        return out
    from vllm_anchor.calibrate import plot_result
    if not plot_result(result, str(out)):
        raise ValueError("the calibration anchored no layer: no heat map to draw")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="result JSONs (.json or .json.gz)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the PNGs go (default: beside each JSON)")
    a = ap.parse_args(argv)
    failed = 0
    for path in a.files:
        try:
            print(f"{path} -> {replot(path, a.out_dir)}")
        except (OSError, ValueError, KeyError) as e:
            failed += 1
            print(f"{path}: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
