"""Honest model selection: a deterministic volume-level split of one folder into ``val`` and ``test``.

fastMRI's test and challenge files have no targets, so papers report on its
val split; choosing the best checkpoint on those same volumes biases the
reported numbers upward. With a ``test_fraction``, each volume of the val
folder belongs to exactly one part, by a hash of its file name:

    part(fname) = "test" if crc32(fname) / 2**32 < test_fraction else "val"

The rule needs no list file, gives the same parts on every machine, rank and
run, and keeps a volume in its part when others are added or removed.
``validate`` (checkpoint selection) then sees only the ``val`` part, and
``test`` / inference / evaluation report on the ``test`` part.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Union

__all__ = ["volume_part", "in_part", "check_test_fraction", "PartFilter"]


def check_test_fraction(test_fraction: Optional[float]) -> Optional[float]:
    """``None`` or a fraction strictly between 0 and 1."""
    if test_fraction is None:
        return None
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return float(test_fraction)


def volume_part(fname: Union[str, Path], test_fraction: float) -> str:
    """``"test"`` or ``"val"``: the part of the val folder that volume ``fname`` belongs to."""
    name = Path(str(fname)).name.encode("utf-8")
    return "test" if zlib.crc32(name) / 2**32 < test_fraction else "val"


def in_part(fname: Union[str, Path], part: Optional[str], test_fraction: Optional[float]) -> bool:
    """Whether ``fname`` is scored in ``part`` (``None``: every volume)."""
    if part is None or test_fraction is None:
        return True
    if part not in ("val", "test"):
        raise ValueError(f"part must be 'val' or 'test', got {part!r}")
    return volume_part(fname, test_fraction) == part


class PartFilter:
    """``raw_sample_filter`` for fastmri's SliceDataset: keep the volumes of one part (picklable)."""

    def __init__(self, part: str, test_fraction: float) -> None:
        self.part = part
        self.test_fraction = test_fraction
        in_part("x", part, test_fraction)  # checks the part name

    def __call__(self, raw_sample) -> bool:
        return in_part(raw_sample.fname, self.part, self.test_fraction)
