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
