"""Leaderboard-style inference: fastMRI HDF5 folder -> one reconstruction file per volume.

Output layout (fastMRI's submission format, as ``fastmri.save_reconstructions``
writes it): ``{out_dir}/{fname}`` holding the single dataset
``reconstruction``, float32 ``(slices, H, W)`` on the HR grid. We add
attributes that record how the input was simulated:

==============================  ==============================================
``method``                      model/baseline name
``checkpoint``                  checkpoint path ("" for baselines)
``challenge``, ``acquisition``  from the data
``scale``                       SR factor s
``hr_crop``                     HR grid (H, W)
``pad_if_smaller``              whether narrow images were zero-padded to it
``mask_name``, ``mask_args``    the mask (``mask_args`` is JSON)
``mask_seed_rule``              how masks are seeded (deterministic per slice)
``acceleration``                nominal R on the LR grid
``effective_acceleration_lr``   measured LR samples / acquired samples (mean)
``effective_acceleration``      relative to the HR grid: s² × measured R
==============================  ==============================================

Each volume is written to a temporary file in the output folder and renamed
into place when complete, so a crash never leaves a half-written
``reconstruction`` that evaluation would score. Existing outputs are never
overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from .checkpoints import load_checkpoint
from .data.batching import collate_samples
from .data.dataset import IconetSliceDataset
from .data.splits import PartFilter, check_test_fraction
from .data.transforms import IconetDataTransform
from .divergence import check_finite_reconstruction, check_finite_state
from .models import build_model, model_from_spec
from .physics.acquisition import Acquisition
from .physics.masks import MaskConfig
from .pl_modules.iconet_module import IconetModule
from .io import check_outputs_apart
from .predictions import (
    MASK_SEED_RULE,
    VolumeAssembler,
    check_writable,
    volume_attributes,
    write_volume_atomic,
)

__all__ = ["BASELINES", "load_method", "run_inference", "write_volume_atomic", "check_writable", "MASK_SEED_RULE"]

#: Baselines that need no checkpoint, by their inference name.
BASELINES = {"zero_filled_bicubic": "bicubic", "zero_filled_sinc": "sinc"}


def load_method(
    checkpoint: Optional[Union[str, Path]] = None,
    baseline: Optional[str] = None,
    scale: Optional[int] = None,
) -> Tuple[IconetModule, Dict[str, Any], str]:
    """Build the module for a checkpoint or a named baseline.

    Returns:
        ``(module, data_settings, method_name)``; ``data_settings`` holds the
        training run's ``scale``, ``challenge``, ``hr_crop`` and ``mask`` when
        the checkpoint has them (empty for baselines).
    """
    if (checkpoint is None) == (baseline is None):
        raise ValueError("give exactly one of a checkpoint or a baseline name")
    if baseline is not None:
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose one of {sorted(BASELINES)}")
        if scale is None:
            raise ValueError(f"baseline {baseline!r} needs --scale")
        module = IconetModule(model=build_model(BASELINES[baseline], scale=scale))
        return module.eval(), {}, baseline
    ckpt = load_checkpoint(checkpoint)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if not hparams:
        raise ValueError(f"checkpoint {checkpoint} has no hyper_parameters: not an IconetModule checkpoint")
    spec = hparams.pop("model", None)
    if not isinstance(spec, dict):
        raise ValueError(
            f"checkpoint {checkpoint} does not record its model as {{'class_path', 'init_args'}} "
            f"(written by an older iconet-fastmri?); retrain or convert it"
        )
    try:
        model = model_from_spec(spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {checkpoint}: {err}") from err
    if scale is not None and int(scale) != int(model.scale):
        raise ValueError(
            f"checkpoint {checkpoint} was trained at scale {model.scale}; a model cannot "
            f"run at scale {scale}"
        )
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {checkpoint} holds no state_dict: not a Lightning checkpoint")
    check_finite_state(state, f"checkpoint {checkpoint}")  # NaN weights would write NaN reconstructions
    data = dict(ckpt.get("IconetDataModule") or {})
    acquisition = Acquisition.from_spec(_acquisition_spec(hparams, data, model.scale), where=f"checkpoint {checkpoint}")
    # Only the module's own settings are taken, and never a path or a compile request.
    accepted = set(inspect.signature(IconetModule.__init__).parameters) - {"self", "model", "acquisition"}
    settings = {k: v for k, v in hparams.items() if k in accepted}
    settings.update(compile=False)
    module = IconetModule(model=model, acquisition=acquisition, **settings)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not match its architecture: missing {missing}, unexpected {unexpected}")
    return module.eval(), data, module.method_name


def _acquisition_spec(hparams: Dict[str, Any], data: Dict[str, Any], scale: int) -> Dict[str, Any]:
    """The training run's acquisition: ``hparams["acquisition"]``, or, in older checkpoints, its scattered parts."""
    spec = hparams.get("acquisition")
    if isinstance(spec, dict):
        return spec
    return {"scale": scale, "mask": data.get("mask"), "noise_std": hparams.get("noise_std", 0.0),
            "kspace_steps": hparams.get("kspace_steps") or []}


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def run_inference(
    data_path: Union[str, Path],
    out_dir: Union[str, Path],
    checkpoint: Optional[Union[str, Path]] = None,
    baseline: Optional[str] = None,
    challenge: Optional[str] = None,
    scale: Optional[int] = None,
    mask: Optional[MaskConfig] = None,
    hr_crop: Optional[Tuple[int, int]] = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
    skip_bad_files: bool = False,
    pad_if_smaller: Optional[bool] = None,
    part: Optional[str] = None,
    test_fraction: Optional[float] = None,
    mask_seed_rule: Optional[str] = None,
) -> List[Path]:
    """Reconstruct every volume of ``data_path`` into ``out_dir``.

    Settings not given (challenge, scale, mask, hr_crop) come from the
    checkpoint's training run; for baselines they must be given (``scale``)
    or take the package defaults (singlecoil, fastMRI random mask R=4 cf=0.08,
    320x320).

    ``part`` (``"val"`` or ``"test"``) reconstructs only the volumes of that
    part of a val folder split by ``test_fraction`` (default: the
    checkpoint's), as the data module's ``test_fraction`` defines it.
    ``mask_seed_rule`` defaults to the checkpoint's (``"slice"``).

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    check_outputs_apart({"out_dir": out_dir}, {"data_path": data_path})  # never over, around or into the input
    check_writable(out_dir)  # before any model or data work
    module, trained, method = load_method(checkpoint, baseline, scale)
    scale = int(scale if scale is not None else trained.get("scale", module.scale))
    challenge = challenge or trained.get("challenge") or "singlecoil"
    if mask is None:  # the checkpoint's mask (registered names only: Acquisition.from_spec), else the default
        mask = module.acquisition.mask or MaskConfig()
    hr = tuple(hr_crop or trained.get("hr_crop") or (320, 320))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device)

    pad = bool(trained.get("pad_if_smaller", False)) if pad_if_smaller is None else pad_if_smaller
    seed_rule = mask_seed_rule or trained.get("mask_seed_rule") or "slice"
    if mask is not module.acquisition.mask:
        module.acquisition = module.acquisition.with_mask(mask)
    transform = IconetDataTransform(
        module.acquisition, hr, use_seed=True, pad_if_smaller=pad, mask_seed_rule=seed_rule
    )
    fraction = check_test_fraction(test_fraction if test_fraction is not None else trained.get("test_fraction"))
    if part is not None and fraction is None:
        raise ValueError(f"part={part!r} needs a test_fraction (none given and none in the checkpoint)")
    dataset = IconetSliceDataset(
        # The per-user cache: a val folder scanned for bad values by training is not read twice.
        data_path, challenge, transform=transform, use_dataset_cache=True, skip_bad_files=skip_bad_files,
        progress=progress, raw_sample_filter=None if part is None else PartFilter(part, fraction),
    )
    expected = dataset.slices_per_volume()
    existing = sorted(name for name in expected if (out_dir / name).exists())
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds results for {len(existing)} volume(s) (e.g. {existing[0]}); "
            f"pass --overwrite to replace them"
        )
    acquisitions = {Path(s.fname).name: str(s.metadata.get("acquisition", "")) for s in dataset.raw_samples}
    attrs = volume_attributes(method, str(checkpoint) if checkpoint else None, challenge, scale, hr, pad, mask,
                              seed_rule)
    assembler = VolumeAssembler(out_dir, expected, attrs, acquisitions)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_samples
    )
    with torch.inference_mode():
        for batch in _progress(loader, len(loader), f"{method} x{scale}", progress):
            batch = batch._replace(hr_images=batch.hr_images.to(device), mask=batch.mask.to(device))
            sr = module.reconstruct(batch).float().cpu().numpy()
            check_finite_reconstruction(sr, batch.fname, batch.slice_num, method)
            assembler.add_batch(batch.fname, batch.slice_num, sr, batch.mask)
    written = assembler.finish()
    return written
