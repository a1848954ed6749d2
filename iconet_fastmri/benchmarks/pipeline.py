"""Data-pipeline section: what one data-loader worker delivers from HDF5 and from shards.

On fastMRI-size multi-coil files (knee 15x640x368, brain 16x640x320 k-space,
320x320 HR grid; random k-space with fastMRI's header and target layout,
written to a temporary folder and removed), one worker's work per training
sample is timed in this process with one torch thread (what a ``DataLoader``
worker gets), files in the page cache (a warm-up pass reads them first):

* ``hdf5``: :class:`~iconet_fastmri.data.dataset.IconetSliceDataset` + the
  training transform: read the k-space slice, inverse FFT per coil, crop;
* ``shards`` / ``shards float16`` / ``shards compact x2``:
  :class:`~iconet_fastmri.data.shards.ShardSliceDataset` over a set made by
  :func:`~iconet_fastmri.data.shard_writer.prepare_shards` (HR-grid coil images; in half
  precision; or the LR k-space and targets of one scale), its one-off cost per slice reported too.

Per row: slices/s per worker, CPU ms per slice, bytes per slice (stored, so
read once per slice per epoch from disk or the network when not cached; the
process's ``rchar`` is recorded too, but litdata maps its chunks into memory,
which ``rchar`` does not count), and the workers needed to feed ``--feed-rate``
slices/s (default 121.6: ICONet's compiled bf16 training step, batch 8, on one
H200, docs/BENCHMARKS.md).

End to end (on a GPU, and in the CI's tiny CPU run): the training step of the
profile's ICONet fed from the shards through a ``DataLoader`` with workers
(files -> workers -> device -> step), against the same step on a batch already
on the device, in the same run; ``e2e_over_model`` is their ratio.
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
    e2e: Dict[str, Any] = {}
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
            for precision, compact in (("complex64", None), ("float16", None), ("complex64", 2)):
                label = f"shards compact x{compact}" if compact else "shards" if precision == "complex64" \
                    else "shards float16"
                out = folder.parent / label.replace(" ", "_")
                settings = ShardSettings("multicoil", (recon, recon), precision=precision, compact_scale=compact)
                t0 = time.perf_counter()
                prepare_shards({"train": folder}, out, settings, progress=False)
                prep_ms = 1e3 * (time.perf_counter() - t0) / slices
                shard = ShardSliceDataset(str(out), "train", settings, transform=transform())
                for i in range(min(2, len(shard))):  # what the shards hold is the HDF5 path's sample
                    if label == "shards":
                        b.diff("pipeline", f"{name}, slice {i}", "HR coil images, shards vs HDF5",
                               shard[i].hr_images, h5[i].hr_images)
                stored = sum(f.stat().st_size for f in out.rglob("chunk-*.bin")) / slices
                t = _time_reads(shard, min_s)
                rows.append(b.row(case=name, format=label, kspace=[coils, *kshape], grid=[recon, recon],
                                  stored_bytes_per_slice=stored, prepare_ms_per_slice=prep_ms, **t))
            if not e2e and (b.cuda or b.mode == "tiny"):
                torch.set_num_threads(threads)  # the training process's own threads
                e2e = _end_to_end(b, str(folder.parent / "shards"), (recon, recon))
                torch.set_num_threads(1)
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
    if not e2e:
        e2e = {"skipped": "no GPU: on a CPU the model, not the data, limits the step"}
    return {"rows": rows, "feed_rate": feed, "threads_per_worker": 1, "end_to_end": e2e}


def _end_to_end(b: Bench, shards: str, grid) -> Dict[str, Any]:
    """Training steps fed by workers from shards vs the same steps on a batch already on the device."""
    torch = b.torch
    from lightning_fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader

    from ..data.batching import collate_samples
    from ..data.shards import ShardSettings, ShardSliceDataset
    from ..data.transforms import IconetDataTransform
    from ..models import ICONet
    from ..physics.acquisition import Acquisition
    from ..physics.masks import MaskConfig
    from ..pl_modules import IconetModule

    p = b.profile
    batch_size, workers = p["pipe_e2e_batch"], p["pipe_e2e_workers"]
    steps = {"full": 30, "quick": 10, "tiny": 3}[b.mode]
    acq = Acquisition(2, MaskConfig())
    dataset = ShardSliceDataset(shards, "train", ShardSettings("multicoil", grid),
                                transform=IconetDataTransform(acq, grid, use_seed=False))
    module = IconetModule(ICONet(scale=2, width=p["model_width"], blocks_per_stage=p["model_blocks"]), acquisition=acq)
    module.to(b.device)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    autocast = torch.autocast(b.device.type, dtype=torch.bfloat16, enabled=b.cuda)

    def step(batch) -> None:
        with autocast:
            loss = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    import warnings

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_samples,
                        pin_memory=b.cuda, drop_last=True, persistent_workers=workers > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        fixed = move_data_to_device(next(iter(loader)), b.device)
        step(fixed)  # warm-up
        b.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(fixed)
        b.sync()
        model_s = time.perf_counter() - t0
        done, t0 = 0, time.perf_counter()
        while done < steps:
            for batch in loader:
                step(move_data_to_device(batch, b.device))
                done += 1
                if done == steps:
                    break
        b.sync()
        e2e_s = time.perf_counter() - t0
    model_rate, e2e_rate = steps * batch_size / model_s, steps * batch_size / e2e_s
    return {"batch": batch_size, "workers": workers, "steps": steps, "model_only_slices_per_s": model_rate,
            "end_to_end_slices_per_s": e2e_rate, "e2e_over_model": e2e_rate / model_rate,
            "precision": "bf16 autocast" if b.cuda else "fp32", "model": f"ICONet width {p['model_width']}, "
            f"{p['model_blocks']} blocks, eager"}
