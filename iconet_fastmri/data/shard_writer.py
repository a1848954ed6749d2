"""Write a shard set (:mod:`iconet_fastmri.data.shards`) from fastMRI split folders, resumably.

Files are validated as the HDF5 path validates them
(:class:`~iconet_fastmri.data.dataset.IconetSliceDataset`), then each part
(``volumes_per_part`` whole volumes in sorted order) is written with litdata's
``BinaryWriter``; the manifest lists a part only once it is complete, and is
rewritten atomically after each one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import h5py
import numpy as np
import torch
from fastmri.data.mri_data import FastMRIRawDataSample

from ..io import atomic_write_json, check_outputs_apart
from .dataset import IconetSliceDataset
from .shards import (_SPLIT_NAME, MANIFEST, SHARD_FORMAT, SHARD_VERSION, ShardSetError, ShardSettings, encode_compact,
                     encode_slice, read_manifest)
from .transforms import file_target, hr_coil_images
from ..physics.degradation import simulate
from ..physics.sense import espirit_maps

__all__ = ["prepare_shards"]

_PART = "part-{:05d}"


def lr_espirit_maps(lr_kspace: torch.Tensor, settings: ShardSettings, where: str) -> torch.Tensor:
    """ESPIRiT maps on the LR grid of ``settings.espirit = (scale, lines)`` from the slice's LR k-space.

    ``lr_kspace`` is the acquisition's ``T F x`` at that scale (the compact layout's own when it
    has one; :class:`~.shards.ShardSettings` refuses two scales); its calibration region is the
    full-height band of the ``lines`` central columns (fastMRI's 1D masks acquire it whole). A
    region too small for ESPIRiT is refused, naming the slice
    (:func:`~iconet_fastmri.physics.sense.espirit_maps`).
    """
    lines = settings.espirit[1]
    w = lr_kspace.shape[-1]
    band = torch.zeros(w)
    start = (w - lines + 1) // 2  # centred like fastMRI's mask functions: (w - lines + 1) // 2
    band[start:start + lines] = 1
    return torch.from_numpy(espirit_maps((lr_kspace * band).numpy(), lines, where=where))


def _volume_entry(dataset: IconetSliceDataset, fname: str, samples: List[FastMRIRawDataSample]) -> Dict[str, Any]:
    with h5py.File(fname, "r") as f:
        peak = f.attrs.get("max")
    return {
        "fname": Path(fname).name,
        "num_slices": len(samples),
        "metadata": json.loads(json.dumps(samples[0].metadata, default=_plain)),
        "max": None if peak is None else float(peak),
        "kspace_shape": list(dataset.kspace_shapes[fname]),
        "fingerprint": dataset.fingerprints[fname],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _write_part(dataset: IconetSliceDataset, volumes: Dict[str, List[FastMRIRawDataSample]], files: Sequence[str],
                part_dir: Path, settings: ShardSettings, chunk_bytes: str, progress: Callable[[int], None]) -> int:
    from litdata.streaming.writer import BinaryWriter

    if part_dir.exists():
        shutil.rmtree(part_dir)  # unfinished: not in the manifest
    part_dir.mkdir(parents=True)
    writer = BinaryWriter(cache_dir=str(part_dir), chunk_bytes=chunk_bytes)
    index = 0
    for fname in files:
        slices = sorted(s.slice_ind for s in volumes[fname])
        with h5py.File(fname, "r") as f:
            has_target = dataset.recons_key in f
            for i in slices:
                images, padded = hr_coil_images(f["kspace"][i], settings.hr_crop, settings.pad_if_smaller, fname, i)
                target = file_target(f[dataset.recons_key][i] if has_target else None, settings.hr_crop, padded)
                deg = None
                s = settings.compact_scale or (settings.espirit[0] if settings.espirit else None)
                if s is not None:  # the training path's own first results: its LR k-space and stage targets
                    deg = simulate(images[None], torch.ones(1, 1, images.shape[-2] // s, images.shape[-1] // s), s)
                maps = None if settings.espirit is None else lr_espirit_maps(
                    deg.lr_kspace[0], settings, f"{fname}, slice {i}")
                if settings.compact_scale is None:
                    item = encode_slice(images, target, i, settings.precision, maps)
                else:
                    item = encode_compact(deg.lr_kspace[0], [t[0] for t in deg.stage_targets], target, i, maps)
                writer.add_item(index, item)
                index += 1
                progress(1)
    writer.done()
    writer.merge(num_workers=1)
    return index


def prepare_shards(
    sources: Dict[str, Path],
    out: Path,
    settings: ShardSettings,
    volumes_per_part: int = 16,
    chunk_bytes: str = "256MB",
    skip_bad_files: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Convert fastMRI split folders into a shard set at ``out`` (resumable); returns the manifest.

    Args:
        sources: ``{split: folder}``, e.g. ``{"train": .../multicoil_train, "val": ...}``.
        out: the shard set's folder: new, empty, or a shard set being prepared
            with the same settings (then it continues). Nothing is written into
            the sources.
        settings: challenge, HR grid, padding and precision of the stored images.
        volumes_per_part: whole volumes per litdata dataset (the unit of resuming).
        chunk_bytes: litdata chunk size.
        skip_bad_files: leave out files that fail the checks (a warning names them) instead of stopping.
    """
    out = Path(out)
    check_outputs_apart({"--out": out}, {f"{split} data": folder for split, folder in sources.items()})
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest = read_manifest(str(out))
        if manifest.get("settings") != settings.as_json() or manifest.get("volumes_per_part") != volumes_per_part:
            raise ShardSetError(
                f"{out} holds shards prepared with other settings ({manifest.get('settings')}, "
                f"volumes_per_part {manifest.get('volumes_per_part')}); choose a new --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise ShardSetError(f"{out} exists and is not an (unfinished) shard set; choose a new or empty --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "settings": settings.as_json(),
                    "volumes_per_part": volumes_per_part, "splits": {}}
        atomic_write_json(manifest_path, manifest)

    bad = [split for split in sources if not _SPLIT_NAME.fullmatch(str(split))]
    if bad:
        raise ShardSetError(f"split name {bad[0]!r}: use letters, digits, '_' and '-' only")
    for split, folder in sources.items():
        dataset = IconetSliceDataset(
            folder, settings.challenge, use_dataset_cache=False, skip_bad_files=skip_bad_files,
            # Every slice is read and checked (check_kspace) while it is written: a bad one stops the
            # run naming it. To leave bad files out instead, they are found first.
            check_values=skip_bad_files,
            progress=progress,
        )
        files = dataset._kept_files()
        volumes: Dict[str, List[FastMRIRawDataSample]] = {}
        for sample in dataset.raw_samples:
            volumes.setdefault(str(sample.fname), []).append(sample)
        groups = [files[i : i + volumes_per_part] for i in range(0, len(files), volumes_per_part)]
        entry = manifest["splits"].get(split)
        names = [Path(f).name for f in files]
        if entry is not None:  # continuing: the finished parts must be the first files, unchanged
            finished = [(v["fname"], v["fingerprint"]) for part in entry["parts"] for v in part["volumes"]]
            now = [(name, dataset.fingerprints[f]) for name, f in zip(names, files)][:len(finished)]
            if now != finished:
                raise ShardSetError(
                    f"{out}: the finished parts of split {split!r} hold {len(finished)} volume(s) that {folder} no "
                    f"longer lists first and unchanged (a file was changed, added, removed or, with --skip_bad_files, "
                    f"left out); choose a new --out")
            entry.update(source_files=names, skipped=[p.name for p in dataset.skipped_files])
        entry = entry or {"source": str(Path(folder).resolve()), "source_files": names,
                          "parts": [], "skipped": [p.name for p in dataset.skipped_files]}
        manifest["splits"][split] = entry
        done = len(entry["parts"])
        total = sum(dataset.slices_per_volume()[Path(f).name] for g in groups[done:] for f in g)
        bar = _bar(total, f"{split} shards", progress)
        for k in range(done, len(groups)):
            name = _PART.format(k)
            count = _write_part(dataset, volumes, groups[k], out / split / name, settings, chunk_bytes, bar.update)
            entry["parts"].append({"name": name, "slices": count,
                                   "volumes": [_volume_entry(dataset, f, volumes[f]) for f in groups[k]]})
            entry["complete"] = k + 1 == len(groups)
            atomic_write_json(manifest_path, manifest)
        entry["complete"] = True
        atomic_write_json(manifest_path, manifest)
        bar.close()
    return manifest


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, show: bool):
    if not show or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slice")
