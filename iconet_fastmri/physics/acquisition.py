"""The acquisition: one object that owns how an LR, undersampled scan is made.

:class:`Acquisition` holds the whole acquisition model, configured once
(the ``data`` section of a config: ``scale``, ``mask``, ``noise_std``,
``kspace_steps``) and validated once, here. Everything downstream receives
this one object: the per-slice data transform draws its masks with
:meth:`Acquisition.draw_mask`, the Lightning module simulates batches with
:meth:`Acquisition.simulate`, the networks' data consistency uses
:meth:`Acquisition.operator` (``A = M · F · T · S`` and its adjoint) and
coil maps come from :meth:`Acquisition.estimate_maps`; inference and sweeps
rebuild it from a checkpoint with :meth:`Acquisition.from_spec`.

deepinv's ``Physics`` is the model: an object that owns ``A``, ``Aᴴ``, the
noise and the mask generator.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .degradation import KSPACE_STEPS, Degraded, Step, build_kspace_steps, from_lr_kspace, simulate, stage_grids
from .fft import as_complex
from .masks import MASKS, MaskConfig, check_mask_on_grid, check_patch_on_grid
from .operators import check_scale, lr_shape_for
from .sense import SenseOperator, calibration_region, estimate_maps_rss

__all__ = ["Acquisition"]

MaskLike = Union[MaskConfig, Mapping[str, Any], Callable[..., Any], None]


def _noise_std(value: Any) -> float:
    """A finite number >= 0 (``nan`` would act as no noise, ``inf`` makes every input NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"noise_std must be a number >= 0 and finite, got {value!r}")
    return number


#: Mask draws a start-up check looks at (several centre fractions give several widths).
CALIBRATION_DRAWS = 16


class Acquisition(nn.Module):
    """The LR acquisition model ``y = M · T · F · x + n`` (then further k-space effects).

    Args:
        scale: super-resolution factor s (2, 4 or 8); the LR grid is ``(H/s, W/s)``.
        mask: the undersampling mask on the LR grid: a :class:`~.masks.MaskConfig`
            (or its dict), a mask function ``f(shape, seed=None) -> (mask, num_low)``,
            or ``None`` for fully sampled LR k-space.
        noise_std: standard deviation of complex Gaussian noise on each acquired
            LR k-space sample (per real/imaginary part, in the units of the
            intensity-preserving LR k-space).
        kspace_steps: further acquisition effects on the acquired LR k-space,
            applied in order after masking and noise: specs
            ``[{"name": ..., **options}]`` from :data:`~.degradation.KSPACE_STEPS`
            or callables ``step(kspace, mask) -> kspace`` on centred ``(B, C, h, w)``
            complex k-space. Each output is masked again.

    Holds no parameters or buffers: moving it between devices costs nothing.
    """

    def __init__(
        self,
        scale: int = 2,
        mask: MaskLike = None,
        noise_std: float = 0.0,
        kspace_steps: Optional[Sequence[Union[Mapping[str, Any], Step]]] = None,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if isinstance(mask, Mapping):
            mask = MaskConfig(**mask)
        self.mask = mask if isinstance(mask, MaskConfig) else None
        self.mask_func = mask.build() if isinstance(mask, MaskConfig) else mask
        self.noise_std = _noise_std(noise_std)
        specs = list(kspace_steps or [])
        self.kspace_steps = [dict(s) for s in specs if isinstance(s, Mapping)]
        built = iter(build_kspace_steps(self.kspace_steps))  # unknown names and options fail here
        self.steps: List[Step] = [next(built) if isinstance(s, Mapping) else s for s in specs]

    # ------------------------------------------------------------------ grids and masks
    @property
    def num_stages(self) -> int:
        return len(stage_grids((self.scale, self.scale), self.scale)) - 1

    def lr_shape(self, hr_shape: Sequence[int]) -> Tuple[int, int]:
        """The LR grid of an HR grid (an HR grid the scale does not divide is an error)."""
        return lr_shape_for(hr_shape, self.scale)

    @property
    def mask_name(self) -> str:
        if self.mask is not None:
            return self.mask.name
        return "fully sampled" if self.mask_func is None else type(self.mask_func).__name__

    def check_grid(self, hr_crop: Sequence[int], patch_size: Optional[Sequence[int]] = None) -> None:
        """Start-up checks of the mask on the HR grid (and training patch) this acquisition will see.

        The mask must fit the LR grid and achieve its nominal acceleration there
        (masks are drawn for whole slices, also when training on patches, which are
        cut after the acquisition: ``models/patches.py``); a patch may be narrower
        than ``hr_crop`` only along axes the mask samples fully, where cutting the
        measured k-space is exact.
        """
        hr = (int(hr_crop[0]), int(hr_crop[1]))
        patch = None if patch_size is None else (int(patch_size[0]), int(patch_size[1]))
        lr = self.lr_shape(hr)
        if patch is not None:
            self.lr_shape(patch)  # multiples of the scale
        if self.mask_func is not None:
            nominal = self.mask.nominal_acceleration() if self.mask is not None else None
            check_mask_on_grid(self.mask_func, lr, nominal, name=f"mask {self.mask_name!r}")
        if patch is not None:
            if patch[0] > hr[0] or patch[1] > hr[1]:
                raise ValueError(f"patch_size {patch[0]}x{patch[1]} is larger than hr_crop {hr}")
            if self.mask_func is not None:
                check_patch_on_grid(self.mask_func, hr, patch, self.scale, name=f"mask {self.mask_name!r}")

    def centre_lines(self, hr_shape: Sequence[int]) -> set:
        """The fully sampled centre widths (``num_low``) the masks draw on the LR grid, over several draws."""
        lr = self.lr_shape(hr_shape)
        return {self.draw_mask(lr, seed=seed)[1] for seed in range(CALIBRATION_DRAWS)}

    def check_calibration(self, hr_shape: Sequence[int], why: str = "coil maps", min_lines: int = 1) -> None:
        """Coil maps need a fully sampled centre: refuse, at start-up, a mask without one, or (ESPIRiT)
        one narrower than ``min_lines`` on the LR grid (``why`` says who asks)."""
        lr = self.lr_shape(hr_shape)
        widths = []
        for seed in range(CALIBRATION_DRAWS):  # several centre fractions draw several widths: the narrowest counts
            mask, _ = self.draw_mask(lr, seed=seed)
            try:
                region = calibration_region(mask[None, None])[0, 0]
            except ValueError as err:
                raise ValueError(f"{why} needs coil maps: mask {self.mask_name!r}: {err}") from err
            widths.append(min(int(region.any(dim=-1).sum()), int(region.any(dim=-2).sum())))
        lines = min(widths)
        if lines < min_lines:
            raise ValueError(f"{why}: mask {self.mask_name!r} acquires a calibration region of {lines} lines on the "
                             f"LR grid {lr[0]}x{lr[1]}; ESPIRiT needs at least {min_lines} (raise center_fractions)")

    def draw_mask(self, lr_shape: Sequence[int], seed: Any = None) -> Tuple[torch.Tensor, int]:
        """One LR-grid mask ``(h, w)`` float32 and its fully sampled centre width.

        ``seed=None`` draws from the mask function's RNG (training; see
        :meth:`reseed`), an explicit seed gives the same mask every time.
        """
        h, w = int(lr_shape[0]), int(lr_shape[1])
        if self.mask_func is None:
            return torch.ones(h, w), w
        mask, num_low = self.mask_func((h, w), seed=seed)
        return torch.as_tensor(mask, dtype=torch.float32).expand(h, w), int(num_low)

    def reseed(self, seed: int) -> None:
        """Reseed the training mask RNG (one per data-loader worker, DDP rank and epoch)."""
        if self.mask_func is not None and hasattr(self.mask_func, "reseed"):
            self.mask_func.reseed(seed)

    # ------------------------------------------------------------------ the forward model
    def _batch_mask(self, mask: Optional[torch.Tensor], batch: int, lr: Tuple[int, int], device) -> torch.Tensor:
        if mask is None:
            return torch.stack([self.draw_mask(lr)[0] for _ in range(batch)]).unsqueeze(1).to(device)
        mask = torch.as_tensor(mask).to(device=device, dtype=torch.float32)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or not (mask.shape[-2] in (1, lr[0]) and mask.shape[-1] in (1, lr[1])):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit the LR grid {lr} "
                f"(expected (h, w), (B, h, w) or (B, 1, h, w))"
            )
        return mask.expand(batch, 1, *lr)

    def simulate(self, hr_images: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 compact: Optional[Tuple[torch.Tensor, Sequence[torch.Tensor]]] = None) -> Degraded:
        """Degrade a batch of HR per-coil complex images ``(B, C, H, W)``.

        ``mask``: the batch's LR masks ``(h, w)``, ``(B, h, w)`` or ``(B, 1, h, w)``
        (as the data transform drew them); ``None`` draws one per slice here.
        ``compact``: ``(lr_kspace, stage_targets)`` stored by compact shards instead of the
        HR images (``hr_images`` is then ignored; :func:`~.degradation.from_lr_kspace`).
        """
        if compact is not None:
            lr_kspace, targets = compact
            batch, coils, h, w = lr_kspace.shape
            mask = self._batch_mask(mask, batch, (h, w), lr_kspace.device)
            noise = None
            if self.noise_std > 0:
                noise = torch.randn(batch, coils, h, w, dtype=lr_kspace.dtype, device=lr_kspace.device) * self.noise_std
            return from_lr_kspace(lr_kspace, targets, mask, self.scale, noise, self.steps)
        if hr_images.dim() != 4:
            raise ValueError(f"hr_images must be (B, C, H, W) complex, got shape {tuple(hr_images.shape)}")
        x = as_complex(hr_images)
        batch, coils = x.shape[:2]
        lr = self.lr_shape(x.shape[-2:])
        mask = self._batch_mask(mask, batch, lr, x.device)
        noise = None
        if self.noise_std > 0:  # drawn for the whole batch, as randn_like(LR k-space)
            noise = torch.randn(batch, coils, *lr, dtype=x.dtype, device=x.device) * self.noise_std
        return simulate(x, mask, self.scale, noise, self.steps)

    def forward(self, hr_images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Degraded:
        return self.simulate(hr_images, mask)

    def operator(self, mask: torch.Tensor, maps: Optional[torch.Tensor] = None,
                 image_shape: Optional[Sequence[int]] = None) -> SenseOperator:
        """``A = M · F · T · S`` from an image grid to the measured LR samples, with ``Aᴴ``.

        ``maps`` ``(B, C, H, W)``: coil sensitivities on the image grid (``None``:
        single-coil, ``S = 1``; then ``image_shape`` gives the image grid, default the LR grid).
        """
        lr = (int(mask.shape[-2]), int(mask.shape[-1]))
        return SenseOperator(maps, mask, lr_shape=lr, image_shape=image_shape)

    @staticmethod
    def estimate_maps(lr_observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Coil maps from the acquired calibration lines (RSS-normalised; :func:`~.sense.estimate_maps_rss`)."""
        return estimate_maps_rss(lr_observed, mask)

    # ------------------------------------------------------------------ checkpoints
    def spec(self) -> Dict[str, Any]:
        """Plain values that rebuild this acquisition (stored in checkpoints)."""
        return {
            "scale": self.scale,
            "mask": dataclasses.asdict(self.mask) if self.mask is not None else None,
            "noise_std": self.noise_std,
            "kspace_steps": [dict(s) for s in self.kspace_steps],
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = "checkpoint") -> "Acquisition":
        """Rebuild from :meth:`spec`, accepting registered mask and step names only.

        A checkpoint (``where``) must never make us import code: a name that is
        not registered (a dotted path, say) is an error naming it.
        """
        mask = spec.get("mask")
        names = [("mask", mask.get("name"))] if isinstance(mask, Mapping) else []
        names += [("k-space step", s.get("name")) for s in spec.get("kspace_steps") or [] if isinstance(s, Mapping)]
        for kind, name in names:
            registry = MASKS if kind == "mask" else KSPACE_STEPS
            if not isinstance(name, str) or name not in registry.names():
                raise ValueError(
                    f"{where} names the {kind} {name!r}, which is not registered; a {where} can only "
                    f"name registered {kind}s (registered: {registry.names()})"
                )
        return cls(scale=spec["scale"], mask=mask, noise_std=spec.get("noise_std", 0.0),
                   kspace_steps=spec.get("kspace_steps"))

    def with_mask(self, mask: MaskLike) -> "Acquisition":
        """The same acquisition with another mask (inference and sweeps try other masks)."""
        steps = self.kspace_steps if len(self.kspace_steps) == len(self.steps) else self.steps
        return Acquisition(self.scale, mask, self.noise_std, steps)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mask={self.mask_name!r}, noise_std={self.noise_std}, steps={len(self.steps)}"
