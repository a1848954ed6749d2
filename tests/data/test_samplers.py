"""Training order and draws: per (seed, epoch, sample), so workers, ranks and resumes agree."""


import pytest
import torch

from iconet_fastmri.data.samplers import EpochSampler, ResumableLoader, training_seed
from iconet_fastmri.pl_modules import IconetDataModule

from helpers.runs import write_tiny_fit_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_fit_data(tmp_path_factory.mktemp("samplers"))


def _training_batches(data, workers, epoch=0):
    dm = IconetDataModule(data_path=str(data), hr_crop=(32, 32), batch_size=2, num_workers=workers,
                          use_dataset_cache=False, patch_size=(16, 32))
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [(list(b.fname), b.slice_num.tolist(), b.mask.clone(), b.patch.clone()) for b in loader]


def test_training_masks_and_patches_do_not_depend_on_the_number_of_workers(data):
    """Before, each worker drew from its own stream: 0, 1 and 2 workers gave different masks."""
    runs = [_training_batches(data, w) for w in (0, 1, 2)]
    for other in runs[1:]:
        for (f0, s0, m0, p0), (f1, s1, m1, p1) in zip(runs[0], other):
            assert (f0, s0) == (f1, s1) and torch.equal(m0, m1) and torch.equal(p0, p1)
    epoch1 = _training_batches(data, 0, epoch=1)
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(runs[0], epoch1))  # fresh draws each epoch


def test_a_resumed_sampler_skips_what_the_checkpoint_consumed():
    dataset = type("D", (), {"__len__": lambda self: 7})()
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_at(2, 4)
    assert list(sampler) == full[4:]
    sampler.set_epoch(3)  # the next epoch is whole
    assert len(list(sampler)) == 7
    assert training_seed(0, 1, 5) != training_seed(0, 2, 5) != training_seed(0, 1, 6)


def test_the_loader_state_round_trips_and_a_foreign_state_is_refused():
    dataset = type("D", (), {"__len__": lambda self: 6, "__getitem__": lambda self, i: i})()
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=0)
    loader = ResumableLoader(dataset, batch_size=2, sampler=sampler, progress=lambda: (1, 2))
    state = loader.state_dict()
    assert state == {"sampler": "EpochSampler", "epoch": 1, "samples": 4}
    fresh = ResumableLoader(dataset, batch_size=2, sampler=EpochSampler(dataset, 1, 0, 0), progress=lambda: (0, 0))
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)
    sampler.set_epoch(1)
    assert [b.tolist() for b in fresh] == [b.tolist() for b in loader][2:]
    with pytest.raises(ValueError, match="not ours"):
        fresh.load_state_dict({"epoch": 1})


def test_a_save_at_an_epochs_end_resumes_the_next_epoch_whole():
    """Review: at an epoch's end Lightning has already counted the next epoch, so a state of
    (next epoch, N batches) made the resumed run skip all of it (seen with max_steps set)."""
    dataset = type("D", (), {"__len__": lambda self: 6, "__getitem__": lambda self, i: i})()
    loader = ResumableLoader(dataset, batch_size=2, sampler=EpochSampler(dataset, 1, 0, 0), progress=lambda: (2, 3))
    assert loader.state_dict()["samples"] == 0  # 3 batches = the whole epoch: nothing of epoch 2 consumed
    fresh = ResumableLoader(dataset, batch_size=2, sampler=EpochSampler(dataset, 1, 0, 0), progress=lambda: (0, 0))
    fresh.load_state_dict(loader.state_dict())
    fresh.sampler.set_epoch(2)
    assert len(list(fresh)) == 3


def test_predictions_are_written_once_per_volume_by_the_rank_that_owns_it(tmp_path, monkeypatch):
    """Review: the volume sampler pads ranks with repeats; a repeat of a written volume reopened it and
    finish() overwrote the whole file with a few slices (and a rank without volumes wrote a partial one)."""
    import numpy as np

    import iconet_fastmri.predictions as predictions
    from iconet_fastmri.data.samplers import VolumeSampler

    sizes = {"a.h5": 10, "b.h5": 8, "c.h5": 6}
    raw = [(name, i, {}) for name, n in sizes.items() for i in range(n)]
    writes = []
    monkeypatch.setattr(predictions, "write_volume_atomic", lambda path, vol, attrs: writes.append((path.name, len(vol))))
    for ranks in (2, 4):
        for rank in range(ranks):
            sampler = VolumeSampler(type("D", (), {"raw_samples": raw})(), ranks, rank)
            assembler = predictions.VolumeAssembler(tmp_path, sizes, {"scale": 2}, owned=sampler.own_volumes)
            for i in sampler:
                assembler.add(raw[i][0], raw[i][1], np.zeros((2, 2)), 4.0)
            assembler.finish()
        assert sorted(writes) == sorted(sizes.items()), writes  # each volume once, whole
        writes.clear()


def test_a_save_at_the_end_of_a_shortened_epoch_resumes_the_next_epoch_whole(data):
    """Review: with limit_train_batches (N below the loader's length) an end-of-epoch save recorded
    (next epoch, N batches), and the resumed run skipped N batches of an epoch it had not started."""
    from types import SimpleNamespace

    dm = IconetDataModule(data_path=str(data), hr_crop=(32, 32), batch_size=2, num_workers=0, use_dataset_cache=False)
    dm.setup("fit")
    counters = SimpleNamespace(started=1, processed=0)  # mid-epoch 0, one batch of three trained
    batches = SimpleNamespace(processed=1)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, fit_loop=SimpleNamespace(
        epoch_progress=SimpleNamespace(current=counters), epoch_loop=SimpleNamespace(
            batch_progress=SimpleNamespace(current=batches))))
    loader = dm.train_dataloader()
    assert len(loader) == 3 and loader.state_dict()["samples"] == 2
    counters.processed = 1  # epoch 0 ended after 1 batch (limit_train_batches=1); its end-of-epoch save
    assert loader.state_dict() == {"sampler": "EpochSampler", "epoch": 1, "samples": 0}
