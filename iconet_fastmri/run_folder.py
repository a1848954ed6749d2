"""A run's folder: where its checkpoints go, `--ckpt_path last`, a second fit into it, and its lock.

* :func:`checkpoint_dir`: ``checkpoint.dirpath``, else ``<default_root_dir>/checkpoints``;
* :func:`resolve_last`: ``--ckpt_path last`` is exactly ``<folder>/last.ckpt``;
* :func:`claim_checkpoint_dir`: a new ``fit`` into a folder holding an earlier
  run's checkpoints is refused, or with ``--overwrite true`` they are moved aside;
* :class:`RunLock`: one ``fit`` at a time per checkpoint folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.rank_zero import rank_zero_only

__all__ = ["checkpoint_dir", "resolve_last", "claim_checkpoint_dir", "RunLock", "first_process"]


def checkpoint_dir(config: Any) -> Path:
    """The run's checkpoint folder: ``checkpoint.dirpath``, else ``<default_root_dir>/checkpoints``."""
    explicit = config.get("checkpoint.dirpath") if config.get("checkpoint") is not None else None
    if explicit:
        return Path(explicit)
    root = config.get("trainer.default_root_dir") or "runs/default"
    return Path(root) / "checkpoints"


def resolve_last(folder: Path) -> Path:
    """``--ckpt_path last``: exactly ``<folder>/last.ckpt``; other ``last*.ckpt`` files make it ambiguous."""
    others = sorted(p.name for p in folder.glob("last*.ckpt") if p.name != "last.ckpt")
    if others:
        raise ValueError(
            f"--ckpt_path last is ambiguous: {folder} holds last.ckpt and {others} (from earlier runs "
            f"of older versions); pass the file you mean with --ckpt_path {folder}/<file>"
        )
    path = folder / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path last: there is no {path} (has this run saved a checkpoint?)")
    return path


def claim_checkpoint_dir(folder: Path, overwrite: bool) -> None:
    """A new ``fit`` needs a checkpoint folder of its own: refuse one that holds checkpoints, or move them aside."""
    existing = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not existing:
        return
    if not overwrite:
        raise ValueError(
            f"{folder} already holds checkpoints of an earlier run ({', '.join(p.name for p in existing)}). "
            f"Resume it with --ckpt_path last, start elsewhere with --trainer.default_root_dir, or pass "
            f"--overwrite true to move them to {folder}/replaced-<time>/ and start afresh"
        )
    target = folder / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for path in existing:
        path.rename(target / path.name)
    rank_zero_info(f"[iconet-fastmri] --overwrite: moved {len(existing)} earlier checkpoint(s) to {target}")


class RunLock:
    """One ``fit`` at a time per checkpoint folder.

    The lock is the file ``.<folder name>.lock`` next to the folder (for
    ``runs/demo/checkpoints``: ``runs/demo/.checkpoints.lock``; inside it,
    Lightning would warn that the folder is not empty), created exclusively
    (``O_CREAT | O_EXCL``) and holding the owner's pid, host and start time. A
    second ``fit`` into the folder is refused while the owner runs. The lock is
    removed when the run ends, however it ends; a lock left by a killed run
    (its pid no longer runs on this host) is taken over, with a message. A
    lock of another host cannot be checked: the message says to delete the
    file if no run is using the folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self._held = False
        self._made: List[Path] = []

    def acquire(self) -> "RunLock":
        missing = [p for p in [self.folder.parent, *self.folder.parent.parents] if not p.exists()]
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # removed again at release if still empty
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "folder": str(self.folder)}
        for _ in range(5):
            if self._create(record):
                self._held = True
                return self
            holder = self._read(self.path)
            if holder is None and self.path.exists():
                raise FileExistsError(
                    f"{self.folder} is locked by {self.path}, which cannot be read: another fit may be running "
                    f"into it. If none is, delete {self.path}"
                )
            if holder is None:  # released meanwhile: try again
                continue
            if not self._stale(holder):
                raise FileExistsError(
                    f"another fit is running into {self.folder}: pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')} (lock {self.path}). Wait for it to "
                    f"end, or use another --trainer.default_root_dir"
                    + ("" if holder.get("host") == socket.gethostname() else
                       f". That host cannot be checked from here: if no fit runs there, delete {self.path}")
                )
            if self._take_over(holder):
                rank_zero_info(
                    f"[iconet-fastmri] {self.path}: the fit that held this lock (pid {holder.get('pid')}, "
                    f"started {holder.get('started')}) no longer runs; taking it over"
                )
        raise FileExistsError(f"could not lock {self.folder} ({self.path} keeps changing): another fit is starting")

    def release(self) -> None:
        if self._held:
            self._held = False
            holder = self._read(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
        for folder in self._made:  # innermost first: only the empty folders this lock created
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    # ------------------------------------------------------------------ internals
    def _create(self, record: Dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        return True

    @staticmethod
    def _read(path: Path) -> Optional[Dict[str, Any]]:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: Dict[str, Any]) -> bool:
        """The holder's pid no longer runs on this host (a lock of another host is never stale)."""
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, another user's
            return False
        return False

    def _take_over(self, holder: Dict[str, Any]) -> bool:
        """Move the stale lock aside (atomically), unless another process took it over first."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if self._read(aside) != holder:  # someone's fresh lock, not the stale one: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True


def first_process() -> bool:
    """Rank 0 of the run (other ranks of a multi-process run re-run the CLI into rank 0's folder)."""
    return getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")
