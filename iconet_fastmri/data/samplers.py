"""Samplers of the data loaders: training order and randomness per (seed, epoch, rank), volumes per rank.

:class:`EpochSampler` shuffles training slices as a pure function of (seed,
epoch, rank) and reseeds the transforms' mask and patch RNGs in every worker
(:func:`worker_init`), so that a resumed run sees the data an uninterrupted one
would. It works alike for HDF5 (:class:`~.dataset.IconetSliceDataset`) and
shards (:class:`~.shards.ShardSliceDataset`).
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from ..physics.masks import worker_seed

__all__ = ["EpochSampler", "VolumeSampler", "worker_init"]


def _reseed_dataset(dataset, worker_id: int) -> None:
    state = getattr(dataset, "_iconet_seed_state", None)
    transform = getattr(dataset, "transform", None)
    if state is None or transform is None or not hasattr(transform, "reseed"):
        return
    base, rank, epoch = state
    transform.reseed(worker_seed(base, rank, worker_id, epoch))


def worker_init(worker_id: int) -> None:
    # Training masks/patches: a pure function of (seed, epoch, rank, worker), so
    # they differ across workers and ranks and a resumed run repeats them exactly.
    _reseed_dataset(get_worker_info().dataset, worker_id)


class EpochSampler(torch.utils.data.DistributedSampler):
    """Shuffling sampler whose order and training randomness depend only on (seed, epoch, rank).

    Lightning calls :meth:`set_epoch` before each epoch; besides the shuffle
    order, it records the epoch on the dataset so that the data loader workers
    (and the main process when ``num_workers=0``) reseed their mask RNGs.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset._iconet_seed_state = (self.seed, self.rank, int(epoch))
        _reseed_dataset(self.dataset, 0)  # num_workers=0: the main process draws


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
        everything = [i for p in plans for i in p]
        own = plans[self.rank] or everything
        self.indices = [own[k % len(own)] for k in range(self.num_samples)]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
