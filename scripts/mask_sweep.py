#!/usr/bin/env python
"""Methods x masks x accelerations on one data folder: a table and PSNR/SSIM plots against s²·R.

    python scripts/mask_sweep.py --methods runs/demo/checkpoints/last.ckpt zero_filled_bicubic \\
        --scale 2 --hr_crop 128 128 --data_path demo_data/singlecoil_val \\
        --masks random equispaced poisson --accelerations 2 4 8 --out outputs/sweep

Writes sweep.csv, sweep.md and sweep.png to --out (predictions under --out/predictions/).
See iconet_fastmri/sweeps.py.
"""

import argparse
import time
from pathlib import Path

from iconet_fastmri.sweeps import mask_sweep, plot_sweep, write_sweep_table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", required=True, help="checkpoints and/or baseline names")
    p.add_argument("--data_path", type=Path, required=True, help="folder of fastMRI .h5 files")
    p.add_argument("--masks", nargs="+", required=True)
    p.add_argument("--accelerations", type=float, nargs="+", required=True, help="R on the LR grid")
    p.add_argument("--center_fractions", type=float, nargs="+", default=[0.08])
    p.add_argument("--scale", type=int, default=None, help="needed for baselines")
    p.add_argument("--hr_crop", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = mask_sweep(args.data_path, args.out, args.methods, args.masks, args.accelerations,
                      scale=args.scale, hr_crop=tuple(args.hr_crop) if args.hr_crop else None,
                      center_fractions=args.center_fractions, bootstrap=args.bootstrap,
                      batch_size=args.batch_size, device=args.device, progress=True)
    _, md = write_sweep_table(rows, args.out)
    png = plot_sweep(rows, args.out / "sweep.png")
    print(md.read_text())
    print(f"{len(rows)} cells in {time.perf_counter() - start:.1f} s; table {md}, plot {png}")


if __name__ == "__main__":
    main()
