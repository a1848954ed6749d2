#!/usr/bin/env python
"""Turn fastMRI files into low-resolution acquisition files (prospective-style test sets).

    python scripts/make_lr_acquisition.py --data_path demo_data/singlecoil_val --out lr_data/singlecoil_val \\
        --scale 2 --mask random --accelerations 4 --center_fractions 0.08

For each ``*.h5`` of ``--data_path``: the central (H_k/s, W_k/s) block of its k-space (the
samples an s-times coarser scan of the same field of view acquires; readout oversampling kept),
undersampled with the mask (drawn with the validation seeds, so the retrospective pipeline on the
source draws the same masks) and zero-filled where not acquired, the mask, and the ISMRMRD header
rewritten to the coarser matrix (``iconet_fastmri/data/lr_files.py``). Nothing is written into or
around ``--data_path``; existing outputs are refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from iconet_fastmri.data.lr_files import write_lr_file
from iconet_fastmri.io import check_outputs_apart, run_script
from iconet_fastmri.physics.masks import MASK_SEED_RULES, MaskConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", type=Path, required=True, help="folder of fastMRI .h5 files (read only)")
    p.add_argument("--out", type=Path, required=True, help="folder for the low-resolution files")
    p.add_argument("--scale", type=int, required=True, choices=(2, 4, 8))
    p.add_argument("--mask", default="random", help="a registered mask name (random, equispaced, poisson, ...)")
    p.add_argument("--accelerations", type=float, nargs="+", default=[4.0], help="R on the low-resolution grid")
    p.add_argument("--center_fractions", type=float, nargs="+", default=[0.08])
    p.add_argument("--mask_seed_rule", choices=MASK_SEED_RULES, default="slice")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    files = sorted(args.data_path.glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"--data_path {args.data_path}: no .h5 files")
    check_outputs_apart({"--out": args.out}, {"--data_path": args.data_path})
    existing = [f.name for f in files if (args.out / f.name).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already holds {len(existing)} of these files (e.g. {existing[0]}); "
                              f"pass --overwrite to replace them")
    config = MaskConfig(name=args.mask, center_fractions=list(args.center_fractions),
                        accelerations=list(args.accelerations))
    mask_func = config.build()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, src in enumerate(files, 1):
        write_lr_file(src, args.out / src.name, args.scale, mask_func, mask_spec=vars(config),
                      seed_rule=args.mask_seed_rule)
        print(f"[{i}/{len(files)}] {args.out / src.name}", flush=True)
    print(f"wrote {len(files)} low-resolution acquisition file(s) to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
