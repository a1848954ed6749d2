"""Data-pipeline section: what one data-loader worker delivers from HDF5 and from shards.

On fastMRI-size multi-coil files (knee 15x640x368, brain 16x640x320 k-space,
320x320 HR grid; random k-space with fastMRI's header and target layout,
written to a temporary folder and removed), one worker's work per training
sample is timed in this process with one torch thread (what a ``DataLoader``
worker gets), files in the page cache (a warm-up pass reads them first):

* ``hdf5``: :class:`~iconet_fastmri.data.dataset.IconetSliceDataset` + the
  training transform: read the k-space slice, inverse FFT per coil, crop;
* ``shards`` / ``shards float16``: :class:`~iconet_fastmri.data.shards.ShardSliceDataset`
  over a set made by :func:`~iconet_fastmri.data.shard_writer.prepare_shards`
  (its one-off cost per slice is reported too).

Per row: slices/s per worker, CPU ms per slice, bytes per slice (stored, so
read once per slice per epoch from disk or the network when not cached; the
process's ``rchar`` is recorded too, but litdata maps its chunks into memory,
which ``rchar`` does not count), and the workers needed to feed ``--feed-rate``
slices/s (default 121.6: ICONet's compiled bf16 training step, batch 8, on one
H200, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .harness import Bench, loadavg

#: ICONet's measured training step on one H200 (compiled bf16, batch 8): the rate a GPU consumes.
H200_SLICES_PER_S = 121.6


def _rchar() -> Optional[int]:
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:  # not Linux
        return None
    return None


def _write_volume(path: Path, coils: int, kspace_shape, recon: int, slices: int, seed: int) -> None:
    import h5py
    import numpy as np

    from ..demo.acquisition import ismrmrd_header

    rng = np.random.default_rng(seed)
    H, W = kspace_shape
    with h5py.File(path, "w") as f:
        k = f.create_dataset("kspace", shape=(slices, coils, H, W), dtype=np.complex64)
        for s in range(slices):
            k[s] = ((rng.standard_normal((coils, H, W), dtype=np.float32)
                     + 1j * rng.standard_normal((coils, H, W), dtype=np.float32)) * 1e-5).astype(np.complex64)
        f.create_dataset("reconstruction_rss", data=rng.random((slices, recon, recon), dtype=np.float32) * 1e-4)
        f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header((H, W), (recon, recon), slices, coils)))
        f.attrs["max"] = 1e-4
        f.attrs["acquisition"] = "CORPD_FBK"


def _time_reads(dataset, min_s: float) -> Dict[str, float]:
    """One warm-up pass, then timed passes over every sample until ``min_s`` seconds have passed.

    Each sample goes through ``collate_samples`` as in a worker: the batch is a copy, so the
    bytes are materialised (litdata hands out views of its memory-mapped chunks).
    """
    from ..data.batching import collate_samples

    for i in range(len(dataset)):
        collate_samples([dataset[i]])
    n, wall, cpu, read = 0, 0.0, 0.0, 0
    while wall < min_s or n == 0:
        r0, c0, t0 = _rchar(), time.process_time(), time.perf_counter()
        for i in range(len(dataset)):
            collate_samples([dataset[i]])
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        r1 = _rchar()
        read += (r1 - r0) if r0 is not None and r1 is not None else 0
        n += len(dataset)
    return {"slices_per_s": n / wall, "cpu_ms_per_slice": 1e3 * cpu / n,
            "rchar_per_slice": read / n if _rchar() is not None else None}


def section_pipeline(b: Bench) -> Dict[str, Any]:
    """HDF5 vs shards, per data-loader worker, on fastMRI-size multi-coil files."""
    torch = b.torch
    from ..data.dataset import IconetSliceDataset
    from ..data.shard_writer import prepare_shards
    from ..data.shards import ShardSettings, ShardSliceDataset
    from ..data.transforms import IconetDataTransform
    from ..physics.acquisition import Acquisition
    from ..physics.masks import MaskConfig

    p = b.profile
    feed = getattr(b.args, "feed_rate", None) or H200_SLICES_PER_S
    min_s = {"full": 3.0, "quick": 1.0, "tiny": 0.05}[b.mode]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's share
    rows: List[Dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="iconet_pipeline_"))
    try:
        for name, coils, kshape, recon in p["pipe_cases"]:
            folder = root / name.replace(" ", "_") / "multicoil_train"
            folder.mkdir(parents=True)
            for v in range(p["pipe_volumes"]):
                _write_volume(folder / f"vol{v}.h5", coils, kshape, recon, p["pipe_slices"], seed=v)
            slices = p["pipe_volumes"] * p["pipe_slices"]
            acq = Acquisition(2, MaskConfig())
            transform = lambda: IconetDataTransform(acq.with_mask(acq.mask), (recon, recon), use_seed=True)  # noqa: E731
            h5 = IconetSliceDataset(folder, "multicoil", transform=transform(), use_dataset_cache=False,
                                    check_values=False, progress=False)
            stored = sum(f.stat().st_size for f in folder.glob("*.h5")) / slices
            t = _time_reads(h5, min_s)
            rows.append(b.row(case=name, format="hdf5", kspace=[coils, *kshape], grid=[recon, recon],
                              stored_bytes_per_slice=stored, prepare_ms_per_slice=None, **t))
            for precision in ("complex64", "float16"):
                out = folder.parent / f"shards_{precision}"
                settings = ShardSettings("multicoil", (recon, recon), precision=precision)
                t0 = time.perf_counter()
                prepare_shards({"train": folder}, out, settings, progress=False)
                prep_ms = 1e3 * (time.perf_counter() - t0) / slices
                shard = ShardSliceDataset(str(out), "train", settings, transform=transform())
                for i in range(len(shard)):  # what the shards hold is the HDF5 path's sample
                    if precision == "complex64" and i < 2:
                        b.diff("pipeline", f"{name}, slice {i}", "HR coil images, shards vs HDF5",
                               shard[i].hr_images, h5[i].hr_images)
                stored = sum(f.stat().st_size for f in out.rglob("chunk-*.bin")) / slices
                t = _time_reads(shard, min_s)
                rows.append(b.row(case=name, format="shards" if precision == "complex64" else "shards float16",
                                  kspace=[coils, *kshape], grid=[recon, recon], stored_bytes_per_slice=stored,
                                  prepare_ms_per_slice=prep_ms, **t))
            shutil.rmtree(folder.parent)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
    hdf5 = {r["case"]: r for r in rows if r["format"] == "hdf5"}
    for r in rows:
        r["workers_to_feed"] = math.ceil(feed / r["slices_per_s"])
        base = hdf5[r["case"]]
        r["speedup_vs_hdf5"] = r["slices_per_s"] / base["slices_per_s"]
        r["bytes_vs_hdf5"] = base["stored_bytes_per_slice"] / r["stored_bytes_per_slice"]
        r["loadavg"] = loadavg()
    return {"rows": rows, "feed_rate": feed, "threads_per_worker": 1}
