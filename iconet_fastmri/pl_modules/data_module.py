"""Lightning data module over fastMRI HDF5 folders or shard sets (``format: shards``).

Not fastmri's ``FastMriDataModule`` (under Lightning 2 its bool flags parse
"False" as True, ``test_split="challenge"`` raises, and its
``worker_init_fn`` assumes a ``mask_func``); ours reads the same folder
layout through :class:`~iconet_fastmri.data.dataset.IconetSliceDataset`
(a fastmri ``SliceDataset``).

Splits: ``{data_path}/{challenge}_{train,val,test}`` as fastMRI lays them out
(``knee_singlecoil_train`` style names are matched too), or explicit
``train_path`` / ``val_path`` / ``test_path``. fastMRI's own test and
challenge files hold no targets, so super-resolution testing uses the val
split by default (``test_split="val"``), as the SR literature does.

Masks: validation/test masks are seeded per (file, slice); training order and
draws per (seed, epoch, sample) (:mod:`iconet_fastmri.data.samplers`).
With several devices, validation/test deal whole volumes to ranks, every rank
the same number of batches (our ``VolumeSampler``; fastmri's hangs when a rank
gets no volume); set ``use_distributed_sampler=False`` (the CLI does).

A folder of real low-resolution scans (``scripts/make_lr_acquisition.py``'s files,
attribute ``lr_scale``) is read for ``predict`` only, as
:class:`~iconet_fastmri.data.lr_dataset.AcquiredChunks`, on one device; any other
stage refuses it (it has no targets).

Long because it is the one place where the data settings meet Lightning's hooks:
the constructor's checks, the split folders, four dataset kinds (HDF5, shards,
their test part, acquired scans) and the loaders with their samplers.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..data.dataset import IconetSliceDataset, shared_volumes
from ..data.lr_dataset import AcquiredChunks
from ..data.lr_files import is_lr_acquisition_folder
from ..data.shards import ShardSettings, ShardSliceDataset, is_remote
from ..data.transforms import IconetDataTransform
from ..data.validation import DEFAULT_MAX_SLICE_ELEMENTS, check_grid_size
from ..data.splits import PartFilter, check_test_fraction
from ..data.batching import collate_samples
from ..physics.acquisition import Acquisition
from ..physics.masks import MaskConfig
from ..data.samplers import EpochSampler, ResumableLoader, VolumeSampler

__all__ = ["IconetDataModule"]

log = logging.getLogger(__name__)


class IconetDataModule(pl.LightningDataModule):
    """fastMRI data for ICONet.

    Args:
        data_path: folder holding the split folders (``singlecoil_train`` ...).
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        scale: super-resolution factor s.
        mask: the undersampling mask on the LR grid (name + arguments).
        noise_std: complex Gaussian noise on the acquired LR k-space samples.
        kspace_steps: further acquisition effects, ``[{"name": ..., **options}]``
            (:data:`~iconet_fastmri.physics.degradation.KSPACE_STEPS`).
            ``scale``, ``mask``, ``noise_std`` and ``kspace_steps`` are the
            acquisition model, set here in one place and validated once: they
            build :attr:`acquisition`
            (:class:`~iconet_fastmri.physics.acquisition.Acquisition`), the one
            object that the workers draw masks with and that the CLI hands to
            the Lightning module, which simulates on the device with it.
        hr_crop: HR grid ``[H, W]`` (fastMRI reconstructions: 320x320).
        patch_size: optional random HR training patch ``[ph, pw]`` (multiples of s), cut on the
            device after the whole slice is degraded, with the whole slice's normalisation scale
            (``models/patches.py``): it saves the network's activation memory, not data loading.
            It may be smaller than ``hr_crop`` only along axes the mask samples fully (the rows,
            for fastMRI's 1D masks), where cutting the measured k-space is exact; anything else
            is refused at start-up (docs/REAL_DATA.md, "Patch training").
        batch_size: slices per batch (per device).
        num_workers: data loader workers.
        sample_rate: fraction of training slices to use.
        val_sample_rate: fraction of validation/test *volumes* to use.
        volume_sample_rate: fraction of training volumes to use.
        use_dataset_cache: cache file metadata (JSON, per-user folder).
        cache_dir: cache folder (default ``~/.cache/iconet_fastmri``).
        anatomy: ``"knee"`` or ``"brain"``: which ``<anatomy>_<challenge>_<split>``
            folders of ``data_path`` to use. Needed when both are there (fastMRI's
            knee and brain tarballs unpack side by side); an ambiguous layout is an
            error that lists the candidates.
        train_path, val_path, test_path: explicit split folders (override data_path).
        test_split: folder used for ``test`` / ``predict``: ``"val"`` (default) or ``"test"``
            (an explicit ``test_path`` wins).
        test_fraction: with ``test_split: val``, hold out this fraction of the
            val folder's volumes (by a hash of the file name,
            :mod:`iconet_fastmri.data.splits`) as the test part: ``validate``
            (checkpoint selection) uses the rest, ``test`` / ``predict`` only those.
        mask_seed_rule: validation/test masks seeded per slice (``"slice"``, ours)
            or per volume as fastMRI's transforms do (``"volume"``).
        check_values: read every k-space slice once when a dataset is built and
            refuse (or with ``skip_bad_files`` skip) files with NaN, Inf or
            all-zero slices; cached per file.
        skip_bad_files: skip corrupt files with a warning naming them instead of stopping.
        max_slice_elements: refuse files whose k-space slice is larger (and an
            ``hr_crop`` or ``patch_size`` of more pixels, before masks are drawn on it).
        pad_if_smaller: zero-pad images smaller than ``hr_crop`` (fastMRI brain widths vary).
            Without it, a volume whose image (k-space shape) is smaller than
            ``hr_crop`` is refused when its split is built, naming it.
        demo: generate the built-in demo dataset in ``data_path`` if it is missing.
        demo_volumes: ``[train, val]`` volumes of the demo dataset.
        demo_slices: slices per demo volume.
        format: ``"hdf5"`` (fastMRI files) or ``"shards"``: ``data_path`` is a shard set from
            ``scripts/prepare_shards.py`` (folder or URL; same challenge, hr_crop, pad_if_smaller;
            samples equal the HDF5 path's; :mod:`iconet_fastmri.data.shards`, docs/SHARDS.md).
        shard_cache: local cache folder of a remote shard set (litdata's chunk cache).
        seed: base seed of the training randomness and sample-rate subsets.
    """

    def __init__(
        self,
        data_path: str = "demo_data",
        challenge: Literal["singlecoil", "multicoil"] = "singlecoil",
        scale: int = 2,
        mask: MaskConfig = MaskConfig(),
        noise_std: float = 0.0,
        kspace_steps: Optional[List[Dict[str, Any]]] = None,
        hr_crop: Tuple[int, int] = (320, 320),
        patch_size: Optional[Tuple[int, int]] = None,
        batch_size: int = 8,
        num_workers: int = 4,
        sample_rate: Optional[float] = None,
        val_sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
        use_dataset_cache: bool = True,
        cache_dir: Optional[str] = None,
        train_path: Optional[str] = None,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        test_split: Literal["val", "test"] = "val",
        test_fraction: Optional[float] = None,
        anatomy: Optional[Literal["knee", "brain"]] = None,
        mask_seed_rule: Literal["slice", "volume"] = "slice",
        check_values: bool = True,
        skip_bad_files: bool = False,
        max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
        pad_if_smaller: bool = False,
        demo: bool = False,
        demo_volumes: Tuple[int, int] = (12, 3),
        demo_slices: int = 8,
        format: Literal["hdf5", "shards"] = "hdf5",
        shard_cache: Optional[str] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if challenge not in ("singlecoil", "multicoil"):
            raise ValueError(f"challenge must be 'singlecoil' or 'multicoil', got {challenge!r}")
        if test_split not in ("val", "test"):
            raise ValueError(f"test_split must be 'val' or 'test', got {test_split!r}")
        self.acquisition = Acquisition(scale, MaskConfig(**mask) if isinstance(mask, dict) else mask,
                                       noise_std, kspace_steps)
        if format not in ("hdf5", "shards"):
            raise ValueError(f"format must be 'hdf5' or 'shards', got {format!r}")
        self.format, self.shard_root, self.shard_cache = format, str(data_path), shard_cache  # a URL: no Path
        if format == "shards":
            problem = ("the demo writes HDF5: use format hdf5, or prepare shards from it" if demo else
                       "train/val/test_path are for HDF5; data_path names the shard set" if any(
                           (train_path, val_path, test_path)) else
                       f"data_path {data_path} is remote: set --data.shard_cache to a local folder"
                       if is_remote(self.shard_root) and not shard_cache else "")
            if problem:
                raise ValueError(f"format: shards: {problem}")
        self.data_path = Path(data_path)
        self.challenge = challenge
        if len(hr_crop) != 2 or min(int(n) for n in hr_crop) < 1:
            raise ValueError(f"hr_crop must be two positive sizes [H, W], got {list(hr_crop)}")
        self.hr_crop = (int(hr_crop[0]), int(hr_crop[1]))
        if patch_size is not None and (len(patch_size) != 2 or min(int(n) for n in patch_size) < 1):
            raise ValueError(f"patch_size must be two positive sizes [h, w], got {list(patch_size)}")
        self.patch_size = tuple(int(n) for n in patch_size) if patch_size is not None else None
        check_grid_size(self.hr_crop, self.patch_size, max_slice_elements)  # before masks are drawn on them
        self.acquisition.check_grid(self.hr_crop, self.patch_size)  # sizes, the mask on its grid, the patch
        self.test_fraction = check_test_fraction(test_fraction)
        if self.test_fraction is not None and test_split != "val":
            raise ValueError("test_fraction splits the val folder; it needs test_split: val")
        self.anatomy = anatomy
        self.mask_seed_rule = mask_seed_rule
        self.check_values = check_values
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sample_rate = sample_rate
        self.val_sample_rate = val_sample_rate
        self.volume_sample_rate = volume_sample_rate
        self.use_dataset_cache = use_dataset_cache
        self.cache_dir = cache_dir
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        self.test_split = test_split
        self.skip_bad_files = skip_bad_files
        self.max_slice_elements = max_slice_elements
        self.pad_if_smaller = pad_if_smaller
        self.demo = demo
        self.demo_volumes = tuple(demo_volumes)
        self.demo_slices = demo_slices
        self.seed = seed
        self.datasets: dict = {}
        self._known_entries: Dict[str, Dict[str, Any]] = {}  # rank 0's checked files, under DDP

    @property
    def scale(self) -> int:
        return self.acquisition.scale

    @property
    def mask(self) -> MaskConfig:
        return self.acquisition.mask

    @property
    def stores_images(self) -> bool:  # compact shards hold the LR k-space and targets, not HR images
        return not any(getattr(d, "compact_scale", None) for d in self.datasets.values())

    # ------------------------------------------------------------------ paths
    def split_path(self, split: str) -> Path:
        """Folder of a split: the explicit path, else ``{data_path}/[<anatomy>_]{challenge}_{split}``.

        Without ``anatomy``, both ``{challenge}_{split}`` and any
        ``<anatomy>_{challenge}_{split}`` are candidates, and more than one is an error.
        With ``anatomy``, ``<anatomy>_{challenge}_{split}``, else ``{challenge}_{split}``.
        """
        if self.format == "shards":
            if is_remote(self.shard_root):
                raise ValueError(f"split {split!r} of {self.shard_root} is remote, not a folder")
            return self.data_path / split
        explicit = self.paths.get(split)
        if explicit:
            return Path(explicit)
        if self.anatomy:
            named = self.data_path / f"{self.anatomy}_{self.challenge}_{split}"
            candidates = [named if named.is_dir() else self.data_path / f"{self.challenge}_{split}"]
        else:
            candidates = [self.data_path / f"{self.challenge}_{split}"]
            candidates += sorted(self.data_path.glob(f"*_{self.challenge}_{split}"))
        found = [path for path in candidates if path.is_dir()]
        if len(found) > 1:
            raise ValueError(
                f"{self.data_path} holds several {self.challenge} {split} folders: "
                f"{', '.join(p.name for p in found)}; choose with --data.anatomy knee|brain "
                f"or --data.{split}_path"
            )
        if not found:
            raise FileNotFoundError(
                f"no {split} folder for {self.challenge}: looked for {', '.join(str(c) for c in candidates[:1])}"
                f"{'' if self.anatomy else f' (or {self.data_path}/<knee|brain>_{self.challenge}_{split})'}; "
                f"set data_path or {split}_path"
            )
        return found[0]

    def prepare_data(self) -> None:
        """Before :meth:`setup`, once per node: the demo data (with ``demo``).

        With ``demo``: write (or reuse) the demo splits in ``data_path``, before anything else runs.

        The demo writes only into a ``data_path`` that does not exist, is empty, or
        that it marked itself (:func:`~iconet_fastmri.demo.make_demo_splits`); a
        folder holding a real dataset or other files is refused here, at start-up,
        with a message naming it, and nothing in it is touched.
        """
        if self.demo:
            from ..demo import make_demo_splits

            make_demo_splits(
                self.data_path,
                challenge=self.challenge,
                train_volumes=self.demo_volumes[0],
                val_volumes=self.demo_volumes[1],
                slices=self.demo_slices,
                recon_size=self.hr_crop,
                seed=self.seed,
                progress=True,
            )

    #: The splits a trainer entry point builds in :meth:`setup`.
    _STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

    def _share_value_scan(self, stage: Optional[str]) -> None:
        """Under DDP, global rank 0 reads every k-space slice (``check_values``); the other ranks wait for its result.

        Rank 0 builds the stage's datasets (scanning, or reading its cache) and
        broadcasts their checked entries; every other rank, on any node, builds its
        datasets from them (:class:`~iconet_fastmri.data.dataset.IconetSliceDataset`'s
        ``known_entries``) without reading the data. A refusal on rank 0 (a NaN
        file, ...) is sent too, and every rank stops with it instead of waiting.
        The wait is a collective: a first scan longer than the process group's
        timeout (30 min by default) needs a longer one (``DDPStrategy(timeout=...)``)
        or shards, whose scan happened when they were written (docs/CLUSTER.md).
        """
        trainer = self.trainer
        if (trainer is None or trainer.world_size <= 1 or self.format != "hdf5" or not self.check_values
                or not (torch.distributed.is_available() and torch.distributed.is_initialized())):
            return
        for split in self._STAGE_SPLITS.get(stage or "fit", ()):  # every rank takes part in every broadcast
            payload: List[Any] = [None]
            if trainer.global_rank == 0:
                try:
                    payload = [("entries", getattr(self._dataset(split), "entries", {}))]
                except Exception as err:
                    torch.distributed.broadcast_object_list([("error", f"{type(err).__name__}: {err}")], src=0)
                    raise
            torch.distributed.broadcast_object_list(payload, src=0)
            kind, value = payload[0]
            if kind == "error":
                raise RuntimeError(f"rank 0 refused the {split} data, so this rank stops too: {value}")
            self._known_entries[split] = value

    # ------------------------------------------------------------------ datasets
    def _dataset(self, split: str) -> IconetSliceDataset:
        if split in self.datasets:
            return self.datasets[split]
        train = split == "train"
        # Each split's transform gets its own copy: training masks come from its mask RNG,
        # which data-loader workers reseed; validation masks are seeded per slice.
        transform = IconetDataTransform(
            self.acquisition.with_mask(self.acquisition.mask),
            self.hr_crop,
            use_seed=not train,
            patch_size=self.patch_size if train else None,
            seed=self.seed,
            pad_if_smaller=self.pad_if_smaller,
            mask_seed_rule=self.mask_seed_rule,
        )
        part = None
        if self.test_fraction is not None and split in ("val", "test"):
            part = split  # the val folder, split by file name into a val and a test part
        fraction = self.test_fraction
        if self.format == "shards":
            source = "val" if split == "test" and self.test_split == "val" else split
            dataset = ShardSliceDataset(
                self.shard_root, source, ShardSettings(self.challenge, self.hr_crop, self.pad_if_smaller),
                transform=transform, cache_dir=self.shard_cache,
                sample_rate=self.sample_rate if train else None,
                volume_sample_rate=self.volume_sample_rate if train else self.val_sample_rate,
                raw_sample_filter=None if part is None else PartFilter(part, fraction), sample_seed=self.seed,
            )
            dataset.check_run(self.scale, self.acquisition.centre_lines(self.hr_crop))
            self.datasets[split] = dataset
            return dataset
        if split == "test" and not self.paths.get("test") and self.test_split == "val":
            folder = self.split_path("val")  # fastMRI's test files have no targets: the val folder
        else:
            folder = self.split_path(split)
        if is_lr_acquisition_folder(folder):  # real low-resolution scans: predict only (docs/ACQUIRED.md)
            self.datasets[split] = self._acquired(folder, split)
            return self.datasets[split]
        dataset = IconetSliceDataset(
            folder,
            self.challenge,
            transform=transform,
            use_dataset_cache=self.use_dataset_cache,
            cache_dir=self.cache_dir,
            sample_rate=self.sample_rate if train else None,
            volume_sample_rate=self.volume_sample_rate if train else self.val_sample_rate,
            skip_bad_files=self.skip_bad_files,
            max_slice_elements=self.max_slice_elements,
            sample_seed=self.seed,
            raw_sample_filter=None if part is None else PartFilter(part, fraction),
            check_values=self.check_values,
            known_entries=self._known_entries.get(split),
        )
        if not self.pad_if_smaller:  # a too-small volume is refused now, not when first loaded
            dataset.check_images_fit(self.hr_crop, split)
        self.datasets[split] = dataset
        return dataset

    def _acquired(self, folder: Path, split: str) -> AcquiredChunks:
        """``predict`` on a folder of low-resolution acquisition files (``make_lr_acquisition.py``'s), one device."""
        trainer = self.trainer
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        if trainer is None or getattr(fn, "value", None) != "predict" or split != "test":
            raise ValueError(f"{folder} holds low-resolution acquisitions (attribute lr_scale), not HR data: they have "
                             f"no targets to train or score on; reconstruct them with predict or run_inference.py")
        if trainer.world_size > 1:
            raise ValueError(f"predict on the low-resolution acquisitions of {folder} runs on one device "
                             f"(--trainer.devices 1); got {trainer.world_size} processes")
        module = trainer.lightning_module
        return AcquiredChunks.for_module(folder, module, self.batch_size)

    def _warn_shared_volumes(self) -> None:
        """Warn, naming them, about volumes in both train and val (same file name or same k-space)."""
        pairs = shared_volumes(self.datasets["train"], self.datasets["val"])
        if pairs:
            log.warning(
                "%d volume(s) are in both train and val: %s%s. Validation then scores volumes the model "
                "trained on (checkpoint choice and reported metrics are optimistic); remove them from one split",
                len(pairs), "; ".join(pairs[:10]), "; ..." if len(pairs) > 10 else "",
            )

    def setup(self, stage: Optional[str] = None) -> None:
        self._share_value_scan(stage)
        if stage in (None, "fit"):
            self._dataset("train")
            self._dataset("val")
            self._warn_shared_volumes()
        if stage == "validate":
            self._dataset("val")
        if stage in ("test", "predict"):
            self._dataset("test")

    def slices_per_volume(self, split: str) -> dict:
        """``{fname: slices}`` of a split (used to score volumes as soon as they are complete)."""
        return self._dataset(split).slices_per_volume()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        if isinstance(dataset, AcquiredChunks):  # its items are batches already, one volume each
            return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
        world = self.trainer.world_size if self.trainer is not None else 1
        sampler = None
        if split == "train":
            rank = self.trainer.global_rank if self.trainer is not None else 0
            sampler = EpochSampler(dataset, num_replicas=world, rank=rank, seed=self.seed)
            # On resume the loaders are rebuilt after the loop state is restored, and
            # Lightning creates the first iterator before its own set_epoch call.
            # Use the same counter Lightning passes to set_epoch.
            epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
            sampler.set_epoch(epoch)
            shuffle = False
        elif world > 1:
            sampler = VolumeSampler(dataset, num_replicas=world, rank=self.trainer.global_rank)
            shuffle = False
        options = dict(batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.num_workers,
                       collate_fn=collate_samples, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                       drop_last=False)
        if split == "train" and self.trainer is not None:  # the epoch's position goes into checkpoints
            return ResumableLoader(dataset, progress=self._train_progress, **options)
        return DataLoader(dataset, **options)

    def _train_progress(self) -> tuple:
        # (epoch, batches trained in it). Lightning counts an epoch processed before its end-of-epoch saves:
        # then the epoch it names is the next one, and nothing of it was trained (whatever limit_train_batches).
        epochs, loop = self.trainer.fit_loop.epoch_progress.current, self.trainer.fit_loop
        ended = epochs.processed == epochs.started
        return epochs.processed, 0 if ended else loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        """Plain-value settings stored in checkpoints (inference reads its defaults from them)."""
        return {
            "scale": self.scale,
            "challenge": self.challenge,
            "hr_crop": list(self.hr_crop),
            "mask": dataclasses.asdict(self.mask),
            "pad_if_smaller": self.pad_if_smaller,
            "test_fraction": self.test_fraction,
            "mask_seed_rule": self.mask_seed_rule,
        }
