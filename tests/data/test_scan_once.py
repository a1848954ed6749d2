"""Issue 24: under DDP the k-space value scan runs once in all (global rank 0); the other ranks, on any
node, wait for its result instead of reading every slice. A refusal on rank 0 stops every rank.

Before, it ran once per node (each node's local rank 0, through the per-user cache), so N nodes read
the data N times, and without the cache every rank read it.
"""

import multiprocessing as mp
import os
import socket
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch.distributed as dist

import iconet_fastmri.data.dataset as dataset_module
from iconet_fastmri.pl_modules import IconetDataModule

from helpers.runs import write_tiny_fit_data


def _dm(data, cache, world_size, rank=0, use_cache=True):
    dm = IconetDataModule(data_path=str(data), hr_crop=(32, 32), num_workers=0, use_dataset_cache=use_cache,
                          cache_dir=str(cache))
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank,
                                 state=SimpleNamespace(fn=SimpleNamespace(value="fit")))
    return dm


def _rank(rank, port, data, cache, log, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    real = dataset_module.scan_kspace_values

    def counted(path):
        with open(log, "a") as f:
            f.write(f"{rank} {path.name}\n")
        return real(path)

    dataset_module.scan_kspace_values = counted
    try:
        dm = _dm(data, cache / str(rank), world_size=2, rank=rank)  # one cache per "node": nothing shared on disk
        dm.prepare_data()
        dm.setup("fit")
        results.put((rank, "ok", len(dm.datasets["train"]), len(dm.datasets["val"])))
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put((rank, type(err).__name__, str(err), ""))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(data, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("fork")
    results, log = ctx.Queue(), tmp_path / "scans.log"
    procs = [ctx.Process(target=_rank, args=(r, port, data, tmp_path / "cache", log, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, *rest = results.get(timeout=120)  # a hang fails here instead of blocking the suite
        out[rank] = rest
    for p in procs:
        p.join(timeout=30)
    scans = log.read_text().split("\n")[:-1] if log.exists() else []
    return out, [line.split()[0] for line in scans]


def test_rank_zero_scans_once_and_the_other_rank_waits_for_its_result(tmp_path):
    data = write_tiny_fit_data(tmp_path / "data")
    out, scans = _run_two_ranks(data, tmp_path)
    assert out[0] == out[1] == ["ok", 6, 2]
    assert scans == ["0", "0", "0"], "3 files, each read once, by rank 0 alone"


def test_a_refusal_on_rank_zero_stops_every_rank(tmp_path):
    data = write_tiny_fit_data(tmp_path / "data")
    bad = sorted((data / "singlecoil_train").glob("*.h5"))[0]
    with h5py.File(bad, "r+") as f:
        k = f["kspace"][()]
        k[1, 0, 0] = np.nan
        f["kspace"][...] = k
    out, _ = _run_two_ranks(data, tmp_path)
    assert out[0][0] == "FastMRIFileError" and bad.name in out[0][1] and "NaN" in out[0][1]
    assert out[1][0] == "RuntimeError" and "rank 0 refused the train data" in out[1][1] and bad.name in out[1][1]


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_process_scans_in_setup_as_before(tmp_path, monkeypatch, use_cache):
    data = write_tiny_fit_data(tmp_path / "data")
    scanned = []
    real = dataset_module.scan_kspace_values
    monkeypatch.setattr(dataset_module, "scan_kspace_values", lambda path: scanned.append(path.name) or real(path))
    single = _dm(data, tmp_path / "cache", world_size=1, use_cache=use_cache)
    single.prepare_data()
    assert scanned == []
    single.setup("validate")
    assert len(scanned) == 1  # only the split the stage needs
