"""atrous._io: atomic writes leave the old or the new file, and give the new one the mode a plain open()
would (the user's umask; an existing file's own mode), not the temporary file's 0o600."""

import os
import stat
import subprocess
import sys

import pytest

from atrous._io import atomic_path, atomic_write_bytes, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_of_a_plain_open_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:  # the reference: what open() gives here
            f.write("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic.txt") == _mode(tmp_path / "plain.txt") == 0o666 & ~umask


def test_existing_file_keeps_its_mode_as_with_open(tmp_path):
    path = tmp_path / "shared.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed half-way")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_umask_of_another_process_is_read_not_assumed(tmp_path):
    """A fresh process with umask 027 (read through /proc on Linux): group read, no world access."""
    code = (
        "import os, sys; os.umask(0o027); from atrous._io import atomic_write_text; "
        "atomic_write_text(sys.argv[1], 'x')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.txt")], check=True)
    assert _mode(tmp_path / "f.txt") == 0o640
