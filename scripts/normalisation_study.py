#!/usr/bin/env python
"""Side by side: how the per-slice normalisation and patch training interact (docs/REAL_DATA.md).

    python scripts/normalisation_study.py --out outputs/normalisation_study

Writes a background-heavy fastMRI-format set (the demo's phantoms, ``recon_size`` R, read on the
whole readout-oversampled field of view ``[2R, R]``: half the rows are background, as in brain
scans), then trains each model under each scale rule on readout patches and on full slices, and
validates on full slices. Rules:

* ``crop-first``: the rule before issue 22: the patch is cut from the HR image, degraded on its
  own, and normalised by its own mean magnitude (a background patch by its noise);
* ``slice`` (ours): the whole slice is degraded, the patch cut afterwards, and the scale is the
  whole slice's (``models/patches.py``);
* ``volume``: as ``slice``, but the scale is the volume's: the file's ``max`` attribute (fastMRI
  keeps it per volume) times the training set's median (slice scale / volume max);
* ``slice, abs``, ``slice, relu`` and ``slice, signed``: ``slice`` with the magnitude output made
  non-negative by ``|·|`` or by a plain ``max(·, 0)`` instead of the straight-through clamp, or left
  signed (as before issue 22).

Prints a markdown table (and writes it to OUT/study.md). On 2 CPU cores the default set takes
about 25 minutes; ``--steps`` and ``--models`` shorten it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytorch_lightning as pl
import torch

from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.io import run_script
from iconet_fastmri.models import ICONet, UnetSR
from iconet_fastmri.models.common import per_slice_scale
from iconet_fastmri.pl_modules import IconetDataModule, IconetModule

RULES = ("crop-first", "slice", "volume", "slice, abs", "slice, relu", "slice, signed")


class CropFirst(IconetModule):
    """The former patch path: cut the HR image first, degrade the patch alone, normalise it by itself."""

    def training_step(self, batch, batch_idx):
        if batch.patch is not None:
            s = self.scale
            rows = [(int(r), int(c), int(h), int(w)) for r, c, h, w in batch.patch.tolist()]
            hr = torch.stack([batch.hr_images[b, :, r:r + h, c:c + w] for b, (r, c, h, w) in enumerate(rows)])
            mask = torch.stack([batch.mask[b, :, r // s:(r + h) // s, c // s:(c + w) // s]
                                for b, (r, c, h, w) in enumerate(rows)])
            batch = batch._replace(hr_images=hr, mask=mask, patch=None)
        return super().training_step(batch, batch_idx)


class VolumeScale(IconetModule):
    """Scale = the volume's ``max`` attribute times a fixed ratio, in training and validation."""

    ratio = 1.0

    def degrade(self, batch):
        deg = super().degrade(batch)
        # Study only: the scale rides on the Degraded batch to model_input (no state kept between batches).
        deg.volume_scale = (batch.max_value.to(deg.lr_input.device, torch.float32) * self.ratio).view(-1, 1, 1, 1)
        return deg

    def model_input(self, deg):
        inputs = super().model_input(deg)
        inputs.norm_scale = deg.volume_scale
        return inputs


def _median_ratio(dm: IconetDataModule) -> float:
    """Median over training slices of (whole-slice scale of the LR input) / (volume max)."""
    dm.setup("fit")
    module = IconetModule(UnetSR(scale=dm.scale, chans=4, num_pool_layers=1), acquisition=dm.acquisition)
    ratios = []
    for batch in dm.val_dataloader():
        deg = module.degrade(batch)
        scale = per_slice_scale(module.model_input(deg).image).flatten()
        ratios += (scale.double() / batch.max_value).tolist()
    return float(np.median(ratios))


def _model(name: str):
    if name == "unet_sr":
        return UnetSR(scale=2, chans=16, num_pool_layers=3)
    return ICONet(scale=2, width=16, blocks_per_stage=1)


def run_one(root: Path, model: str, rule: str, patch, batch_size: int, steps: int, ratio: float,
            hr_crop) -> Dict[str, float]:
    pl.seed_everything(0, workers=True)
    dm = IconetDataModule(data_path=str(root), scale=2, hr_crop=hr_crop, patch_size=patch, batch_size=batch_size,
                          num_workers=0, use_dataset_cache=False,
                          mask={"name": "random", "center_fractions": [0.08], "accelerations": [4]})
    cls = {"crop-first": CropFirst, "volume": VolumeScale}.get(rule, IconetModule)
    net = _model(model)
    if rule == "slice, signed":
        net.nonnegative = False
    if rule == "slice, relu":
        net.magnitude_of = torch.relu
    if rule == "slice, abs":
        net.magnitude_of = torch.abs
    module = cls(net, acquisition=dm.acquisition, lr=1e-3, scheduler="none")
    if rule == "volume":
        module.ratio = ratio
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, check_val_every_n_epoch=10**6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return {k.split("/", 1)[1]: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recon_size", type=int, default=96, help="object box R; HR grid [2R, R]")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--models", nargs="+", default=["unet_sr", "iconet"], choices=["unet_sr", "iconet"])
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--patch_rows", type=int, default=None, help="readout patch height (default R/2)")
    args = p.parse_args(argv)
    R = args.recon_size
    hr_crop = (2 * R, R)
    patch_rows = args.patch_rows or R // 2
    root = args.out / "data"
    if not (root / "singlecoil_val").is_dir():
        write_fastmri_dataset(root / "singlecoil_train", "singlecoil", num_volumes=8, slices=8, recon_size=(R, R),
                              seed=11, anatomy="brain")
        write_fastmri_dataset(root / "singlecoil_val", "singlecoil", num_volumes=2, slices=8, recon_size=(R, R),
                              seed=12, anatomy="brain", first_index=100)
    dm = IconetDataModule(data_path=str(root), scale=2, hr_crop=hr_crop, num_workers=0, use_dataset_cache=False,
                          mask={"name": "random", "center_fractions": [0.08], "accelerations": [4]})
    ratio = _median_ratio(dm)
    # Same pixels per step: full slices at batch 4, patches of 1/k of the rows at batch 4k.
    k = hr_crop[0] // patch_rows
    setups = [("full", None, 4), (f"[{patch_rows}, {R}]", (patch_rows, R), 4 * k)]
    lines = ["| model | rule | training on | PSNR | SSIM | bicubic PSNR / SSIM | SSIM background | "
             "background bias (x1e-3 of max) | negative pixels | minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows: List[str] = []
    for model in args.models:
        for rule in args.rules:
            for label, patch, batch in setups:
                if patch is None and rule == "crop-first":
                    continue  # on full slices the former rule is the slice rule
                start = time.perf_counter()
                m = run_one(root, model, rule, patch, batch, args.steps, ratio, hr_crop)
                row = (f"| {model} | {rule} | {label}, batch {batch} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
                       f"{m['psnr_bicubic']:.2f} / {m['ssim_bicubic']:.4f} | {m.get('ssim_background', float('nan')):.4f} | "
                       f"{1e3 * m.get('background_bias', float('nan')):+.2f} | {m.get('negative_fraction', float('nan')):.4f} | "
                       f"{(time.perf_counter() - start) / 60:.1f} |")
                print(row, flush=True)
                rows.append(row)
    table = "\n".join(lines + rows)
    header = (f"HR grid {list(hr_crop)} (object box {R}x{R}, readout-oversampled FOV), x2, random R=4 cf 0.08, "
              f"{args.steps} steps, Adam 1e-3; volume ratio {ratio:.4f}\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.md").write_text(header + table + "\n")
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
