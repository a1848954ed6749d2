#!/usr/bin/env python
"""Reconstruct a folder of fastMRI HDF5 volumes with a checkpoint or a baseline.

Writes one HDF5 per volume with the dataset ``reconstruction`` (float32,
slices x H x W on the HR grid; fastMRI's submission format) and attributes
recording the scale, mask, seed rule and effective acceleration.

Examples::

    python scripts/run_inference.py --checkpoint runs/demo/checkpoints/last.ckpt \\
        --data_path demo_data/singlecoil_val --out outputs/iconet
    python scripts/run_inference.py --baseline zero_filled_bicubic --scale 2 \\
        --data_path demo_data/singlecoil_val --out outputs/bicubic --hr_crop 128 128

Settings not given come from the checkpoint's training run (scale, challenge,
mask, HR grid). Masks are seeded per (file, slice): a rerun gives identical files.

--out must lie outside --data_path (it may not be, contain or lie inside it, with
or without --overwrite). A refusal prints its message and exits with code 1;
--debug (or ICONET_DEBUG=1) shows the Python traceback.
"""

import argparse
import dataclasses
import sys
from pathlib import Path


from iconet_fastmri.checkpoints import load_checkpoint
from iconet_fastmri.acquired import reconstruct_acquired
from iconet_fastmri.data.lr_files import is_lr_acquisition_folder
from iconet_fastmri.inference import BASELINES, run_inference
from iconet_fastmri.io import check_outputs_apart, run_script
from iconet_fastmri.physics.masks import MaskConfig, available_masks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Lightning checkpoint of IconetModule (ICONet, unet_sr, ...)")
    src.add_argument("--baseline", choices=sorted(BASELINES), help="a baseline that needs no checkpoint")
    p.add_argument("--data_path", type=Path, required=True, help="folder of fastMRI .h5 files")
    p.add_argument("--out", type=Path, required=True, help="output folder (one .h5 per volume)")
    p.add_argument("--challenge", choices=["singlecoil", "multicoil"], default=None)
    p.add_argument("--scale", type=int, default=None)
    p.add_argument("--hr_crop", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--mask_name", default=None, help=f"one of {available_masks()}")
    p.add_argument("--center_fractions", type=float, nargs="+", default=None)
    p.add_argument("--accelerations", type=float, nargs="+", default=None)
    p.add_argument("--mask_path", default=None, help="for --mask_name file")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--skip_bad_files", action="store_true", help="skip corrupt input files with a warning")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--pad_if_smaller", choices=["true", "false"], default=None,
                   help="zero-pad images narrower than the HR grid (default: the checkpoint's; baselines: false)")
    p.add_argument("--part", choices=["val", "test"], default=None,
                   help="only the volumes of this part of a val folder split by --test_fraction")
    p.add_argument("--test_fraction", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--mask_seed_rule", choices=["slice", "volume"], default=None,
                   help="validation masks per slice (ours) or per volume (fastMRI's); default: the checkpoint's")
    p.add_argument("--acquired", action="store_true",
                   help="--data_path holds real low-resolution acquisitions (scripts/make_lr_acquisition.py); "
                        "no targets: writes the reconstructions and acquired.csv with the DC residual")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (or set ICONET_DEBUG=1)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_outputs_apart({"--out": args.out}, {"--data_path": args.data_path})  # before any work
    if not args.acquired and is_lr_acquisition_folder(args.data_path):
        print(f"{args.data_path} holds low-resolution acquisition files (attribute lr_scale): reconstructing them "
              f"as acquired (--acquired)")
        args.acquired = True
    if args.acquired:
        if args.checkpoint is None:
            raise ValueError("--acquired reconstructs with a trained model: give --checkpoint")
        written, rows = reconstruct_acquired(args.checkpoint, args.data_path, args.out, batch_size=args.batch_size,
                                             device=args.device, overwrite=args.overwrite)
        for row in rows:
            print(", ".join(f"{k} {v}" for k, v in row.items()))
        print(f"wrote {len(written)} volume(s) and acquired.csv to {args.out}")
        return
    mask = None
    overrides = {
        "name": args.mask_name,
        "center_fractions": args.center_fractions,
        "accelerations": args.accelerations,
        "path": args.mask_path,
    }
    if any(v is not None for v in overrides.values()):
        base = MaskConfig()
        if args.checkpoint is not None:
            trained = load_checkpoint(args.checkpoint).get("IconetDataModule") or {}
            if "mask" in trained:
                base = MaskConfig(**trained["mask"])
        mask = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    written = run_inference(
        data_path=args.data_path,
        out_dir=args.out,
        checkpoint=args.checkpoint,
        baseline=args.baseline,
        challenge=args.challenge,
        scale=args.scale,
        mask=mask,
        hr_crop=tuple(args.hr_crop) if args.hr_crop else None,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        skip_bad_files=args.skip_bad_files,
        pad_if_smaller=None if args.pad_if_smaller is None else args.pad_if_smaller == "true",
        part=args.part,
        test_fraction=args.test_fraction,
        mask_seed_rule=args.mask_seed_rule,
    )
    print(f"wrote {len(written)} volume(s) to {args.out}")


if __name__ == "__main__":
    sys.exit(run_script(main))
