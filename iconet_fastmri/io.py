"""Atomic file writes: the one helper every writer in the package uses.

A file is written under a hidden temporary name in its destination folder
(``.<name>.partial-<token>-<pid>``) and moved into place with ``os.replace``,
so a reader never sees a half-written file and an interrupted run leaves at
most a temporary that :func:`remove_stale_partials` can clear. Files get the
permissions the user's umask gives a new file (as ``fastmri.save_reconstructions``
and ``open`` do), unless ``private=True`` (0600, for caches in the home folder).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["PARTIAL_TAG", "atomic_write", "atomic_write_json", "remove_stale_partials"]

#: Marker in the names of temporary files written by :func:`atomic_write`.
PARTIAL_TAG = ".partial"

PathLike = Union[str, "os.PathLike[str]"]


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_TAG}-{secrets.token_hex(4)}-{os.getpid()}")


def atomic_write(path: PathLike, write: Callable[[Path], None], private: bool = False) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file, then it is renamed.

    Args:
        path: the destination file; its folder must exist.
        write: called with the temporary path; it creates and fills that file
            (e.g. ``lambda p: h5py.File(p, "w")...``).
        private: give the file mode 0600 instead of the umask default.

    The temporary is removed if ``write`` (or the rename) fails, and the
    exception propagates.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        write(tmp)
        if private:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: PathLike, payload: Any, private: bool = False, **dump_kwargs: Any) -> None:
    """Write ``payload`` as JSON through :func:`atomic_write`."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, **dump_kwargs)

    atomic_write(path, write, private=private)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_partials(folder: PathLike, suffix: str = "") -> int:
    """Delete temporaries of :func:`atomic_write` in ``folder`` whose writer is gone.

    Only files named as this module names them (``.<name><suffix>.partial-<token>-<pid>``)
    are touched, and those of a live process on this host are kept. Returns
    the number of files removed.
    """
    removed = 0
    for stale in Path(folder).glob(f".*{suffix}{PARTIAL_TAG}-*-*"):
        pid_text = stale.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
