"""bench/replot.py: the plots of committed results, drawn again from their JSONs (bench/results/
keeps no PNG; each was checked pixel for pixel against the file it replaced before stop 24 removed them)."""
import gzip
import json
import struct
from pathlib import Path

import pytest
from bench_module import load_bench

replot = load_bench("replot")
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


@pytest.mark.parametrize("name, kind", [
    ("lease22_h100/smoke/smoke.json", "loadtest"),  # one server's run
    ("lease29_h100/revalidate_T/ttft_smollm2_128k_defaults_vs_stock.json.gz", "loadtest"),  # an A/B
    ("lease23_h100/suite128k/longctx_smollm2_default_131000_vs_stock.json.gz", "longctx"),
    ("calibrate_gemma3_270m_cpu.json", "calibrate"),
])
def test_committed_results_are_drawn_again(tmp_path, name, kind):
    path = RESULTS / name
    assert replot.kind_of(replot.load(path)) == kind
    out = replot.replot(path, tmp_path)
    assert out == tmp_path / (path.name.removesuffix(".gz").removesuffix(".json") + ".png")
    width, height = png_size(out)
    assert width > 400 and height > 300


def test_an_ab_comparison_gets_its_speedup_panel(tmp_path):
    """plot_ttft draws a second panel (the first label's speed-up) only for two or more servers."""
    single = png_size(replot.replot(RESULTS / "lease22_h100/smoke/smoke.json", tmp_path / "a"))
    ab = png_size(replot.replot(RESULTS / "lease29_h100/revalidate_T/ttft_smollm2_128k_defaults_vs_stock.json.gz",
                                tmp_path / "b"))
    assert ab[0] > 1.5 * single[0] and ab[1] == single[1]


def test_what_it_cannot_draw_is_named_and_the_others_still_drawn(tmp_path, capsys):
    other = tmp_path / "other.json.gz"
    with gzip.open(other, "wt") as f:
        json.dump({"gpu": "H100", "runs": {"x": {"ttft": 1.0}}}, f)
    good = RESULTS / "lease22_h100/smoke/smoke.json"
    assert replot.main([str(other), str(good), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "other.json.gz: ValueError" in err and "['gpu', 'runs']" in err
    assert (tmp_path / "out" / "smoke.png").exists()


def test_no_png_is_tracked_under_bench_results():
    """The device call's 64 MiB carries the tree; PNGs there are ignored by git (.gitignore)."""
    import subprocess
    root = RESULTS.parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "bench/results/*.png", "bench/results/**/*.png"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked == []
    ignored = subprocess.run(["git", "check-ignore", "-q", "bench/results/x/y.png"], cwd=root)
    assert ignored.returncode == 0
