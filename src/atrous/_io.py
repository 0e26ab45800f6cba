"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A reader (or a run killed half-way) therefore sees either the old complete file or the new complete one,
never a truncated file where a good one was. The file gets the mode a plain `open(path, "w")` would give:
an existing file's mode, else 0o666 minus the user's umask (not the 0o600 of the temporary file).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_mode(target: Path) -> int:
    """The permission bits `open(target, "w")` leaves: the existing file's, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), _open_mode(target))
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _probe_folder(folder: Path) -> str | None:
    """Why a file cannot be created in the existing path `folder` (None: it can), by creating one."""
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".atrous-probe.", dir=folder)
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e)
    os.close(fd)
    os.unlink(name)
    return None


def check_writable(path: str | os.PathLike, *, what: str, folder: bool = False) -> None:
    """Raise `AtrousError` (one line, naming `what` and `path`) unless a file can be written at `path`, or
    (`folder=True`) files inside the folder `path`, before any expensive work. Nothing is left behind: a
    missing folder is not created, its nearest existing parent is probed instead (by creating and removing
    a file, the one test that also holds for root and for read-only mounts)."""
    from atrous.errors import AtrousError

    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise AtrousError(f"{what} {target} is a file: give a folder (a new or an existing one)")
    if not folder and target.is_dir():
        raise AtrousError(f"{what} {target} is a folder: give a file name, e.g. {target / 'metrics.json'}")
    start = target if folder else target.parent
    reason = _probe_folder(
        _nearest_existing(start)
    )  # (atomic writes rename: the folder decides, not the file)
    if reason is not None:
        raise AtrousError(f"{what} {target}: cannot write there ({reason}); choose a writable location")
