"""Many ranks and nodes: no rank without validation data, each volume scored once on all its slices.

fastmri's ``VolumeSampler`` divides by the number of samples a rank got, so with fewer validation
volumes than ranks one rank fails and the others wait for it (the run hangs); per-rank results were
merged first-come, so a volume whose slices were on two ranks was scored on part of them.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from iconet_fastmri.data.samplers import VolumeSampler
from iconet_fastmri.metrics import VolumeAccumulator, merge_rank_results

from helpers.runs import write_tiny_fit_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_iconet_fastmri.py"


def _dataset(slices_per_volume):
    raw = [(Path(f"v{v}.h5"), s, {}) for v, n in enumerate(slices_per_volume) for s in range(n)]
    return SimpleNamespace(raw_samples=raw)


@pytest.mark.parametrize("volumes", [[2], [5, 1, 1], [3, 3, 2, 4, 1], [1, 1]])
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_rank_gets_the_same_number_of_samples_and_volumes_stay_whole(volumes, ranks):
    dataset = _dataset(volumes)
    samplers = [VolumeSampler(dataset, ranks, r) for r in range(ranks)]
    lengths = {len(list(s)) for s in samplers}
    assert len(lengths) == 1 and lengths.pop() >= 1  # equal batches per rank: no rank waits alone
    owners = {}
    for r, s in enumerate(samplers):
        for i in set(s.indices):
            owners.setdefault(str(dataset.raw_samples[i][0]), set()).add(r)
    covered = {i for s in samplers for i in s.indices}
    assert covered == set(range(len(dataset.raw_samples)))  # every slice scored
    if len(volumes) >= ranks:
        assert all(len(o) == 1 for o in owners.values())  # a volume's slices on one rank


def test_fastmris_sampler_fails_on_a_rank_without_volumes():
    """The trap this replaces (documents why; fastmri 0.3.0)."""
    from fastmri.data import VolumeSampler as FastmriVolumeSampler

    with pytest.raises(ZeroDivisionError):
        list(FastmriVolumeSampler(_dataset([2]), num_replicas=2, rank=1, shuffle=False))


def _slices(rng, n, shape=(16, 16)):
    target = np.abs(rng.standard_normal((n, *shape))).astype(np.float32) + 0.5
    pred = target + 0.1 * rng.standard_normal((n, *shape)).astype(np.float32)
    return target, pred


def test_a_volume_split_across_ranks_is_scored_on_all_its_slices_once():
    rng = np.random.default_rng(0)
    vols = {"a.h5": _slices(rng, 3), "b.h5": _slices(rng, 2)}
    expected = {name: len(t) for name, (t, _) in vols.items()}
    single = VolumeAccumulator(expected)
    for name, (t, p) in vols.items():
        for i in range(len(t)):
            single.add(name, i, t[i], {"": p[i]})
    reference = single.finalize()

    ranks = [VolumeAccumulator(expected), VolumeAccumulator(expected)]
    plan = [[("a.h5", 0), ("a.h5", 1), ("b.h5", 0), ("b.h5", 1)],  # a split; b whole
            [("a.h5", 2), ("b.h5", 1)]]  # b's slice 1 again: a sampler's padding
    for acc, items in zip(ranks, plan):
        for name, i in items:
            acc.add(name, i, vols[name][0][i], {"": vols[name][1][i]})
    merged = merge_rank_results([acc.partial() for acc in ranks])
    assert sorted(merged) == ["a.h5", "b.h5"]
    for name in merged:
        assert merged[name]["num_slices"] == expected[name]
        for key in ("psnr", "ssim", "nmse"):
            assert merged[name][key] == pytest.approx(reference[name][key], rel=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_args(data, run, metrics):
    return ["fit", "--seed_everything", 0, "--trainer.accelerator", "cpu", "--trainer.max_epochs", 1,
            "--trainer.default_root_dir", run, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", 0,
            "--data.data_path", data, "--data.hr_crop", "[32, 32]", "--data.batch_size", 1,
            "--data.num_workers", 0, "--data.use_dataset_cache", "false",
            "--model.model", "ICONet", "--model.model.init_args.width", 8,
            "--model.model.init_args.blocks_per_stage", 1, "--volume_metrics.path", metrics]


def _launch(mode, node, port):
    """The command prefix and environment of node ``node`` of 2 (one process each) for a launcher."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if mode == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                  "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    elif mode == "slurm":  # what srun sets for one task per node (Lightning's SLURMEnvironment reads it)
        prefix = [sys.executable]
        env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID=str(node), SLURM_LOCALID="0",
                   SLURM_NODEID=str(node), SLURM_JOB_ID=str(port), SLURM_JOB_NAME="iconet",
                   SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port))
    else:  # plain environment variables, as a cluster's own launcher sets them
        prefix = [sys.executable]
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), LOCAL_RANK="0",
                   WORLD_SIZE="2")
    return prefix, env


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["env", "torchrun", "slurm"])
def test_two_nodes_on_one_machine_train_and_validate_like_one_process(tmp_path, mode):
    """Two "nodes" (node ranks 0/1, 127.0.0.1, gloo), one validation volume for two ranks:
    the run ends (it hung), and the last validation equals one process's on the saved weights."""
    data = write_tiny_fit_data(tmp_path / "data")  # 1 validation volume: rank 1 has none of its own
    port = _free_port()
    procs = []
    for node in (0, 1):
        prefix, env = _launch(mode, node, port)
        args = _fit_args(data, tmp_path / "run", tmp_path / "val2.json") + [
            "--trainer.num_nodes", 2, "--trainer.devices", 1, "--trainer.strategy", "ddp"]
        procs.append(subprocess.Popen([*prefix, str(SCRIPT), *map(str, args)], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=150))  # about 15 s; a hang fails, it does not stall CI
    finally:
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[0][1] + outputs[1][1]
    two = json.loads((tmp_path / "val2.json").read_text())
    assert two["stage"] == "val" and list(two["volumes"]) == ["file_demo_009.h5"]

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    one_args = ["validate", "--seed_everything", 0, "--trainer.accelerator", "cpu", "--trainer.devices", 1,
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", tmp_path / "run1",
                "--data.data_path", data, "--data.hr_crop", "[32, 32]", "--data.batch_size", 1,
                "--data.num_workers", 0, "--data.use_dataset_cache", "false", "--ckpt_path", ckpt,
                "--volume_metrics.path", tmp_path / "val1.json"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, one_args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = json.loads((tmp_path / "val1.json").read_text())
    for name, values in one["volumes"].items():
        assert two["volumes"][name]["num_slices"] == values["num_slices"] == 2
        for key in ("psnr", "ssim", "nmse", "psnr_bicubic"):
            assert two["volumes"][name][key] == pytest.approx(values[key], rel=1e-5)
