"""Loading checkpoints that may come from someone else, safely.

Every checkpoint this package reads goes through :func:`load_checkpoint`:
``torch.load(..., weights_only=True)``, so unpickling can only build tensors,
containers and primitive values, plus the explicit allow-list
:data:`ALLOWED_GLOBALS`. A checkpoint carrying any other pickled object is
refused with :class:`UnsafeCheckpointError` before any of its code runs.

Our own checkpoints (Lightning's ``last.ckpt`` / ``best-*.ckpt``) need
nothing beyond the defaults: hyperparameters are plain values and the data
module stores its settings as a plain dict.
"""

from __future__ import annotations

import pathlib
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch

__all__ = ["ALLOWED_GLOBALS", "UnsafeCheckpointError", "load_checkpoint"]

#: Types a checkpoint may contain beyond tensors, dicts, lists, tuples and
#: primitives: harmless value types that hyperparameters sometimes hold.
ALLOWED_GLOBALS = [pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath]


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects outside the allow-list."""


def load_checkpoint(
    path: Union[str, Path],
    map_location: Any = "cpu",
    extra_allowed: Optional[Iterable[type]] = None,
) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and our allow-list.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds other pickled objects (nothing in it was run).
        ValueError: the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    allowed = list(ALLOWED_GLOBALS) + list(extra_allowed or [])
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it contains pickled objects outside the "
            f"allow-list of plain tensors, containers and values; nothing in it was executed. "
            f"Only load it with weights_only=False if you trust its author. Details: {err}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"checkpoint {path} cannot be read (truncated or not a torch checkpoint): {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} does not hold a dict (got {type(checkpoint).__name__})")
    return checkpoint
