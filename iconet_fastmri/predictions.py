"""Reconstruction files in fastMRI's submission format, assembled slice by slice.

One home for what inference writes, used by ``run_inference.py`` and by the
CLI's ``predict`` (:class:`PredictionWriter`): ``{out_dir}/{fname}`` holding
the dataset ``reconstruction`` (float32 ``(slices, H, W)``, as
``fastmri.save_reconstructions`` writes it) plus attributes recording how the
input was simulated (see :func:`volume_attributes`). A volume is written
atomically as soon as its last slice arrives.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import h5py
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from . import __version__
from .data.lr_dataset import AcquiredChunk, AcquiredChunks, AcquiredVolume
from .io import atomic_write, check_outputs_apart
from .physics.masks import MaskConfig

__all__ = [
    "MASK_SEED_RULE",
    "MASK_SEED_RULES_TEXT",
    "write_volume_atomic",
    "check_writable",
    "input_folders",
    "volume_attributes",
    "acquired_attributes",
    "write_acquired_table",
    "VolumeAssembler",
    "PredictionWriter",
]

MASK_SEED_RULE = "crc32('<file name>/<slice>') per slice (iconet_fastmri.physics.masks.mask_seed)"
MASK_SEED_RULES_TEXT = {
    "slice": MASK_SEED_RULE,
    "volume": "tuple(map(ord, '<file name>')) per volume (fastMRI's rule)",
}


def write_volume_atomic(path: Path, reconstruction: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Write ``reconstruction`` (+ attributes) to ``path`` atomically (:func:`~iconet_fastmri.io.atomic_write`)."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=np.asarray(reconstruction, dtype=np.float32))
            for key, value in attrs.items():
                f.attrs[key] = value

    atomic_write(path, write)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable with a throw-away file; a clear error otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".write_test", lambda tmp: tmp.write_bytes(b""))
        (folder / ".write_test").unlink()
    except OSError as err:
        raise PermissionError(f"output folder {folder} is not writable ({err}); nothing was computed") from err


def volume_attributes(
    method: str,
    checkpoint: Optional[str],
    challenge: str,
    scale: int,
    hr_crop: Sequence[int],
    pad_if_smaller: bool,
    mask: MaskConfig,
    mask_seed_rule: str,
) -> Dict[str, Any]:
    """The attributes every volume of one run carries (the per-volume ones are added on writing)."""
    nominal = mask.nominal_acceleration()
    return {
        "method": method,
        "checkpoint": str(checkpoint) if checkpoint else "",
        "challenge": challenge,
        "scale": int(scale),
        "hr_crop": np.asarray(hr_crop, dtype=np.int64),
        "pad_if_smaller": bool(pad_if_smaller),
        "mask_name": mask.name,
        "mask_args": json.dumps({k: v for k, v in dataclasses.asdict(mask).items() if k != "name"},
                                sort_keys=True),
        "mask_seed_rule": MASK_SEED_RULES_TEXT[mask_seed_rule],
        "acceleration": float(nominal) if nominal is not None else float("nan"),
        "iconet_fastmri_version": __version__,
    }


def acquired_attributes(method: str, checkpoint: Optional[str], scale: int) -> Dict[str, Any]:
    """The attributes every reconstruction of a real low-resolution scan carries (no simulated mask)."""
    return {"method": method, "checkpoint": str(checkpoint) if checkpoint else "", "scale": int(scale),
            "source": "acquired", "iconet_fastmri_version": __version__}


def write_acquired_table(out_dir: Path, volumes: Sequence[AcquiredVolume], volume_attrs: Mapping[str, Mapping[str, Any]],
                         scale: int) -> List[Dict[str, Any]]:
    """``out_dir/acquired.csv``: per written volume its grids, accelerations and DC residual; returns the rows."""
    rows = []
    for vol in volumes:
        if vol.fname not in volume_attrs:
            continue
        attrs = volume_attrs[vol.fname]
        rows.append({"file": vol.fname, "slices": vol.slices, "lr_grid": f"{vol.recon[0]}x{vol.recon[1]}",
                     "output_grid": f"{scale * vol.recon[0]}x{scale * vol.recon[1]}",
                     "acceleration_lr": round(float(attrs["effective_acceleration_lr"]), 3),
                     "acceleration_hr": round(float(attrs["effective_acceleration"]), 3),
                     "dc_residual": float(attrs.get("dc_residual", float("nan")))})

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(Path(out_dir) / "acquired.csv", write)
    return rows


class VolumeAssembler:
    """Collect slices per volume and write each volume when its last slice arrives.

    Args:
        out_dir: the output folder (checked writable by the caller).
        expected: ``{fname: number of slices}``.
        attrs: :func:`volume_attributes` of the run.
        acquisitions: ``{fname: acquisition}`` (file attribute of the raw data).
        owned: the volumes this process writes (under DDP, its sampler's ``own_volumes``; the rest
            of its samples are padding); ``None``: all. A volume is written once: slices of a
            volume already written (a sampler's repeats) are ignored.
    """

    def __init__(self, out_dir: Path, expected: Mapping[str, int], attrs: Mapping[str, Any],
                 acquisitions: Optional[Mapping[str, str]] = None, owned: Optional[Set[str]] = None) -> None:
        self.owned = None if owned is None else {Path(n).name for n in owned}
        self.done: Set[str] = set()
        self.out_dir = Path(out_dir)
        self.expected = dict(expected)
        self.attrs = dict(attrs)
        self.acquisitions = dict(acquisitions or {})
        self.pending: Dict[str, Dict[int, Tuple[np.ndarray, float, Mapping[str, float]]]] = {}
        self.written: List[Path] = []
        self.volume_attrs: Dict[str, Dict[str, Any]] = {}

    def add(self, fname: str, slice_num: int, image: np.ndarray, lr_acceleration: float,
            extra: Optional[Mapping[str, float]] = None) -> None:
        """One slice's HR magnitude, the acceleration of its LR mask and per-slice numbers averaged
        into the volume's attributes (``extra``, e.g. ``dc_residual``)."""
        if fname in self.done or (self.owned is not None and fname not in self.owned):
            return  # written already, or another rank's (padding)
        slices = self.pending.setdefault(fname, {})
        slices[int(slice_num)] = (np.asarray(image, dtype=np.float32), float(lr_acceleration), dict(extra or {}))
        if len(slices) == self.expected.get(fname, -1):
            self._flush(fname)

    def add_batch(self, fnames: Sequence[str], slice_nums: Any, images: np.ndarray, masks: Any) -> None:
        """A batch: images ``(B, H, W)``, masks ``(B, 1, h, w)`` (their acceleration is recorded)."""
        acquired = masks.flatten(1).sum(1).cpu().numpy()
        grid = float(masks[0].numel())
        for i, name in enumerate(fnames):
            self.add(name, int(slice_nums[i]), images[i], grid / max(float(acquired[i]), 1.0))

    def add_acquired(self, chunk: AcquiredChunk, images: np.ndarray, extras: Mapping[str, np.ndarray]) -> None:
        """A chunk of a real low-resolution scan: images ``(B, H, W)``, per-slice ``extras``; its file's R."""
        for i, number in enumerate(chunk.slice_num.tolist()):
            self.add(chunk.fname, number, images[i], chunk.acceleration,
                     {key: float(values[i]) for key, values in extras.items()})

    def _flush(self, name: str) -> None:
        slices = self.pending.pop(name)
        order = sorted(slices)
        r_lr = float(np.mean([slices[i][1] for i in order]))
        attrs = {
            **self.attrs,
            "acquisition": self.acquisitions.get(name, ""),
            "effective_acceleration_lr": r_lr,
            "effective_acceleration": float(self.attrs["scale"] ** 2 * r_lr),
        }
        for key in slices[order[0]][2]:
            attrs[key] = float(np.mean([slices[i][2][key] for i in order]))
        path = self.out_dir / name
        write_volume_atomic(path, np.stack([slices[i][0] for i in order]), attrs)
        self.volume_attrs[name] = attrs
        self.written.append(path)
        self.done.add(name)

    def finish(self) -> List[Path]:
        """Write volumes still open (only with slice subsets) and return every written file."""
        for name in list(self.pending):
            self._flush(name)
        return self.written


def input_folders(datamodule: Any) -> List[Tuple[str, Path]]:
    """The folders a data module reads: each split folder it can name (``split_path``), labelled by flag."""
    if datamodule is None or not hasattr(datamodule, "split_path"):
        return []
    folders = []
    for split in ("train", "val", "test"):
        try:
            folder = datamodule.split_path(split)
        except (OSError, ValueError):  # a split that is absent or ambiguous is not read
            continue
        explicit = getattr(datamodule, "paths", {}).get(split)
        folders.append((f"--data.{split}_path" if explicit else f"the {split} folder of --data.data_path", folder))
    return folders


class PredictionWriter(BasePredictionWriter):
    """``predict`` writes reconstructions as ``run_inference.py`` does (same files, same attributes).

    Args:
        out_dir: output folder; default ``<default_root_dir>/predictions``.
        overwrite: replace existing results (otherwise a folder that already
            holds any of the volumes is refused before predicting).

    An output folder that is, contains or lies inside one of the data module's
    split folders is refused at set-up, before the checkpoint is loaded and
    with or without ``overwrite`` (:func:`~iconet_fastmri.io.check_outputs_apart`).
    A folder of real low-resolution scans (the data module reads it as
    :class:`~iconet_fastmri.data.lr_dataset.AcquiredChunks`) is written as
    ``run_inference.py --acquired`` writes it, ``acquired.csv`` included.
    """

    def __init__(self, out_dir: Optional[str] = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.overwrite = overwrite
        self.assembler: Optional[VolumeAssembler] = None
        self.acquired: Optional[AcquiredChunks] = None

    def _out(self, trainer: "pl.Trainer") -> Path:
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "predictions")
        label = "--prediction_writer.out_dir" if self.out_dir else "the default --prediction_writer.out_dir"
        check_outputs_apart({label: out}, input_folders(getattr(trainer, "datamodule", None)))
        return out

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict":
            self._out(trainer)  # before the checkpoint is loaded and anything is predicted

    def on_predict_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        dm = trainer.datamodule
        out = self._out(trainer)
        check_writable(out)
        dataset = dm._dataset("test")
        expected = dataset.slices_per_volume()
        existing = sorted(name for name in expected if (out / name).exists())
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{out} already holds results for {len(existing)} volume(s) (e.g. {existing[0]}); "
                f"pass --prediction_writer.overwrite true to replace them"
            )
        ckpt = getattr(trainer, "ckpt_path", None)
        self.acquired = dataset if isinstance(dataset, AcquiredChunks) else None
        if self.acquired is not None:  # real low-resolution scans (docs/ACQUIRED.md)
            attrs = acquired_attributes(pl_module.method_name, ckpt, dm.scale)
            acquisitions = {v.fname: str(v.attrs.get("acquisition", "")) for v in dataset.volumes}
        else:
            attrs = volume_attributes(
                pl_module.method_name, ckpt, dm.challenge, dm.scale, dm.hr_crop, dm.pad_if_smaller, dm.mask,
                dm.mask_seed_rule,
            )
            acquisitions = {Path(s.fname).name: str(s.metadata.get("acquisition", "")) for s in dataset.raw_samples}
        loaders = getattr(trainer, "predict_dataloaders", None)
        sampler = getattr(loaders[0] if isinstance(loaders, (list, tuple)) else loaders, "sampler", None)
        self.assembler = VolumeAssembler(out, expected, attrs, acquisitions, getattr(sampler, "own_volumes", None))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        assert self.assembler is not None
        images = prediction["reconstruction"].float().numpy()
        if isinstance(batch, AcquiredChunk):
            extras = {k: v.float().cpu().numpy() for k, v in prediction.items()
                      if k not in ("fname", "slice_num", "reconstruction")}
            self.assembler.add_acquired(batch, images, extras)
            return
        self.assembler.add_batch(prediction["fname"], prediction["slice_num"], images, batch.mask)

    def on_predict_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.assembler is not None:
            written = self.assembler.finish()
            if self.acquired is not None:
                write_acquired_table(self.assembler.out_dir, self.acquired.volumes, self.assembler.volume_attrs,
                                     trainer.datamodule.scale)
            pl.utilities.rank_zero_info(f"[iconet-fastmri] predict wrote {len(written)} volume(s) to "
                                        f"{self.assembler.out_dir}")
