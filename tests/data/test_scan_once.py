"""Issue 24, first step: under DDP the k-space value scan runs once per node, not once per rank.

Lightning calls ``prepare_data`` on each node's local rank 0 while the node's other ranks wait
at a barrier; the data module builds the stage's datasets there, so the value scan lands in the
per-user cache and the other ranks' ``setup`` reads the result instead of every k-space slice.
Before, every rank scanned everything in ``setup``.
"""

from types import SimpleNamespace

import iconet_fastmri.data.dataset as dataset_module
from iconet_fastmri.pl_modules import IconetDataModule

from helpers.runs import write_tiny_fit_data


def _dm(data, cache, world_size, fn="fit"):
    dm = IconetDataModule(data_path=str(data), hr_crop=(32, 32), num_workers=0, use_dataset_cache=True,
                          cache_dir=str(cache))
    dm.trainer = SimpleNamespace(world_size=world_size, state=SimpleNamespace(fn=SimpleNamespace(value=fn)))
    return dm


def test_local_rank_zero_scans_in_prepare_data_and_the_other_ranks_read_the_cache(tmp_path, monkeypatch):
    data = write_tiny_fit_data(tmp_path / "data")
    scanned = []
    real = dataset_module.scan_kspace_values
    monkeypatch.setattr(dataset_module, "scan_kspace_values", lambda path: scanned.append(path.name) or real(path))

    _dm(data, tmp_path / "cache", world_size=2).prepare_data()  # local rank 0, before the barrier
    assert len(scanned) == 3  # 2 training volumes and 1 validation volume, each read once
    rank1 = _dm(data, tmp_path / "cache", world_size=2)
    rank1.setup("fit")  # after the barrier
    assert len(scanned) == 3, "rank 1 read k-space values again"
    assert len(rank1.datasets["train"]) == 6 and len(rank1.datasets["val"]) == 2


def test_one_process_or_no_cache_scans_in_setup_as_before(tmp_path, monkeypatch):
    data = write_tiny_fit_data(tmp_path / "data")
    scanned = []
    real = dataset_module.scan_kspace_values
    monkeypatch.setattr(dataset_module, "scan_kspace_values", lambda path: scanned.append(path.name) or real(path))
    single = _dm(data, tmp_path / "cache", world_size=1)
    single.prepare_data()
    assert scanned == []  # nothing to share: setup scans
    single.setup("validate")
    assert len(scanned) == 1  # only the split the stage needs
