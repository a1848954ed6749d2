"""fastmri's :class:`~fastmri.data.SliceDataset` with validated files and a safe cache.

:class:`IconetSliceDataset` *is* a ``fastmri.data.SliceDataset``: it reuses
fastmri's header parsing (``_retrieve_metadata``) and slice reading
(``__getitem__``, which calls our transform with ``(kspace, mask, target,
attrs, fname, slice_num)``), and works with fastmri's ``VolumeSampler``.
Only the constructor is ours, because fastmri's:

* opens every entry of the folder, so a stray or corrupt file crashes it
  with an error that does not name the file: we list ``*.h5`` only and
  check each file first (:mod:`iconet_fastmri.data.validation`), raising or,
  with ``skip_bad_files``, skipping with a warning that names it;
* pickles its cache to ``dataset_cache.pkl`` in the current directory and
  unpickles whatever it finds there: our cache is JSON (nothing in it can
  execute), lives in a per-user folder created with mode 0700
  (``$XDG_CACHE_HOME/iconet_fastmri`` or ``~/.cache/iconet_fastmri``), is
  keyed by the resolved data path and challenge, re-checks each file's size
  and modification time, and is rebuilt with a warning when it cannot be read.

It also records, per kept file, the k-space shape (:attr:`IconetSliceDataset.kspace_shapes`,
whose last two sizes are the image grid the transform crops from) and a cheap
content fingerprint (:attr:`IconetSliceDataset.fingerprints`), so that the data
module can refuse volumes smaller than ``hr_crop`` and warn about a volume that
is in two splits at start-up, before the first step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from fastmri.data import SliceDataset
from fastmri.data.mri_data import FastMRIRawDataSample

from ..io import atomic_write_json
from .samplers import reseed_sample
from .validation import (
    DEFAULT_MAX_SLICE_ELEMENTS,
    DEFAULT_MAX_SLICES,
    FastMRIFileError,
    kspace_fingerprint,
    scan_kspace_values,
    validate_fastmri_file,
)

__all__ = ["IconetSliceDataset", "default_cache_dir", "shared_volumes", "subsample_slices"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 2
#: What a cached ``values_checked`` covers: 2 adds the overflow bound
#: (:data:`~.validation.MAX_KSPACE_ENERGY`), so files scanned by an older
#: version (no ``"values_scan": 2``) are scanned again once.
_VALUE_SCAN = 2


def default_cache_dir() -> Path:
    """Per-user cache folder: ``$XDG_CACHE_HOME/iconet_fastmri`` or ``~/.cache/iconet_fastmri``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iconet_fastmri"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _restore_metadata(meta: Dict[str, Any]) -> Dict[str, Any]:
    meta = dict(meta)
    for key in ("encoding_size", "recon_size"):
        if key in meta and isinstance(meta[key], list):
            meta[key] = tuple(meta[key])
    return meta


def _valid_entry(entry: Any) -> bool:
    """A cache entry of the expected types (anything else is ignored and the file rechecked)."""
    if not isinstance(entry, dict):
        return False
    ints = all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool)
               for k in ("size", "mtime_ns", "num_slices"))
    meta = entry.get("metadata")
    return (
        ints
        and entry["num_slices"] >= 1
        and isinstance(meta, dict)
        and isinstance(entry.get("values_checked"), bool)
        and all(isinstance(meta.get(k), list) and len(meta[k]) == 3 for k in ("encoding_size", "recon_size"))
    )


def subsample_slices(
    raw_samples: List[FastMRIRawDataSample],
    sample_rate: Optional[float],
    volume_sample_rate: Optional[float],
    sample_seed: int,
) -> List[FastMRIRawDataSample]:
    """The kept slices: a ``sample_rate`` fraction of slices or a ``volume_sample_rate`` fraction of volumes.

    Drawn with ``random.Random(sample_seed)``, so the same on every rank and run (and for HDF5 and shards).
    """
    if sample_rate is not None and volume_sample_rate is not None:
        raise ValueError("set sample_rate (slices) or volume_sample_rate (volumes), not both")
    for name, rate in (("sample_rate", sample_rate), ("volume_sample_rate", volume_sample_rate)):
        if rate is not None and not 0 < rate <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {rate}")
    rng = random.Random(sample_seed)
    if sample_rate is not None and sample_rate < 1:
        keep = max(1, round(len(raw_samples) * sample_rate))
        indices = sorted(rng.sample(range(len(raw_samples)), keep))
        return [raw_samples[i] for i in indices]
    if volume_sample_rate is not None and volume_sample_rate < 1:
        names = sorted({str(s.fname) for s in raw_samples})
        kept = set(rng.sample(names, max(1, round(len(names) * volume_sample_rate))))
        return [s for s in raw_samples if str(s.fname) in kept]
    return list(raw_samples)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with Lightning
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="file", leave=False, disable=total < 2)


class IconetSliceDataset(SliceDataset):
    """A fastmri ``SliceDataset`` over the validated ``*.h5`` files of folder(s).

    Args:
        root: a folder of fastMRI HDF5 files, or a list of folders/files.
        challenge: ``"singlecoil"`` or ``"multicoil"`` (selects the target key).
        transform: called as fastmri does, ``transform(kspace, mask, target, attrs, fname, slice_num)``.
        use_dataset_cache: read/write the per-user JSON cache of file metadata.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        sample_rate: fraction of slices to keep (random, see ``sample_seed``).
        volume_sample_rate: fraction of volumes to keep (exclusive with ``sample_rate``).
        skip_bad_files: skip files that fail validation (warning naming them) instead of raising.
        max_slice_elements: refuse files whose k-space slice is larger than this.
        max_slices: refuse files declaring more slices than this (checked before any read).
        raw_sample_filter: optional filter on fastmri ``FastMRIRawDataSample`` (applied on every load).
        sample_seed: seed of the slice/volume subsampling (deterministic across ranks).
        progress: show a progress bar while scanning files.
        check_values: read every k-space slice once at build time and refuse
            (or skip) files with NaN, Inf or all-zero slices, so such data
            stops the run before the first step, not mid-epoch. A full read of
            the data; its result is cached per file.
        known_entries: checked entries of another process (its :attr:`entries`,
            e.g. rank 0's under DDP): used as cache hits where the file's size and
            modification time match, so the value scan is not repeated.

    Attributes:
        entries: the checked entry of every kept file (keyed by its resolved path), as cached.
    """

    def __init__(
        self,
        root: Union[str, Path, Sequence[Union[str, Path]]],
        challenge: str,
        transform: Optional[Callable] = None,
        use_dataset_cache: bool = True,
        cache_dir: Optional[Union[str, Path]] = None,
        sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
        skip_bad_files: bool = False,
        max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
        raw_sample_filter: Optional[Callable] = None,
        sample_seed: int = 0,
        progress: bool = True,
        check_values: bool = True,
        max_slices: int = DEFAULT_MAX_SLICES,
        known_entries: Optional[Dict[str, Any]] = None,
    ) -> None:
        if challenge not in ("singlecoil", "multicoil"):
            raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
        if sample_rate is not None and volume_sample_rate is not None:
            raise ValueError("set sample_rate (slices) or volume_sample_rate (volumes), not both")
        for name, rate in (("sample_rate", sample_rate), ("volume_sample_rate", volume_sample_rate)):
            if rate is not None and not 0 < rate <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {rate}")
        # Attributes fastmri's SliceDataset methods rely on.
        self.transform = transform
        self.recons_key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
        self.challenge = challenge
        self.raw_sample_filter = raw_sample_filter or (lambda raw_sample: True)
        self.max_slice_elements = max_slice_elements
        self.max_slices = max_slices
        self.dataset_cache_file = None  # fastmri's pickle cache is never used

        files = self._list_files(root)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = self._load_cache(cache_dir, root) if use_dataset_cache else {}
        cache.update(known_entries or {})
        entries: Dict[str, Any] = {}
        self.skipped_files: List[Path] = []
        self.raw_samples: List[FastMRIRawDataSample] = []
        #: k-space shape of each file (keyed by ``str(path)``, as ``raw_samples[i].fname``).
        self.kspace_shapes: Dict[str, Tuple[int, ...]] = {}
        #: :func:`~.validation.kspace_fingerprint` of each file (same keys).
        self.fingerprints: Dict[str, str] = {}
        scan = _progress(files, len(files), f"checking {challenge} files") if progress else files
        for path in scan:
            try:
                entry, shape = self._checked_entry(path, cache, challenge, max_slice_elements, check_values)
            except FastMRIFileError as err:
                if not skip_bad_files:
                    raise
                log.warning("skipping bad fastMRI file: %s", err)
                self.skipped_files.append(path)
                continue
            entries[str(path.resolve())] = entry
            self.kspace_shapes[str(path)] = shape
            self.fingerprints[str(path)] = entry["fingerprint"]
            metadata = _restore_metadata(entry["metadata"])
            for slice_ind in range(entry["num_slices"]):
                raw_sample = FastMRIRawDataSample(path, slice_ind, metadata)
                if self.raw_sample_filter(raw_sample):
                    self.raw_samples.append(raw_sample)
        if self.skipped_files:
            log.warning(
                "skipped %d bad file(s) of %s: %s", len(self.skipped_files), root,
                ", ".join(p.name for p in self.skipped_files),
            )
        if not self.raw_samples:
            raise FileNotFoundError(f"no usable {challenge} slices found in {root}")
        if use_dataset_cache and any(cache.get(k) != v for k, v in entries.items()):
            self._save_cache(cache_dir, root, entries)
        self.entries = entries

        self.raw_samples = subsample_slices(self.raw_samples, sample_rate, volume_sample_rate, sample_seed)

    # ------------------------------------------------------------------ files
    def _checked_entry(
        self, path: Path, cache: Dict[str, Any], challenge: str, max_slice_elements: int, check_values: bool
    ) -> Tuple[Dict[str, Any], Tuple[int, ...]]:
        """Check one file and return its cache entry and k-space shape.

        The structural checks (:func:`validate_fastmri_file`: header, shapes,
        limits; cheap) run on every build, cached or not, so the cache never
        changes what is accepted. The cache spares the metadata parse and the
        value scan (:func:`scan_kspace_values`, a full read) and the content
        fingerprint (:func:`kspace_fingerprint`, one row), keyed by the
        file's size and modification time.
        """
        num_slices, shape = validate_fastmri_file(path, challenge, max_slice_elements, self.max_slices)
        stat = path.stat()
        hit = cache.get(str(path.resolve()))
        if not (hit and hit["size"] == stat.st_size and hit["mtime_ns"] == stat.st_mtime_ns
                and hit["num_slices"] == num_slices):
            try:
                metadata, parsed_slices = self._retrieve_metadata(path)
            except Exception as err:  # header fields fastmri could not parse
                raise FastMRIFileError(path, f"fastmri could not read its metadata ({err!r})") from err
            hit = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "num_slices": int(parsed_slices),
                "metadata": _jsonable(metadata),
                "values_checked": False,
            }
        if check_values and not (hit["values_checked"] and hit.get("values_scan") == _VALUE_SCAN):
            scan_kspace_values(path)
            hit = {**hit, "values_checked": True, "values_scan": _VALUE_SCAN}
        if not isinstance(hit.get("fingerprint"), str):
            hit = {**hit, "fingerprint": kspace_fingerprint(path)}
        return hit, shape

    @staticmethod
    def _list_files(root) -> List[Path]:
        """The ``*.h5`` entries of the folder(s); a dangling or looping symlink is a :class:`FastMRIFileError`."""
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        files: List[Path] = []
        for entry in roots:
            entry = Path(entry)
            if entry.is_dir():
                found = sorted(entry.glob("*.h5"))
                if not found:
                    raise FileNotFoundError(f"data folder {entry} holds no .h5 files")
                files.extend(found)
            elif entry.is_file() or entry.is_symlink():
                files.append(entry)
            else:
                raise FileNotFoundError(f"data path {entry} does not exist")
        return files

    def __getitem__(self, i: int):
        reseed_sample(self, i)  # training draws per (seed, epoch, sample): resumable mid-epoch
        return super().__getitem__(i)

    def _kept_files(self) -> List[str]:
        return sorted({str(s.fname) for s in self.raw_samples})

    def check_images_fit(self, hr_crop: Sequence[int], split: str = "") -> None:
        """Refuse, naming them, kept volumes whose image (the k-space shape) is smaller than ``hr_crop``.

        Uses the shapes recorded while the files were validated (nothing is
        read): without it such a volume fails only when first loaded (a
        validation volume: after a whole training epoch). The data module
        skips it with ``pad_if_smaller``, which pads such images.
        """
        crop = (int(hr_crop[0]), int(hr_crop[1]))
        small = [(Path(f), self.kspace_shapes[f][-2:]) for f in self._kept_files()
                 if self.kspace_shapes[f][-2] < crop[0] or self.kspace_shapes[f][-1] < crop[1]]
        if not small:
            return
        first, (h, w) = small[0]
        others = ", ".join(f"{p.name} ({s[0]}x{s[1]})" for p, s in small[1:6])
        more = f"; {len(small) - 1} more: {others}{', ...' if len(small) > 6 else ''}" if len(small) > 1 else ""
        raise ValueError(
            f"{split + ' data: ' if split else ''}the image of {first} is {h}x{w} (its k-space shape), smaller "
            f"than hr_crop {crop[0]}x{crop[1]}{more}. It would fail when first loaded"
            f"{' (after a training epoch)' if split in ('val', 'test') else ''}; set --data.pad_if_smaller "
            f"true to zero-pad such images, or a smaller --data.hr_crop"
        )

    def slices_per_volume(self) -> Dict[str, int]:
        """Number of (kept) slices per file name."""
        return dict(Counter(Path(s.fname).name for s in self.raw_samples))

    # ------------------------------------------------------------------ cache
    def _cache_path(self, cache_dir: Path, root) -> Path:
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        ident = "|".join(str(Path(r).resolve()) for r in roots) + f"|{self.challenge}"
        digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:24]
        return cache_dir / f"dataset_{digest}.json"

    def _load_cache(self, cache_dir: Path, root) -> Dict[str, Any]:
        path = self._cache_path(cache_dir, root)
        if not path.exists():
            return {}
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
                raise ValueError("unknown cache format")
            entries = data["files"]
            if not isinstance(entries, dict):
                raise ValueError("bad 'files' entry")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("dataset cache %s cannot be read (%s); rebuilding it", path, err)
            return {}
        good = {k: v for k, v in entries.items() if _valid_entry(v)}
        if len(good) != len(entries):
            log.warning("dataset cache %s: %d malformed entries ignored (rechecked)", path, len(entries) - len(good))
        return good

    def _save_cache(self, cache_dir: Path, root, entries: Dict[str, Any]) -> None:
        try:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self._cache_path(cache_dir, root)
            atomic_write_json(path, {"version": _CACHE_VERSION, "files": entries}, private=True)
        except OSError as err:  # a read-only home must not stop training
            log.warning("could not write dataset cache in %s: %s", cache_dir, err)


def shared_volumes(train: IconetSliceDataset, val: IconetSliceDataset) -> List[str]:
    """Volumes kept in both datasets, by file name or by content (:func:`~.validation.kspace_fingerprint`).

    Returns one line per pair, e.g. ``"a.h5 (same name)"`` or
    ``"a.h5 (train) = b.h5 (val), same k-space"``; empty when the splits are disjoint.
    """
    train_files = train._kept_files()
    names = {Path(f).name for f in train_files}
    by_print: Dict[str, List[str]] = {}
    for f in train_files:
        by_print.setdefault(train.fingerprints[f], []).append(Path(f).name)
    pairs = []
    for f in val._kept_files():
        name = Path(f).name
        if name in names:
            pairs.append(f"{name} (same name)")
        pairs += [f"{other} (train) = {name} (val), same k-space"
                  for other in by_print.get(val.fingerprints[f], []) if other != name]
    return pairs
