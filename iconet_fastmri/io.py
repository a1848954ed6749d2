"""Atomic file writes, outputs kept apart from inputs, and the scripts' refusals.

Atomic writes: the one helper every writer in the package uses.

A file is written under a hidden temporary name in its destination folder
(``.<name>.partial-<token>-<pid>``) and moved into place with ``os.replace``,
so a reader never sees a half-written file and an interrupted run leaves at
most a temporary that :func:`remove_stale_partials` can clear. Files get the
permissions the user's umask gives a new file (as ``fastmri.save_reconstructions``
and ``open`` do), unless ``private=True`` (0600, for caches in the home folder).

Outputs apart from inputs: :func:`check_outputs_apart` refuses an output
folder that is, contains or lies inside an input folder (symlinks resolved,
bind mounts compared by device and inode), before anything is written; it is
the one check behind ``run_inference.py --out``, ``predict``'s
``--prediction_writer.out_dir`` and ``evaluate.py --out`` / ``--figures``.

Refusals of the scripts: :func:`run_script` prints an error's message without
a Python traceback (``--debug`` or ``ICONET_DEBUG=1`` shows it) and exits 1.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "DEBUG_ENV",
    "OutputInInputError",
    "PARTIAL_TAG",
    "atomic_write",
    "atomic_write_json",
    "check_outputs_apart",
    "remove_stale_partials",
    "run_script",
    "temporary_name",
]

#: Marker in the names of temporary files written by :func:`atomic_write`.
PARTIAL_TAG = ".partial"

PathLike = Union[str, "os.PathLike[str]"]


def temporary_name(path: PathLike) -> Path:
    """A unique hidden temporary beside ``path`` (same folder, so same filesystem: ``os.replace`` is atomic)."""
    path = Path(path)
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
    tmp = temporary_name(path)
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


# ---------------------------------------------------------------------- outputs apart from inputs
class OutputInInputError(ValueError):
    """An output folder that is, contains or lies inside an input folder; the message names both."""


Labelled = Union[Mapping[str, Optional[PathLike]], Iterable[Tuple[str, Optional[PathLike]]]]


def _pairs(folders: Labelled) -> List[Tuple[str, Path]]:
    items = folders.items() if isinstance(folders, Mapping) else folders
    return [(label, Path(path)) for label, path in items if path is not None and str(path) != ""]


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same(a: Path, b: Path) -> bool:
    """Same folder: equal resolved paths, or (both existing) the same device and inode (bind mounts)."""
    if a == b:
        return True
    ida = _identity(a)
    return ida is not None and ida == _identity(b)


def _relation(out: Path, inp: Path) -> Optional[str]:
    """How the output folder stands to the input folder (both resolved): is, lies inside, contains, or None."""
    if _same(out, inp):
        return "is"
    if any(_same(parent, inp) for parent in out.parents):
        return "lies inside"
    if any(_same(parent, out) for parent in inp.parents):
        return "contains"
    return None


def check_outputs_apart(outputs: Labelled, inputs: Labelled) -> None:
    """Refuse an output folder that is, contains or lies inside an input folder, before anything is written.

    Args:
        outputs: ``{label: folder}`` (or ``(label, folder)`` pairs) the caller will write
            into, e.g. ``{"--out": out}``; ``None`` entries are skipped.
        inputs: ``{label: folder}`` it reads, e.g. ``{"--data_path": data}``.

    Paths are resolved (symlinks followed; an output folder need not exist yet),
    and existing folders are also compared by device and inode, so a symlink,
    ``..`` or a bind mount does not hide the overlap. ``--overwrite`` does not
    change this: results never replace, mix with or enclose the files they are computed from.

    Raises:
        OutputInInputError: naming both folders as given (and resolved where that differs).
    """
    for out_label, out in _pairs(outputs):
        out_real = out.expanduser().resolve()
        for in_label, inp in _pairs(inputs):
            in_real = inp.expanduser().resolve()
            relation = _relation(out_real, in_real)
            if relation is None:
                continue
            resolved = ""
            if (out_real, in_real) != (out.absolute(), inp.absolute()):
                resolved = f" (resolved: {out_real} and {in_real})"
            raise OutputInInputError(
                f"refusing to write into {out_label} {out}: it {relation} the input folder {in_label} {inp}"
                f"{resolved}. Outputs never go into, over or around an input folder, with or without "
                f"--overwrite (they would replace or mix with the files they are computed from); "
                f"choose an output folder outside {inp}. Nothing was written"
            )


# ---------------------------------------------------------------------- the scripts' refusals
#: Set to 1 to see the Python traceback of a script's error (as ``--debug`` does).
DEBUG_ENV = "ICONET_DEBUG"

#: Errors that are refusals (a bad input, a path, a setting): their message is the whole story.
_REFUSALS = (ValueError, OSError, LookupError)


def _debug_asked(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_script(main: Callable[[Optional[List[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main(argv)`` and return its exit code: a refusal is a message, not a traceback.

    An exception prints ``error: <message>`` (its type too when it is not a
    plain refusal such as ``ValueError`` or ``OSError``) and a hint on stderr, and
    gives exit code 1. With ``--debug`` on the command line or ``ICONET_DEBUG=1``
    in the environment the exception propagates with its traceback.
    ``SystemExit`` (argparse's usage errors, ``raise SystemExit(msg)``) and
    ``KeyboardInterrupt`` pass through unchanged.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(args)
    except Exception as err:
        if _debug_asked(args):
            raise
        text = str(err) or type(err).__name__
        if not isinstance(err, _REFUSALS):
            text = f"{type(err).__name__}: {text}"
        print(f"error: {text}", file=sys.stderr)
        print(f"(for the Python traceback, pass --debug or set {DEBUG_ENV}=1)", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) else 0
