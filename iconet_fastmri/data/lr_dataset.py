"""A folder of low-resolution acquisition files as a dataset of slice chunks on the model's grid.

Both ways of reconstructing real low-resolution scans read them through
:class:`AcquiredChunks`: ``run_inference.py --acquired``
(:func:`~iconet_fastmri.acquired.reconstruct_acquired`) and the CLI's ``predict`` on such
a folder. Every file is read and checked when the dataset is built (header against
array, mask, values, the model's grid: :func:`~.lr_files.read_lr_file`), before any
work, and kept only as a summary (:class:`AcquiredVolume`); an item is a chunk of up to
``batch_size`` consecutive slices of one volume (:class:`AcquiredChunk`), read again
from its file, so volumes with different grids or coil counts never share a batch.

What a chunk holds depends on the scan: the network's input k-space on the model's LR
grid (:func:`~.lr_files.model_grid_kspace`) and the samples data consistency uses,
which for a phase-encode oversampled scan stay on its own wider grid
(:func:`~.lr_files.phase_encode_samples`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..physics.masks import effective_acceleration, undersampled_axes
from ..physics.operators import PhaseEncodeOversampling, check_scale
from .lr_files import LrScan, model_grid_kspace, phase_encode_samples, read_lr_file

__all__ = ["AcquiredVolume", "AcquiredChunk", "AcquiredChunks", "AccelerationWarning", "check_volumes"]


@dataclass(frozen=True)
class AcquiredVolume:
    """One checked low-resolution acquisition file, without its arrays.

    ``acceleration`` is the acquired R on its own grid (samples / acquired samples);
    ``two_d`` whether its pattern undersamples the readout too; ``oversampled`` whether
    data consistency keeps its samples on a wider phase-encode grid.
    """

    path: Path
    slices: int
    recon: Tuple[int, int]
    attrs: Dict[str, Any]
    acceleration: float
    two_d: bool
    oversampled: bool

    @property
    def fname(self) -> str:
        return self.path.name


@dataclass
class AcquiredChunk:
    """Consecutive slices of one volume, ready for the model.

    Attributes:
        fname: the file's name.
        slice_num: ``(B,)`` slice indices.
        kspace: ``(B, C, h, w)`` the network's input k-space on the model's LR grid.
        mask: ``(B, 1, ·, ·)`` the mask of ``samples`` (ones for a model that needs none).
        samples: ``(B, C, h, ·)`` the measured samples data consistency uses: ``kspace`` itself,
            or the scan's own on its wider phase-encode grid when ``oversampled``.
        oversampled: see :class:`AcquiredVolume`.
        acceleration: the file's acquired R on its own grid.
    """

    fname: str
    slice_num: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    samples: torch.Tensor
    oversampled: bool
    acceleration: float

    def to(self, device: Union[str, torch.device]) -> "AcquiredChunk":
        return replace(self, kspace=self.kspace.to(device), mask=self.mask.to(device), samples=self.samples.to(device))


def _undersampled_rows(mask: np.ndarray) -> bool:
    return not np.array_equal(mask, np.broadcast_to(mask[:, :1, :], mask.shape))


class AcquiredChunks(Dataset):
    """The ``*.h5`` files of ``folder`` as chunks of up to ``batch_size`` slices (see the module docstring).

    Args:
        folder: low-resolution acquisition files (read only).
        scale: the model's scale (the LR grid is each file's recon matrix).
        needs_mask: whether the model uses the sampling pattern (complex input or data
            consistency); a magnitude model without DC needs the input alone.
        batch_size: slices per chunk.
    """

    def __init__(self, folder: Union[str, Path], scale: int, needs_mask: bool, batch_size: int = 8) -> None:
        self.folder = Path(folder)
        self.scale = check_scale(scale)
        self.needs_mask = bool(needs_mask)
        files = sorted(self.folder.glob("*.h5"))
        if not files:
            raise FileNotFoundError(f"{self.folder}: no .h5 files")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.volumes: List[AcquiredVolume] = [self._check(path) for path in files]  # all before any work
        self.index = [(v, start) for v, vol in enumerate(self.volumes) for start in range(0, vol.slices, batch_size)]
        self.batch_size = int(batch_size)
        self._cached: Optional[Tuple[int, LrScan]] = None

    def _check(self, path: Path) -> AcquiredVolume:
        scan = read_lr_file(path)
        oversampled = self.needs_mask and scan.encoded[1] > scan.recon[1]
        two_d = _undersampled_rows(scan.mask)
        if self.needs_mask and scan.encoded[0] != scan.recon[0] and two_d:  # any slice, not only the first
            raise ValueError(f"{path.name}: a mask that varies along the oversampled readout cannot be cropped")
        # read_lr_file checked the grid (recon within encoded) and that every slice acquires samples
        return AcquiredVolume(path, int(scan.kspace.shape[0]), scan.recon, scan.attrs,
                              effective_acceleration(torch.from_numpy(scan.mask)), two_d, oversampled)

    @classmethod
    def for_module(cls, folder: Union[str, Path], module: Any, batch_size: int = 8) -> "AcquiredChunks":
        """The chunks ``module`` (an :class:`~iconet_fastmri.pl_modules.IconetModule`) reconstructs, every file
        checked against it (:func:`check_volumes`) before any work."""
        dataset = cls(folder, module.scale, module.in_chans == 2 or module.uses_dc, batch_size)
        check_volumes(dataset.volumes, dataset.scale, module.acquisition)
        return dataset

    def slices_per_volume(self) -> Dict[str, int]:
        return {vol.fname: vol.slices for vol in self.volumes}

    def __len__(self) -> int:
        return len(self.index)

    def _scan(self, v: int) -> LrScan:
        if self._cached is None or self._cached[0] != v:  # chunks come volume by volume: one file in memory
            self._cached = (v, read_lr_file(self.volumes[v].path))
        return self._cached[1]

    def __getitem__(self, i: int) -> AcquiredChunk:
        v, start = self.index[i]
        vol, scan = self.volumes[v], self._scan(v)
        numbers: Sequence[int] = range(start, min(start + self.batch_size, vol.slices))
        if vol.oversampled:  # the network's input: the samples' zero-filled image cropped to the grid
            parts = [phase_encode_samples(scan, j, self.scale, vol.recon) for j in numbers]
            samples, mask = torch.stack([k for k, _ in parts]), torch.stack([m for _, m in parts])
            kspace = PhaseEncodeOversampling(mask, vol.recon).adjoint(samples)
        else:
            parts = [model_grid_kspace(scan, j, self.scale, vol.recon, with_mask=self.needs_mask) for j in numbers]
            kspace = samples = torch.stack([k for k, _ in parts])
            mask = (torch.stack([m for _, m in parts]) if self.needs_mask
                    else torch.ones_like(kspace[:, :1].real))
        return AcquiredChunk(vol.fname, torch.as_tensor(list(numbers)), kspace, mask, samples, vol.oversampled,
                             vol.acceleration)


class AccelerationWarning(UserWarning):
    """A file's acceleration is far from the one the model was trained with."""


def check_volumes(volumes: Sequence[AcquiredVolume], scale: int, acquisition: Any) -> None:
    """Refuse what the model cannot reconstruct, naming the file; warn on an acceleration far from training's.

    ``acquisition``: the checkpoint's :class:`~iconet_fastmri.physics.acquisition.Acquisition`
    (its mask says the acceleration and whether the pattern undersamples both axes).
    Refused: a file written for another scale (attribute ``lr_scale``); a 2D sampling
    pattern for a model trained on 1D masks, or the reverse. An acquired R more than
    1.5x away from training's is an :class:`AccelerationWarning` stating both.
    """
    config, func = acquisition.mask, acquisition.mask_func
    trained_r = config.nominal_acceleration() if config is not None else None
    trained_2d = None if func is None else undersampled_axes(func, (32, 32))[0]
    for vol in volumes:
        lr_scale = vol.attrs.get("lr_scale")
        if lr_scale is not None and int(lr_scale) != scale:
            raise ValueError(f"{vol.fname}: written for x{int(lr_scale)} (attribute lr_scale) but the checkpoint "
                             f"upsamples x{scale}")
        if trained_2d is not None and vol.two_d != trained_2d:
            raise ValueError(f"{vol.fname}: its sampling pattern undersamples "
                             f"{'both axes' if vol.two_d else 'columns only'}, but the model was trained on masks "
                             f"that undersample {'both axes' if trained_2d else 'columns only'}")
    for vol in volumes:
        rate = vol.acceleration
        if trained_r and (rate > 1.5 * trained_r or rate < trained_r / 1.5):
            warnings.warn(f"{vol.fname}: acquired at R = {rate:.2f} on the LR grid; the model was trained at "
                          f"R = {trained_r:g}", AccelerationWarning, stacklevel=2)
