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

__all__ = ["EpochSampler", "worker_init"]


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
