"""Shards: fastMRI folders converted once into what training reads, stored with litdata.

A fastMRI slice is 15x640x368 complex64 k-space (knee, 28 MB); training uses
its coil images cropped to the HR grid (15x320x320, 12 MB), after a large
inverse FFT per coil. ``prepare_shards`` does that work once and stores,
per slice, exactly what :meth:`IconetDataTransform.from_images
<iconet_fastmri.data.transforms.IconetDataTransform.from_images>` needs: the
HR-grid coil images (:func:`~iconet_fastmri.data.transforms.hr_coil_images`)
and the file's target on that grid
(:func:`~iconet_fastmri.data.transforms.file_target`). So a slice read from
shards *is* the HDF5 path's sample (``tests/data/test_shards.py``).

:func:`~iconet_fastmri.data.shard_writer.prepare_shards` writes a set; this module
defines its format and reads it. Storage is litdata's (the Lightning ecosystem's streaming format:
``BinaryWriter`` chunks and ``index.json``, read by ``StreamingDataset``
from a local folder or an object store, with a local chunk cache). Layout::

    <out>/iconet_shards.json            our manifest (JSON; nothing in it runs)
    <out>/<split>/part-00000/           a litdata dataset: index.json, chunk-*.bin
    <out>/<split>/part-00001/ ...

A *part* holds whole volumes (``volumes_per_part``, in sorted file order):
it is the unit of resuming. The manifest lists the finished parts and is
rewritten atomically after each one, so a killed ``prepare_shards``
continues where it stopped; a part folder the manifest does not list is
rewritten.

The manifest also carries, per volume, what validation, inference and
evaluation need (file name, slices, fastMRI header metadata, ``max``, the
k-space shape and content fingerprint) and the settings the images depend on
(challenge, ``hr_crop``, ``pad_if_smaller``, precision). A shard set made
with other settings, by another format version, or not by us is refused by
:class:`ShardSliceDataset` at start-up, naming the setting. The value scan
(NaN, Inf, all-zero, overflowing slices; what ``check_values`` does on
HDF5) runs while the shards are written, since every slice is read then; a
set is only listed as finished once all of its slices passed, so training
from it never re-reads the raw data.

Precision: ``complex64`` (exact) or ``float16`` (real and imaginary parts as
half floats after division by the slice's largest magnitude, stored beside
them: half the bytes; its effect on the demo metrics is in docs/SHARDS.md).

Nothing in a shard set is unpickled: litdata's ``pickle`` serializer is
replaced by one that refuses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from fastmri.data.mri_data import FastMRIRawDataSample

from ..io import temporary_name
from ..physics.operators import lr_shape_for
from ..physics.sense import ESPIRIT_KERNEL
from .dataset import IconetSliceDataset, subsample_slices
from .samplers import reseed_sample
from .transforms import IconetDataTransform

__all__ = [
    "MANIFEST",
    "PRECISIONS",
    "SHARD_FORMAT",
    "SHARD_VERSION",
    "ShardSetError",
    "ShardSettings",
    "ShardSliceDataset",
    "check_settings",
    "decode_slice",
    "encode_slice",
    "is_remote",
    "read_manifest",
]

MANIFEST = "iconet_shards.json"
SHARD_FORMAT = "iconet-fastmri shards"
#: Bumped whenever what a shard item holds, or how, changes.
SHARD_VERSION = 1
PRECISIONS = ("complex64", "float16")
_PART_NAME = re.compile(r"part-\d{5}")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ShardSetError(ValueError):
    """A shard set that cannot be used as asked; the message names the folder and the problem."""


@dataclass(frozen=True)
class ShardSettings:
    """What the stored images depend on; a run must ask for the same to read them."""

    challenge: str
    hr_crop: Tuple[int, int]
    pad_if_smaller: bool = False
    precision: str = "complex64"
    #: ``(scale, calibration lines)``: also store ESPIRiT maps of each slice's LR k-space (the central
    #: ``hr_crop / scale`` block, the full-height band of the central lines), for ``coil_maps: espirit``.
    espirit: Optional[Tuple[int, int]] = None
    #: Compact layout for one scale: store the LR k-space ``T F x`` and the stage targets (the
    #: HR target, and at x4 the x2 grid's) instead of the HR coil images (``degradation.from_lr_kspace``).
    compact_scale: Optional[int] = None

    def __post_init__(self) -> None:
        if self.challenge not in ("singlecoil", "multicoil"):
            raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {self.challenge!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "hr_crop", (int(self.hr_crop[0]), int(self.hr_crop[1])))
        if self.espirit is not None:
            scale, lines = (int(v) for v in self.espirit)
            if self.challenge != "multicoil":
                raise ValueError(f"ESPIRiT maps need multicoil data, got {self.challenge}")
            lr_shape_for(self.hr_crop, scale)  # a supported scale dividing hr_crop, else a ValueError naming both
            if lines < 2 * ESPIRIT_KERNEL:  # refused before any file is read (espirit_maps would, per slice)
                raise ValueError(f"ESPIRiT needs a calibration region of at least {2 * ESPIRIT_KERNEL} fully sampled "
                                 f"lines for its {ESPIRIT_KERNEL}x{ESPIRIT_KERNEL} kernel; these settings give {lines}")
            object.__setattr__(self, "espirit", (scale, lines))
        if self.compact_scale is not None:
            scale = int(self.compact_scale)
            lr_shape_for(self.hr_crop, scale)
            if self.precision != "complex64":
                raise ValueError(f"the compact layout stores complex64, got precision {self.precision}")
            if self.espirit is not None and self.espirit[0] != scale:  # a run has one scale: no run could read it
                raise ValueError(f"compact scale {scale} and ESPIRiT scale {self.espirit[0]} differ; "
                                 f"one shard set serves one scale")
            object.__setattr__(self, "compact_scale", scale)

    def as_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["hr_crop"] = list(self.hr_crop)
        d["espirit"] = None if self.espirit is None else list(self.espirit)
        return d


def is_remote(root: str) -> bool:
    """Whether ``root`` is an object-store URL (``s3://``, ``gs://``, ...) or litdata's ``local:`` test remote."""
    return "://" in str(root) or str(root).startswith("local:")


def _join(root: str, *names: str) -> str:
    return "/".join([str(root).rstrip("/"), *names])


# ---------------------------------------------------------------------------- items
def encode_slice(images: torch.Tensor, target: torch.Tensor, slice_num: int, precision: str,
                 maps: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """The stored item of one slice (HR-grid coil images, target, slice index, optional LR-grid ESPIRiT maps)."""
    images = images.to(torch.complex64)
    if precision == "float16":
        peak = float(images.abs().max())
        scale = peak if peak > 0 else 1.0
        stored = torch.view_as_real(images / scale).to(torch.float16)
    else:
        scale, stored = 1.0, images
    # A missing target is stored as a 0x0 tensor: litdata fixes a serializer per key from the first item.
    target = target if target.numel() else torch.empty(0, 0)
    item = {"images": stored.contiguous(), "scale": torch.tensor(scale, dtype=torch.float32),
            "target": target.to(torch.float32).contiguous(), "slice": int(slice_num)}
    if maps is not None:
        item["maps"] = maps.to(torch.complex64).contiguous()
    return item


def encode_compact(lr_kspace: torch.Tensor, stages: List[torch.Tensor], target: torch.Tensor, slice_num: int,
                   maps: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """The stored item of one slice in the compact layout: LR k-space and stage targets instead of HR images."""
    item = {"lr_kspace": lr_kspace.to(torch.complex64).contiguous(),
            "stages": [t.to(torch.float32).contiguous() for t in stages],
            "target": (target if target.numel() else torch.empty(0, 0)).to(torch.float32).contiguous(),
            "slice": int(slice_num)}
    if maps is not None:
        item["maps"] = maps.to(torch.complex64).contiguous()
    return item


def decode_slice(item: Dict[str, Any], where: str) -> Tuple[torch.Tensor, torch.Tensor, int, Optional[torch.Tensor],
                                                             Optional[Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]]]:
    """``(images complex64, target, slice, maps, compact)`` of a stored item; a malformed item is a
    :class:`ShardSetError`. A compact item has ``(C, 0, 0)`` images and ``compact = (lr_kspace, stages)``."""
    if isinstance(item, dict) and set(item) - {"maps"} == {"lr_kspace", "stages", "target", "slice"}:
        lr_kspace, target = item["lr_kspace"], item["target"]
        return (torch.empty(lr_kspace.shape[0], 0, 0, dtype=torch.complex64), target if target.numel() else
                torch.empty(0), int(item["slice"]), item.get("maps"), (lr_kspace, tuple(item["stages"])))
    if not isinstance(item, dict) or set(item) - {"maps"} != {"images", "scale", "target", "slice"}:
        raise ShardSetError(f"{where}: not an iconet shard item (keys {sorted(item) if isinstance(item, dict) else type(item).__name__})")
    images = item["images"]
    if images.dtype == torch.float16:
        images = torch.view_as_complex(images.to(torch.float32).contiguous()) * item["scale"].to(torch.float32)
    elif images.dtype != torch.complex64:
        raise ShardSetError(f"{where}: images stored as {images.dtype}, expected complex64 or float16")
    target = item["target"]
    return images, (target if target.numel() else torch.empty(0)), int(item["slice"]), item.get("maps"), None


def _safe_serializers() -> Dict[str, Any]:
    """litdata's serializers with ``pickle`` replaced by one that refuses (nothing in a shard set may run)."""
    from litdata.streaming.serializers import PickleSerializer

    class RefusePickle(PickleSerializer):
        def deserialize(self, data: bytes) -> Any:
            raise ShardSetError("this shard set holds pickled items; iconet shards never do, and they are not read")

    return {"pickle": RefusePickle()}


# ---------------------------------------------------------------------------- manifest
def read_manifest(root: str, cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """The manifest of the shard set at ``root`` (a folder or a URL; remote ones are fetched into ``cache_dir``)."""
    if is_remote(root):
        from litdata.streaming.downloader import get_downloader

        if cache_dir is None:
            raise ShardSetError(f"{root} is remote: set a local cache folder (--data.shard_cache)")
        # Fetched afresh every time, into a name of this process's own (litdata's downloaders skip a
        # file that exists and give up silently on another rank's lock), then read and removed.
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        path = temporary_name(Path(cache_dir) / MANIFEST)
        try:
            get_downloader(str(root), str(cache_dir), []).download_file(_join(root, MANIFEST), str(path))
        except Exception as err:  # noqa: BLE001 - any transport error: name what was asked
            raise ShardSetError(f"could not fetch {_join(root, MANIFEST)}: {err}") from err
    else:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise ShardSetError(
                f"{root} is not a shard set: it has no {MANIFEST} (make one with scripts/prepare_shards.py)"
            )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardSetError(f"{path}: cannot be read as a shard manifest ({err})") from err
    finally:
        if is_remote(root):
            path.unlink(missing_ok=True)
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise ShardSetError(f"{path}: not an iconet-fastmri shard manifest")
    if manifest.get("version") != SHARD_VERSION:
        raise ShardSetError(
            f"{path}: shard format version {manifest.get('version')!r}, this version reads {SHARD_VERSION}; "
            f"prepare the shards again with scripts/prepare_shards.py"
        )
    # Names become paths (the chunk cache) and URLs: only our own forms, never "..", "/" or absolute ones.
    for split, entry in (manifest.get("splits") or {}).items():
        bad = [part.get("name") for part in (entry or {}).get("parts", [])
               if not isinstance(part.get("name"), str) or not _PART_NAME.fullmatch(part["name"])]
        if not _SPLIT_NAME.fullmatch(str(split)) or bad:
            raise ShardSetError(f"{root}: the manifest names split {split!r} / parts {bad[:3]}: not names this "
                                f"package writes (split: letters, digits, '_', '-'; parts: part-NNNNN); refused")
    return manifest


def check_settings(manifest: Dict[str, Any], settings: ShardSettings, root: str) -> None:
    """Refuse a shard set written with other settings than the run's, naming each difference."""
    stored = manifest.get("settings", {})
    wanted = settings.as_json()
    diff = [f"{k}: shards {stored.get(k)!r}, run {wanted[k]!r}"
            for k in ("challenge", "hr_crop", "pad_if_smaller") if stored.get(k) != wanted[k]]
    if diff:
        raise ShardSetError(
            f"{root}: the shard set was prepared with other settings ({'; '.join(diff)}); "
            f"prepare shards with these settings or change the run's"
        )


# ---------------------------------------------------------------------------- reading
class ShardSliceDataset(IconetSliceDataset):
    """The slices of one split of a shard set, as :class:`IconetSliceDataset` gives them from HDF5.

    It keeps :class:`IconetSliceDataset`'s interface (``raw_samples`` for
    the volume samplers, ``slices_per_volume``, ``fingerprints``,
    sample rates), so the data module's samplers, seeds and resume logic are
    the same for both formats. Items are read with litdata's
    ``StreamingDataset`` (one per part, opened lazily in each worker):
    from a local folder, or from an object store through a local chunk cache.

    Args:
        root: the shard set (folder or URL, e.g. ``s3://bucket/knee_shards``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        settings: the run's settings; the set must have been prepared with the same
            challenge, ``hr_crop`` and ``pad_if_smaller`` (any precision).
        transform: an :class:`IconetDataTransform` (its ``from_images`` makes the sample).
        cache_dir: local cache of a remote set (chunks and manifest).
        sample_rate, volume_sample_rate, raw_sample_filter, sample_seed: as :class:`IconetSliceDataset`.
    """

    def __init__(
        self,
        root: str,
        split: str,
        settings: ShardSettings,
        transform: Optional[IconetDataTransform] = None,
        cache_dir: Optional[str] = None,
        sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
        raw_sample_filter: Optional[Callable] = None,
        sample_seed: int = 0,
    ) -> None:
        self.root = str(root)
        self.split = split
        self.transform = transform
        self.challenge = settings.challenge
        self.cache_dir = cache_dir
        manifest = read_manifest(self.root, None if cache_dir is None else str(Path(cache_dir)))
        check_settings(manifest, settings, self.root)
        self.precision = manifest["settings"]["precision"]
        espirit = manifest["settings"].get("espirit")
        #: ``(scale, calibration lines)`` of the stored ESPIRiT maps, or ``None``.
        self.espirit: Optional[Tuple[int, int]] = None if espirit is None else (int(espirit[0]), int(espirit[1]))
        #: The scale of a compact set (LR k-space and stage targets instead of HR images), or ``None``.
        self.compact_scale: Optional[int] = manifest["settings"].get("compact_scale")
        entry = manifest["splits"].get(split)
        if entry is None:
            raise ShardSetError(f"{self.root} has no {split!r} split (it has: {', '.join(manifest['splits']) or 'none'})")
        if not entry.get("complete"):
            raise ShardSetError(f"{self.root}: the {split!r} split is unfinished; run scripts/prepare_shards.py again to finish it")
        keep = raw_sample_filter or (lambda raw_sample: True)
        self.part_names: List[str] = []
        self._where: Dict[Tuple[str, int], Tuple[int, int]] = {}
        self._max: Dict[str, float] = {}
        self.raw_samples: List[FastMRIRawDataSample] = []
        self.kspace_shapes: Dict[str, Tuple[int, ...]] = {}
        self.fingerprints: Dict[str, str] = {}
        self.skipped_files = []
        for p, part in enumerate(entry["parts"]):
            self.part_names.append(part["name"])
            index = 0
            for vol in part["volumes"]:
                fname = vol["fname"]
                self.kspace_shapes[fname] = tuple(vol["kspace_shape"])
                self.fingerprints[fname] = vol["fingerprint"]
                self._max[fname] = float("nan") if vol["max"] is None else float(vol["max"])
                metadata = dict(vol["metadata"])
                for key in ("encoding_size", "recon_size"):
                    if isinstance(metadata.get(key), list):
                        metadata[key] = tuple(metadata[key])
                for i in range(vol["num_slices"]):
                    self._where[(fname, i)] = (p, index)
                    index += 1
                    raw_sample = FastMRIRawDataSample(Path(fname), i, metadata)
                    if keep(raw_sample):
                        self.raw_samples.append(raw_sample)
            if index != part["slices"]:
                raise ShardSetError(f"{self.root}/{split}/{part['name']}: manifest lists {index} slices, part holds {part['slices']}")
        if not self.raw_samples:
            raise ShardSetError(f"no slices in the {split!r} split of {self.root}")
        self.raw_samples = subsample_slices(self.raw_samples, sample_rate, volume_sample_rate, sample_seed)
        self._parts: Dict[int, Any] = {}

    def check_run(self, scale: int, lines: set) -> None:
        """A compact set serves its own scale only; stored ESPIRiT maps must come from the run's LR grid
        and the centre its masks acquire (``lines``: the centre widths its masks draw)."""
        if self.compact_scale is not None and self.compact_scale != int(scale):
            raise ShardSetError(f"{self.root}: compact shards for x{self.compact_scale} (LR k-space on that grid); "
                                f"this run is x{scale}: prepare shards for it, or without --compact_scale")
        if self.espirit is not None and (self.espirit[0] != int(scale) or lines != {self.espirit[1]}):
            raise ShardSetError(
                f"{self.root}: its ESPIRiT maps were computed for scale {self.espirit[0]} from {self.espirit[1]} "
                f"calibration lines; this run is x{scale} and its mask acquires {', '.join(map(str, sorted(lines)))} "
                f"centre lines "
                f"(maps from other lines than the acquired ones): prepare shards with --espirit_scale {scale} "
                f"and its center fraction"
            )

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_parts"] = {}  # each worker opens its own readers
        return state

    def _part(self, p: int):
        if p not in self._parts:
            from litdata import StreamingDataset

            url = _join(self.root, self.split, self.part_names[p])
            cache = None
            if is_remote(self.root):  # a cache folder per shard set: chunks of another set never mix in
                digest = hashlib.sha256(self.root.encode("utf-8")).hexdigest()[:16]
                cache = str(Path(self.cache_dir) / digest / self.split / self.part_names[p])
                Path(cache).mkdir(parents=True, exist_ok=True)
            self._parts[p] = StreamingDataset(url, cache_dir=cache, serializers=_safe_serializers())
        return self._parts[p]

    def read(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, str, int, Optional[torch.Tensor], Any]:
        """``(HR coil images, target, fname, slice, maps or None, compact or None)`` of sample ``i`` as stored."""
        fname, slice_num, _ = self.raw_samples[i]
        name = Path(fname).name
        p, k = self._where[(name, slice_num)]
        where = f"{self.root}/{self.split}/{self.part_names[p]} item {k} ({name}, slice {slice_num})"
        images, target, stored_slice, maps, compact = decode_slice(self._part(p)[k], where)
        if stored_slice != slice_num:
            raise ShardSetError(f"{where}: holds slice {stored_slice}; the part does not match the manifest")
        return images, target, name, slice_num, maps, compact

    def __getitem__(self, i: int):
        reseed_sample(self, i)
        images, target, name, slice_num, maps, compact = self.read(i)
        if self.transform is None:
            return images, target, name, slice_num
        peak = self._max[name]
        return self.transform.from_images(images, target, None if math.isnan(peak) else {"max": peak}, name, slice_num,
                                          maps, compact)
