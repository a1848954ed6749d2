#!/usr/bin/env python
"""How far the input from a low-resolution acquisition file is from the retrospective input (docs/ACQUIRED.md).

    python scripts/compare_acquired_input.py --data_path demo_data/singlecoil_val --hr_crop 128 128 --scale 2

Writes fully sampled low-resolution files from each HR file of ``--data_path`` (to a temporary
folder), puts them on the model's grid (``data/lr_files.py: model_grid_kspace``) and compares their
LR input with the retrospective pipeline's (crop, then truncate) slice by slice: the relative L2
difference, over the whole image and inside a border margin. Without oversampling it is 0 up to
float32 rounding; with oversampling it measures the crop/truncation order, and is printed beside the
bound derived from the operators (``data/lr_files.py: crop_order_difference``).
"""

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from fastmri.data import SliceDataset

from iconet_fastmri.data.lr_files import crop_order_difference, model_grid_kspace, read_lr_file, write_lr_file
from iconet_fastmri.data.transforms import IconetDataTransform
from iconet_fastmri.io import run_script
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.fft import ifft2c
from iconet_fastmri.physics.operators import rss


def _fully_sampled(shape, seed=None):
    return torch.ones(shape), shape[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", type=Path, required=True, help="folder of fastMRI .h5 files (read only)")
    p.add_argument("--challenge", choices=("singlecoil", "multicoil"), default="singlecoil")
    p.add_argument("--hr_crop", type=int, nargs=2, default=(320, 320))
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--margin", type=int, default=8, help="LR pixels left out at the border for the inner figure")
    args = p.parse_args(argv)
    hr = tuple(args.hr_crop)
    lr = (hr[0] // args.scale, hr[1] // args.scale)
    m = args.margin
    whole, inner, bound = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = SliceDataset(args.data_path, args.challenge, use_dataset_cache=False,
                               transform=IconetDataTransform(Acquisition(args.scale, _fully_sampled), hr_crop=hr))
        scans = {}
        for i in range(len(dataset)):
            sample = dataset[i]
            if sample.fname not in scans:
                path = write_lr_file(args.data_path / sample.fname, Path(tmp) / sample.fname, args.scale, _fully_sampled)
                scans[sample.fname] = read_lr_file(path)
            retro = Acquisition(args.scale).simulate(sample.hr_images[None], sample.mask[None]).lr_input[0, 0]
            kspace, _ = model_grid_kspace(scans[sample.fname], sample.slice_num, args.scale, lr, with_mask=False)
            real = rss(ifft2c(kspace)[None])[0, 0]
            whole.append(float((real - retro).norm() / retro.norm()))
            inner.append(float((real - retro)[m:-m, m:-m].norm() / retro[m:-m, m:-m].norm()))
            with h5py.File(args.data_path / sample.fname) as f:
                kspace_hr = torch.from_numpy(f["kspace"][sample.slice_num])
            order = crop_order_difference(kspace_hr if kspace_hr.dim() == 3 else kspace_hr[None], hr, args.scale)
            bound.append(float(order["bound"].norm() / retro.norm()))  # per-coil bounds -> the RSS image's
            if whole[-1] > bound[-1] * (1 + 1e-4):
                raise AssertionError(f"{sample.fname} slice {sample.slice_num}: difference {whole[-1]:.5f} over the bound {bound[-1]:.5f}")
    print(f"{len(whole)} slices, LR grid {lr[0]}x{lr[1]}: relative L2 difference of the LR input, acquired file vs "
          f"retrospective: median {np.median(whole):.4f}, max {np.max(whole):.4f}; inside a {m}-pixel margin: "
          f"median {np.median(inner):.4f}, max {np.max(inner):.4f}; derived bound (whole image): median "
          f"{np.median(bound):.4f}, max {np.max(bound):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
