#!/usr/bin/env python
"""Write synthetic demo data in the fastMRI HDF5 layout.

Creates ``OUT/{challenge}_train`` and ``OUT/{challenge}_val`` (e.g.
``demo_data/singlecoil_train``) with anatomy-like phantoms, readable by
``fastmri.data.SliceDataset``. Re-running with the same arguments is a no-op
unless ``--overwrite`` is given. See :mod:`iconet_fastmri.demo`.

Example (from the repository root)::

    python scripts/make_demo_data.py --out demo_data --challenge both \
        --train_volumes 10 --val_volumes 3 --slices 8 --recon_size 128 128
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import List, Optional

from iconet_fastmri.demo import ANATOMIES, make_demo_splits


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    parser = argparse.ArgumentParser(
        description="Write synthetic fastMRI-format demo data (train/val splits).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_data"),
                        help="root folder; splits go to OUT/{challenge}_{train,val}")
    parser.add_argument("--challenge", choices=("singlecoil", "multicoil", "both"),
                        default="singlecoil")
    parser.add_argument("--train_volumes", type=int, default=10)
    parser.add_argument("--val_volumes", type=int, default=3)
    parser.add_argument("--slices", type=int, default=8, help="slices per volume")
    parser.add_argument("--recon_size", type=int, nargs=2, default=(128, 128),
                        metavar=("H", "W"), help="target size; k-space is (2H, ~1.125W)")
    parser.add_argument("--coils", type=int, default=8, help="coils (multicoil only)")
    parser.add_argument("--anatomy", choices=ANATOMIES, default="mixed")
    parser.add_argument("--noise_level", type=float, default=0.005,
                        help="k-space noise std relative to the image maximum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite even if the splits are already complete")
    return parser


def _summary(folder: pathlib.Path) -> str:
    files = sorted(folder.glob("*.h5"))
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    return f"{folder}: {len(files)} files, {size_mb:.1f} MiB"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    challenges = ("singlecoil", "multicoil") if args.challenge == "both" else (args.challenge,)
    for challenge in challenges:
        start = time.perf_counter()
        train_dir, val_dir = make_demo_splits(
            args.out,
            challenge=challenge,
            train_volumes=args.train_volumes,
            val_volumes=args.val_volumes,
            slices=args.slices,
            recon_size=tuple(args.recon_size),
            seed=args.seed,
            overwrite=args.overwrite,
            num_coils=args.coils,
            anatomy=args.anatomy,
            noise_level=args.noise_level,
            progress=True,
        )
        elapsed = time.perf_counter() - start
        print(f"[{challenge}] done in {elapsed:.2f} s (an up-to-date split is not rewritten)")
        print("  " + _summary(train_dir))
        print("  " + _summary(val_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
