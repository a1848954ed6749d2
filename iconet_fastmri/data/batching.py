"""Batching slices as fastMRI ships them: varying coil counts, with and without file targets.

The coil-count policy: fastMRI brain volumes have 4 to 20+ coils (knee: 15),
so slices of one split cannot be stacked as they are. :func:`collate_samples`
**pads the coil dimension with zero coils** up to the largest count in the
batch. This is exact, not an approximation: a zero coil has zero k-space, so
the RSS images (the HR target, the LR input and every stage target) and the
per-coil k-space of the real coils are unchanged. It costs memory only (a
batch of 8 with 4 to 20 coils stores 8 x 20 coil images); no coil compression
is applied.

Files' own targets (``reconstruction_esc`` / ``reconstruction_rss``) are
batched only when every slice of the batch has one of the same shape;
otherwise the batch's ``target`` is empty. Nothing in training or scoring
uses them (the HR target is computed from k-space by the one HR grid rule),
so a batch that mixes files with and without reconstructions, or padded and
unpadded slices, is fine. HR images of different sizes in one batch (which
the transform never produces) are an error naming the files.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .transforms import IconetSample

__all__ = ["collate_samples"]


def collate_samples(samples: Sequence[IconetSample]) -> IconetSample:
    """Stack :class:`IconetSample` s into a batch (coil dimension zero-padded to the batch maximum)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    grids = {_grid(s) for s in samples}
    masks = {tuple(s.mask.shape) for s in samples}
    if len(grids) > 1 or len(masks) > 1:
        described = ", ".join(
            f"{s.fname} slice {s.slice_num}: {_grid(s)}" for s in samples
        )
        raise ValueError(f"slices of one batch must share the HR grid and mask shape; got {described}")
    coils = max(int(s.hr_images.shape[0]) for s in samples)
    hr_images = [_pad_coils(s.hr_images, coils) for s in samples]
    targets = [s.target for s in samples]
    if all(t.numel() for t in targets) and len({tuple(t.shape) for t in targets}) == 1:
        target = torch.stack(targets)
    else:
        target = torch.empty(0)
    return IconetSample(
        hr_images=torch.stack(hr_images),
        mask=torch.stack([s.mask for s in samples]),
        target=target,
        fname=[s.fname for s in samples],
        slice_num=torch.tensor([int(s.slice_num) for s in samples]),
        max_value=torch.tensor([float(s.max_value) for s in samples], dtype=torch.float64),
        num_low_frequencies=torch.tensor([int(s.num_low_frequencies) for s in samples]),
        patch=_patches(samples),
        maps=_maps(samples, coils),
        compact=_compact(samples),
    )


def _pad_coils(t: torch.Tensor, coils: int) -> torch.Tensor:
    """``(C, ...)`` zero-padded to ``coils`` along the first axis (volumes of a batch differ in coil count)."""
    missing = coils - int(t.shape[0])
    return torch.cat([t, t.new_zeros(missing, *t.shape[1:])]) if missing else t


def _grid(sample: IconetSample) -> tuple:
    """The HR grid of a sample: its images', or its HR target's for compact samples."""
    return tuple((sample.hr_images if sample.compact is None else sample.compact[1][-1]).shape[-2:])


def _compact(samples: Sequence[IconetSample]):
    """``(lr_kspace (B, C, h, w), tuple of (B, 1, ·, ·) stage targets)``, coils zero-padded; ``None`` for image samples."""
    if all(s.compact is None for s in samples):
        return None
    if any(s.compact is None for s in samples):
        raise ValueError("a batch mixes compact shard samples with image samples")
    coils = max(int(s.compact[0].shape[0]) for s in samples)
    lr = torch.stack([_pad_coils(s.compact[0], coils) for s in samples])
    stages = tuple(torch.stack([s.compact[1][k] for s in samples]) for k in range(len(samples[0].compact[1])))
    return lr, stages


def _maps(samples: Sequence[IconetSample], coils: int):
    """``(B, C, h, w)`` stored coil maps (coils zero-padded like the images); ``None`` unless every sample has them."""
    if any(s.maps is None for s in samples):
        return None
    return torch.stack([_pad_coils(s.maps, coils) for s in samples])


def _patches(samples: Sequence[IconetSample]):
    """``(B, 4)`` patch boxes; a sample without one is its whole slice; ``None`` when no sample has one."""
    if all(s.patch is None for s in samples):
        return None
    boxes = [s.patch if s.patch is not None else torch.tensor([0, 0, *_grid(s)]) for s in samples]
    return torch.stack([b.to(torch.int64) for b in boxes])
