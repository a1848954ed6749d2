"""Samplers of the data loaders: training order per (seed, epoch, rank), draws per sample, volumes per rank.

:class:`EpochSampler` shuffles training slices as a pure function of (seed,
epoch, rank); the transforms' mask and patch draws are seeded per (seed, epoch,
sample) (:func:`training_seed`); :class:`ResumableLoader` puts the epoch's
position in checkpoints. So a run resumed, even mid-epoch, sees the data an
uninterrupted one would. It works alike for HDF5 (:class:`~.dataset.IconetSliceDataset`) and
shards (:class:`~.shards.ShardSliceDataset`).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader

__all__ = ["EpochSampler", "ResumableLoader", "VolumeSampler", "reseed_sample", "training_seed"]


def training_seed(base_seed: int, epoch: int, index: int) -> int:
    """Seed of the training randomness (mask, patch position) of sample ``index`` in ``epoch``.

    Per sample, not per worker: the draw does not depend on the number of
    workers or on which samples came before, so a run resumed mid-epoch (or run
    with other ``num_workers``) draws what an uninterrupted one does.
    """
    return zlib.crc32(f"{int(base_seed)}/{int(epoch)}/{int(index)}".encode("utf-8")) & 0xFFFFFFFF


def reseed_sample(dataset: Any, index: int) -> None:
    """Before a training sample is made: reseed the dataset's transform for (seed, epoch, index).

    A no-op for datasets no :class:`EpochSampler` drives (validation, test).
    """
    state = getattr(dataset, "_iconet_seed_state", None)
    transform = getattr(dataset, "transform", None)
    if state is not None and transform is not None and hasattr(transform, "reseed"):
        transform.reseed(training_seed(state[0], state[1], index))


class EpochSampler(torch.utils.data.DistributedSampler):
    """Shuffling sampler whose order and training randomness depend only on (seed, epoch, sample).

    Lightning calls :meth:`set_epoch` before each epoch; besides the shuffle
    order, it records (seed, epoch) on the dataset, whose ``__getitem__``
    reseeds the transform per sample (:func:`reseed_sample`). :meth:`resume_at`
    makes the given epoch start after the samples a checkpoint had consumed
    (:class:`ResumableLoader`).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._resume: Optional[Tuple[int, int]] = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset._iconet_seed_state = (self.seed, int(epoch))

    def resume_at(self, epoch: int, consumed: int) -> None:
        """In ``epoch``, skip the first ``consumed`` samples of this rank's order (they were trained on)."""
        self._resume = (int(epoch), int(consumed))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1]:]
        return iter(indices)


class ResumableLoader(DataLoader):
    """The training ``DataLoader``, resumable mid-epoch through Lightning's ``state_dict`` interface.

    Lightning stores :meth:`state_dict` in the checkpoint's loop state and, on
    resume, hands it to :meth:`load_state_dict` before iterating: the epoch and
    the samples this rank had consumed, which the :class:`EpochSampler` then
    skips. Each rank consumes the same number of batches, so rank 0's state holds
    for all.

    Args:
        progress: returns ``(epoch, batches trained in it)`` (the trainer's fit loop counters).
        *args, **kwargs: ``DataLoader``'s; the sampler must be an :class:`EpochSampler`.
    """

    def __init__(self, *args: Any, progress: Callable[[], Tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self._progress = progress

    def state_dict(self) -> Dict[str, Any]:
        epoch, batches = self._progress()
        # A save at an epoch's end (Lightning has then already counted the next epoch) consumed nothing of it.
        samples = int(batches) * int(self.batch_size) if int(batches) < len(self) else 0
        return {"sampler": "EpochSampler", "epoch": int(epoch), "samples": samples}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("sampler") != "EpochSampler":
            raise ValueError(f"the checkpoint's data loader state is not ours: {state!r}")
        self.sampler.resume_at(state["epoch"], state["samples"])


class VolumeSampler(torch.utils.data.Sampler):
    """Validation/test order under DDP: whole volumes per rank, and the same number of samples on every rank.

    fastmri's ``VolumeSampler`` deals volumes round-robin by name and divides
    by the number a rank received, so a rank with no volume (fewer volumes
    than ranks) fails while the others wait for it at the next collective: the
    run hangs. This one deals volumes to the rank with the fewest slices so
    far (largest volumes first; deterministic, so every rank computes the same
    plan) and pads every rank to the longest rank's length with repeats of
    samples (its own, or for a rank without volumes the first ranks'). Repeats
    are harmless for the metrics: :class:`~iconet_fastmri.metrics.VolumeAccumulator`
    ignores slices it has, and :func:`~iconet_fastmri.metrics.merge_rank_results`
    merges a volume's slices from all ranks and scores each volume once.

    Args:
        dataset: anything with fastmri's ``raw_samples`` (``fname`` first).
        num_replicas, rank: the DDP world size and this process's global rank.
    """

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        volumes: dict = {}
        for i, raw_sample in enumerate(dataset.raw_samples):
            volumes.setdefault(str(raw_sample[0]), []).append(i)
        plans = [[] for _ in range(self.num_replicas)]
        for name in sorted(volumes, key=lambda v: (-len(volumes[v]), v)):
            target = min(range(self.num_replicas), key=lambda r: (len(plans[r]), r))
            plans[target].extend(volumes[name])
        self.num_samples = max(len(p) for p in plans)
        #: The volumes this rank scores and writes; its other samples are padding (repeats).
        self.own_volumes = {str(dataset.raw_samples[i][0]) for i in plans[self.rank]}
        everything = [i for p in plans for i in p]
        own = plans[self.rank] or everything
        self.indices = [own[k % len(own)] for k in range(self.num_samples)]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
