#!/usr/bin/env python
"""Convert fastMRI folders into shards for training at scale (litdata format; resumable).

    python scripts/prepare_shards.py --data_path /data/knee --challenge multicoil --hr_crop 320 320 \\
        --out /scratch/knee_shards

Each split folder that ``--data_path`` holds (``multicoil_train``, ``multicoil_val``, ...,
found as ``--data.data_path`` finds them; or name them with ``--split NAME=FOLDER``) becomes
``<out>/<split>/``. Per slice it stores the coil images already on the HR grid (15x320x320
instead of 15x640x368 k-space: no large inverse FFT per step) and the file's target; per volume,
the header metadata. Every slice is checked for NaN, Inf, all-zero and overflowing values while it
is written, so training from the shards never scans the raw data again.

Train from them with ``--data.format shards --data.data_path <out>`` (a folder, or an object-store
URL with ``--data.shard_cache``); the run's challenge, hr_crop and pad_if_smaller must match.
Killed, it continues where it stopped when run again with the same arguments. Nothing is written
into the source folders. Details: docs/SHARDS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from iconet_fastmri.data.shard_writer import prepare_shards
from iconet_fastmri.data.shards import PRECISIONS, ShardSettings
from iconet_fastmri.io import run_script


def _sources(args) -> dict:
    if args.split:
        pairs = [s.split("=", 1) for s in args.split]
        bad = [s for s, pair in zip(args.split, pairs) if len(pair) != 2 or not pair[0] or not pair[1]]
        if bad:
            raise ValueError(f"--split takes NAME=FOLDER, got {bad[0]!r}")
        return {name: Path(folder) for name, folder in pairs}
    if args.data_path is None:
        raise ValueError("give --data_path (a folder of fastMRI split folders) or --split NAME=FOLDER")
    from iconet_fastmri.pl_modules.data_module import IconetDataModule

    dm = IconetDataModule(data_path=str(args.data_path), challenge=args.challenge, anatomy=args.anatomy,
                          hr_crop=tuple(args.hr_crop))
    found = {}
    for split in ("train", "val", "test"):
        try:
            found[split] = dm.split_path(split)
        except FileNotFoundError:
            continue
    if not found:
        raise FileNotFoundError(f"--data_path {args.data_path}: no {args.challenge}_train/val/test folders")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", type=Path, help="folder holding fastMRI split folders (read only)")
    p.add_argument("--split", action="append", metavar="NAME=FOLDER", help="an explicit split folder (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="the shard set's folder (new, empty, or unfinished)")
    p.add_argument("--challenge", choices=("singlecoil", "multicoil"), default="multicoil")
    p.add_argument("--anatomy", choices=("knee", "brain"), default=None)
    p.add_argument("--hr_crop", type=int, nargs=2, default=[320, 320], metavar=("H", "W"))
    p.add_argument("--pad_if_smaller", action="store_true", help="zero-pad images smaller than --hr_crop")
    p.add_argument("--precision", choices=PRECISIONS, default="complex64",
                   help="float16: half the bytes (docs/SHARDS.md has its effect on the metrics)")
    p.add_argument("--espirit_scale", type=int, default=None,
                   help="also store ESPIRiT maps of the LR k-space at this scale (coil_maps: espirit; slow)")
    p.add_argument("--espirit_center_fraction", type=float, default=None,
                   help="the training mask's center fraction: the maps use round(W/s * cf) central lines, as it acquires")
    p.add_argument("--compact_scale", type=int, default=None,
                   help="compact layout for one scale: the LR k-space and the stage targets instead of HR images")
    p.add_argument("--volumes_per_part", type=int, default=16, help="whole volumes per part (the unit of resuming)")
    p.add_argument("--chunk_bytes", default="256MB", help="litdata chunk size")
    p.add_argument("--skip_bad_files", action="store_true", help="leave out bad files (named) instead of stopping")
    args = p.parse_args(argv)
    if args.volumes_per_part < 1:
        raise ValueError(f"--volumes_per_part must be >= 1, got {args.volumes_per_part}")
    sources = _sources(args)
    espirit = None
    if (args.espirit_scale is None) != (args.espirit_center_fraction is None):
        raise ValueError("ESPIRiT maps need both --espirit_scale and --espirit_center_fraction")
    if args.espirit_scale is not None:
        espirit = (args.espirit_scale, round(args.hr_crop[1] // args.espirit_scale * args.espirit_center_fraction))
    settings = ShardSettings(args.challenge, tuple(args.hr_crop), args.pad_if_smaller, args.precision, espirit,
                             args.compact_scale)
    start = time.perf_counter()
    manifest = prepare_shards(sources, args.out, settings, args.volumes_per_part, args.chunk_bytes,
                              args.skip_bad_files)
    for split, entry in manifest["splits"].items():
        slices = sum(part["slices"] for part in entry["parts"])
        volumes = sum(len(part["volumes"]) for part in entry["parts"])
        print(f"{split}: {volumes} volume(s), {slices} slice(s) in {len(entry['parts'])} part(s)"
              + (f"; skipped {', '.join(entry['skipped'])}" if entry.get("skipped") else ""))
    print(f"shards in {args.out} ({time.perf_counter() - start:.1f} s); train with "
          f"--data.format shards --data.data_path {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
