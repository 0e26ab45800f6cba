"""The run folder: config.yaml, last.pt / previous.pt / best.pt, metrics.csv, tensorboard/, and a lock.

Rules (what keeps a finished or running run from being lost):
- a new run into a folder that holds a config or a checkpoint stops, naming the ways out: `--resume`
  continues it, another `--out` starts elsewhere, `--overwrite` removes the old run's files first
  (TensorBoard events included);
- a running run holds `.lock` with its process id; a lock whose process is gone (a killed run) is stale
  and taken over;
- without `--out` every run gets a fresh folder `runs/<model>-<YYYYmmdd-HHMMSS>` (decided once, by rank 0,
  for every process of a data-parallel run).
Only the main process writes; the others hold a RunFolder that writes nothing.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from atrous._io import atomic_write_text
from atrous.checkpoint import load_checkpoint, save_checkpoint
from atrous.errors import AtrousError

LAST = "last.pt"
# The checkpoint before last.pt: renamed aside just before a new last.pt is written, so that one intact
# checkpoint survives even a damaged last.pt (a disk that lies about fsync, a copy cut short).
PREVIOUS = "previous.pt"
BEST = "best.pt"
METRICS_CSV = "metrics.csv"
CONFIG_YAML = "config.yaml"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
RUN_FILES = (CONFIG_YAML, LAST, PREVIOUS, BEST, METRICS_CSV)


def fresh_run_folder(model_name: str, *, root: str | os.PathLike = "runs") -> Path:
    """`runs/<model>-<YYYYmmdd-HHMMSS>` (with `-2`, `-3`, ... when that name is taken)."""
    base = Path(root) / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunFolder:
    """What a run reads from and writes into its folder. `enabled=False` (processes other than rank 0):
    every write is a no-op."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        # Whether last.pt is an intact checkpoint of this run (else it must not replace previous.pt: it may be
        # the damaged file a resume fell back from).
        self.last_is_ours = False
        self.tb = None
        self._locked = False
        self._replace = False  # --overwrite: remove the old run's files when the new run starts
        self.saved_step: int | None = None  # step of the newest last.pt of this run (for error messages)

    # --------------------------------------------------------------------------------------- claiming

    def holds_run(self) -> list[str]:
        """The run files (config, checkpoints) already in the folder."""
        return [name for name in (CONFIG_YAML, LAST, PREVIOUS, BEST) if (self.path / name).exists()]

    def claim(self, *, resume: bool, overwrite: bool) -> None:
        """Create the folder and take its lock; refuse to start a new run over an old one unless asked.

        The old run's files are removed (`overwrite`) only by `start`, once the new run is fully built."""
        if not self.enabled:
            return
        if self.path.exists() and not self.path.is_dir():
            raise AtrousError(
                f"cannot create the run folder {self.path}: a file is in the way; choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AtrousError(
                f"cannot create the run folder {self.path} ({e.strerror or e}): choose another --out"
            ) from None
        self._lock()
        try:
            found = self.holds_run()
            if found and not resume and not overwrite:
                raise AtrousError(
                    f"{self.path} already holds a run ({', '.join(found)}): give another --out for a new "
                    "run, --overwrite to replace it (its files are removed), or --resume to continue it"
                )
            self._replace = overwrite and not resume
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid > 0 and _alive(pid):
                    raise AtrousError(
                        f"{self.path} is in use by a running training (process {pid}, lock file {lock}): "
                        "wait for it to end, choose another --out, or delete the lock file if no training "
                        "runs there (a process id can be reused)"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone (a killed run)
                continue
            except OSError as e:
                raise AtrousError(
                    f"cannot write the lock file {lock} ({e.strerror or e}): choose a writable --out"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._locked = True
            return
        raise AtrousError(
            f"cannot take the lock file {lock}: another run keeps taking it; choose another --out"
        )

    def _remove_run_files(self) -> None:
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)

    def release(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    # ---------------------------------------------------------------------------------------- resuming

    def find_resume_checkpoint(self, log: Callable[[str], None]) -> dict | None:
        """The newest intact checkpoint of the run (last.pt, else previous.pt), or None if there is none.

        A damaged last.pt is reported in one line and skipped. The checkpoint's `resumed_from` entry names
        the file."""
        for name in (LAST, PREVIOUS):
            path = self.path / name
            if not path.exists():
                continue
            try:
                ck = load_checkpoint(path)
            except AtrousError as e:
                log(f"warning: {e}")
                continue
            if "train_state" not in ck:
                log(f"warning: {path} has no training state (not a resumable checkpoint); skipped")
                continue
            if name != LAST:
                log(f"resuming from the older intact checkpoint {path} (step {ck['train_state']['step']})")
            ck["resumed_from"] = name
            return ck
        return None

    # ----------------------------------------------------------------------------------------- writing

    def start(
        self, config_text: str, *, tensorboard: bool, purge_step: int | None, last_is_ours: bool
    ) -> None:
        """Clean up after a killed run, write config.yaml, open TensorBoard."""
        self.last_is_ours = last_is_ours
        if not self.enabled:
            return
        if self._replace:
            self._remove_run_files()
        # Temporary files of writes a killed run left behind (never read: the rename did not happen).
        for name in RUN_FILES:
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        atomic_write_text(self.path / CONFIG_YAML, config_text)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint.
            self.tb = SummaryWriter(str(self.path / TENSORBOARD), purge_step=purge_step)

    def checkpoint(self, name: str, payload: dict) -> None:
        if not self.enabled:
            return
        path = self.path / name
        if name == LAST and self.last_is_ours and path.exists():
            # Keep the previous checkpoint until the new one is complete (and after, as a fallback).
            os.replace(path, self.path / PREVIOUS)
        save_checkpoint(path, payload)
        if name == LAST:
            self.last_is_ours = True

    def metrics(self, history: list[dict]) -> None:
        """metrics.csv: one row per epoch; columns are the union of the rows' keys."""
        if not self.enabled:
            return
        columns = list(dict.fromkeys(key for row in history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.path / METRICS_CSV, buffer.getvalue())

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                if value is not None:
                    self.tb.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image: torch.Tensor) -> None:
        """A (3, H, W) uint8 image in TensorBoard."""
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="CHW")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self.release()
