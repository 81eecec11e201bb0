"""bench/gpu/tree_size.sh: the pre-lease check that the install parts still fit a device call."""
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "bench" / "gpu" / "tree_size.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _repo(tmp_path, tree_bytes: int, part_bytes: int) -> pathlib.Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(".gpu/\n")
    with open(tmp_path / "results.bin", "wb") as f:  # untracked, not ignored: it travels
        f.truncate(tree_bytes)
    (tmp_path / ".gpu").mkdir()
    with open(tmp_path / ".gpu" / "part-00", "wb") as f:  # ignored: travels only as carry
        f.truncate(part_bytes)
    return tmp_path


def _run(repo):
    return subprocess.run(["bash", str(SCRIPT)], cwd=repo, capture_output=True, text=True)


def test_fits_when_the_tree_leaves_room_for_the_part(tmp_path):
    r = _run(_repo(tmp_path, 10 << 20, 48 << 20))
    assert r.returncode == 0, r.stderr
    assert "tree 10.0 MiB + largest install part 48.0 MiB = 58.0 of 64 MiB (6.0 MiB left)" in r.stdout


def test_refuses_when_the_tree_plus_the_part_is_over_64_mib(tmp_path):
    r = _run(_repo(tmp_path, 17 << 20, 48 << 20))
    assert r.returncode == 1 and "too large" in r.stderr
    # 24 MiB pieces would still fit: say how (bench/gpu/halve_bundle.sh), and what is left then
    assert "halve_bundle.sh" in r.stderr and "22 MiB left then" in r.stderr  # 64 - 17 - 24, less .gitignore, floored


def test_names_no_pieces_when_even_24_mib_ones_would_not_fit(tmp_path):
    r = _run(_repo(tmp_path, 41 << 20, 48 << 20))
    assert r.returncode == 1 and "too large even for 24 MiB pieces" in r.stderr


def test_halved_pieces_reassemble_into_the_parts_at_their_offsets(tmp_path):
    """bench/gpu/halve_bundle.sh: every part cut into 24 MiB pieces, and the printed dd commands
    (run here, one of them twice, as a repeated device call would) rebuild each part exactly."""
    import hashlib
    import os
    import re
    repo = _repo(tmp_path, 1 << 20, 0)
    data = {"part-00": os.urandom((48 << 20) - 5), "model-00": os.urandom(3 << 20)}
    for name, blob in data.items():
        (repo / ".gpu" / name).write_bytes(blob)
    script = SCRIPT.parent / "halve_bundle.sh"
    r = subprocess.run(["bash", str(script)], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (repo / ".gpu" / "half").iterdir()) == ["model-00.00", "part-00.00", "part-00.01"]
    cmds = [re.sub(r"/tmp/gpu", str(tmp_path / "dest"), line.split(": ", 1)[1].split(" && (bash")[0])
            for line in r.stdout.splitlines() if line.startswith("  carry")]
    assert len(cmds) == 3 and '".gpu/bin"' in r.stdout.splitlines()[-1]
    assert "install rc=" in r.stdout.splitlines()[-1]  # a failed install shows through the tail
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "part-00").write_bytes(os.urandom(50 << 20))  # a longer stale file from a failed try
    for cmd in cmds + cmds[1:2]:
        subprocess.run(["bash", "-c", cmd], cwd=repo, check=True)
    for name, blob in data.items():
        got = (tmp_path / "dest" / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest(), name


def test_a_tracked_file_deleted_in_the_working_tree_is_left_out(tmp_path):
    """Gzipping a tracked result leaves it deleted until the commit: the check must still run
    (it used to stop on stat's failure under pipefail, printing nothing)."""
    repo = _repo(tmp_path, 10 << 20, 48 << 20)
    (repo / "old.json").write_bytes(b"x" * (3 << 20))
    subprocess.run(["git", "-C", str(repo), "add", "old.json"], check=True)
    (repo / "old.json").unlink()
    r = _run(repo)
    assert r.returncode == 0, r.stderr
    assert "tree 10.0 MiB + largest install part 48.0 MiB" in r.stdout
