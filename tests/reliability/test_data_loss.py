"""Issue 21, class 1: work lost or data destroyed.

* a checkpoint save interrupted during a cross-filesystem move keeps the previous ``last.ckpt``;
* non-finite weights never replace a finite ``last.ckpt`` or best checkpoint;
* an output folder that is, contains or lies inside an input folder is refused
  (``run_inference.py``, ``predict``'s writer, ``evaluate.py``), with or without ``--overwrite``;
* the demo writes only into a folder that does not exist, is empty, or that it marked itself.
"""

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from helpers.runs import write_checkpoint
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from iconet_fastmri.callbacks import IconetCheckpoint
from iconet_fastmri.demo import make_demo_splits, write_fastmri_dataset
from iconet_fastmri.pl_modules.data_module import IconetDataModule
from iconet_fastmri.predictions import PredictionWriter

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


# ------------------------------------------------------------------ a tiny Lightning run
class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        # "score" rises every step, so every step is a new best checkpoint.
        self.log("score", torch.tensor(float(self.global_step)), on_step=True)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(0))),
                          batch_size=2)


def _trainer(max_steps, callbacks):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------ 1: cross-filesystem checkpoint saves
class _Killed(BaseException):
    """A kill -9 in the middle of the copy (nothing after it runs)."""


def test_checkpoint_save_interrupted_during_a_cross_filesystem_copy_keeps_last_ckpt(tmp_path, monkeypatch):
    """TMPDIR on another filesystem: Lightning stages the checkpoint there and moves it, and the move
    becomes a copy that truncates its destination first. The destination must be a temporary beside
    ``last.ckpt``, never ``last.ckpt`` itself."""
    folder = tmp_path / "run" / "checkpoints"
    other_fs = tmp_path / "tmpfs"
    other_fs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(other_fs))  # TMPDIR=<another filesystem>
    module = _Tiny()
    ckpt = IconetCheckpoint(dirpath=folder, save_last=True, last_every_n_steps=1)
    trainer = _trainer(2, [ckpt])
    trainer.fit(module)
    last = folder / "last.ckpt"
    before = last.read_bytes()
    assert _load(last)["global_step"] == 2

    moves = []
    real_move = shutil.move

    def cross_filesystem_move(src, dst, *args, **kwargs):
        """shutil.move across filesystems: copy onto ``dst`` (truncated first), killed half-way."""
        moves.append(Path(dst))
        with open(dst, "wb") as out:
            out.write(Path(src).read_bytes()[:64])
        raise _Killed("kill -9 during the copy (simulated)")

    monkeypatch.setattr(shutil, "move", cross_filesystem_move)
    with torch.no_grad():
        module.layer.weight.add_(1.0)
    with pytest.raises(_Killed):
        ckpt._save_checkpoint(trainer, str(last))
    monkeypatch.setattr(shutil, "move", real_move)

    assert moves, "the save did not go through the staged move this test simulates"
    assert all(dst != last and dst.parent == folder for dst in moves), moves  # a temporary beside last.ckpt
    assert last.read_bytes() == before  # the previous checkpoint, whole
    assert _load(last)["global_step"] == 2
    # A new save (nothing interrupted) replaces it, and no temporary is left behind.
    ckpt._save_checkpoint(trainer, str(last))
    saved = _load(last)["state_dict"]["layer.weight"]
    assert torch.equal(saved, module.layer.weight.detach())
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_temporaries_of_a_killed_checkpoint_save_are_cleared_at_the_next_start(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = folder / ".last.ckpt.partial-0123abcd-999999999"  # a writer killed with -9 (pid gone)
    dead.write_bytes(b"half a checkpoint")
    live = folder / f".last.ckpt.partial-4567cdef-{os.getpid()}"  # a live writer's: kept
    live.write_bytes(b"in progress")
    trainer = _trainer(1, [IconetCheckpoint(dirpath=folder, save_last=True)])
    trainer.fit(_Tiny())
    assert not dead.exists() and live.exists()
    assert (folder / "last.ckpt").is_file()


# ------------------------------------------------------------------ 4: non-finite weights
class _Poison(pl.Callback):
    """Makes the weights NaN after optimiser step ``step`` (a diverged run)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.layer.weight.fill_(float("nan"))


def test_non_finite_weights_never_replace_the_last_finite_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    ckpt = IconetCheckpoint(dirpath=folder, save_last=True, last_every_n_steps=1, monitor="score", mode="max",
                            save_top_k=1, every_n_train_steps=1, filename="best-{step}")
    trainer = _trainer(5, [_Poison(3), ckpt])
    with pytest.warns(UserWarning, match=r"step 3 are not finite.*last\.ckpt keeps the last finite weights of step 2"):
        trainer.fit(_Tiny())
    last = _load(folder / "last.ckpt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    best = [p for p in folder.glob("best-*.ckpt")]
    assert [p.name for p in best] == ["best-step=2.ckpt"]  # the finite best is kept, not deleted
    assert all(torch.isfinite(t).all() for t in _load(best[0])["state_dict"].values())
    assert Path(ckpt.best_model_path).name == "best-step=2.ckpt"


# ------------------------------------------------------------------ 2: outputs over inputs
@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "data" / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", num_volumes=2, slices=2, recon_size=(32, 32), seed=5)
    return folder


BASELINE = ["--baseline", "zero_filled_bicubic", "--scale", "2", "--hr_crop", "32", "32", "--no_progress"]


def test_run_inference_never_writes_over_around_or_into_its_input(raw, tmp_path):
    run_inference = _script("run_inference")
    before = _snapshot(raw.parent)
    link = tmp_path / "link"
    link.symlink_to(raw, target_is_directory=True)
    for out in (raw, raw / "recon", raw.parent, link, link / "recon"):
        for overwrite in (["--overwrite"], []):  # --overwrite first: the old code replaced the raw files
            with pytest.raises(ValueError) as info:
                run_inference.main([*BASELINE, "--data_path", str(raw), "--out", str(out), *overwrite])
            message = str(info.value)
            assert str(out) in message and str(raw) in message and "--out" in message, message
            assert _snapshot(raw.parent) == before  # nothing written, no folder created
    # A folder beside the data is fine.
    run_inference.main([*BASELINE, "--data_path", str(raw), "--out", str(tmp_path / "recon")])
    assert sorted(p.name for p in (tmp_path / "recon").glob("*.h5")) == sorted(p.name for p in raw.glob("*.h5"))
    assert _snapshot(raw.parent) == before


def test_prediction_writer_refuses_the_data_folder_before_any_work(raw, tmp_path):
    dm = IconetDataModule(data_path=str(tmp_path / "elsewhere"), test_path=str(raw), hr_crop=(32, 32),
                          use_dataset_cache=False, num_workers=0)
    trainer = SimpleNamespace(datamodule=dm, default_root_dir=str(tmp_path / "run"), ckpt_path=None)
    module = SimpleNamespace(method_name="iconet", predict_step=lambda batch, batch_idx: None)
    before = _snapshot(raw.parent)
    for out in (raw, raw / "predictions", raw.parent):
        writer = PredictionWriter(out_dir=str(out), overwrite=True)
        with pytest.raises(ValueError) as info:
            writer.setup(trainer, module, "predict")
            writer.on_predict_start(trainer, module)
        assert str(out) in str(info.value) and str(raw) in str(info.value)
        assert _snapshot(raw.parent) == before
    writer = PredictionWriter(out_dir=str(tmp_path / "predictions"), overwrite=True)
    writer.setup(trainer, module, "predict")
    writer.on_predict_start(trainer, module)  # beside the data: fine


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.pl_modules import IconetModule

    path = tmp_path / "model.ckpt"
    torch.manual_seed(0)
    module = IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1))
    return write_checkpoint(path, module)


def test_cli_predict_into_the_data_folder_is_refused(raw, tiny_checkpoint, tmp_path, capsys):
    from iconet_fastmri.cli import main

    before = _snapshot(raw.parent)
    with pytest.raises((ValueError, SystemExit)) as info:
        main(["predict", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--ckpt_path", str(tiny_checkpoint), "--data.data_path", str(tmp_path),
              "--data.test_path", str(raw), "--data.hr_crop", "[32, 32]", "--data.num_workers", "0",
              "--data.use_dataset_cache", "false",
              "--prediction_writer.out_dir", str(raw), "--prediction_writer.overwrite", "true"])
    said = str(info.value) + capsys.readouterr().err
    assert "--prediction_writer.out_dir" in said and str(raw) in said
    assert _snapshot(raw.parent) == before


def _predictions(folder, raw):
    folder.mkdir(parents=True)
    for src in sorted(raw.glob("*.h5")):
        with h5py.File(src) as f:
            target = f["reconstruction_esc"][()]
        with h5py.File(folder / src.name, "w") as f:
            f["reconstruction"] = target * 0.9
            f.attrs["hr_crop"] = np.array([32, 32])
    return folder


def test_evaluate_never_writes_its_tables_into_an_input_folder(raw, tmp_path):
    evaluate = _script("evaluate")
    pred = _predictions(tmp_path / "pred", raw)
    before = _snapshot(tmp_path)
    cases = [["--out", str(raw)], ["--out", str(raw / "eval")], ["--out", str(pred)],
             ["--out", str(tmp_path)], ["--out", str(tmp_path / "eval"), "--figures", str(raw / "figures")]]
    for outputs in cases:
        with pytest.raises(ValueError) as info:
            evaluate.main(["--targets", str(raw), "--predictions", str(pred), "--no_progress", "--overwrite",
                           *outputs])
        assert outputs[-1] in str(info.value), str(info.value)
        assert _snapshot(tmp_path) == before
    evaluate.main(["--targets", str(raw), "--predictions", str(pred), "--no_progress", "--out",
                   str(tmp_path / "eval")])
    assert (tmp_path / "eval" / "table.md").is_file()


# ------------------------------------------------------------------ 3: the demo and real data
def _real(root):
    write_fastmri_dataset(root / "knee_singlecoil_train", "singlecoil", 1, 1, (32, 32), prefix="file1000")
    write_fastmri_dataset(root / "knee_singlecoil_val", "singlecoil", 1, 1, (32, 32), prefix="file1001")
    return root


DEMO = dict(train_volumes=1, val_volumes=1, slices=1, recon_size=(32, 32))


def test_demo_refuses_a_folder_holding_real_fastmri_folders(tmp_path):
    root = _real(tmp_path / "R")
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match=rf"{root}.*holds files the demo did not write"):
        make_demo_splits(root, **DEMO)
    assert _snapshot(root) == before
    # What `fit --config configs/demo.yaml --data.data_path R` runs first.
    dm = IconetDataModule(data_path=str(root), hr_crop=(32, 32), demo=True, demo_volumes=(1, 1), demo_slices=1)
    with pytest.raises(FileExistsError, match=str(root)):
        dm.prepare_data()
    assert _snapshot(root) == before


@pytest.mark.parametrize("stranger", ["notes.txt", ".DS_Store", "subdir/"])
def test_demo_refuses_a_folder_of_unrelated_files(tmp_path, stranger):
    root = tmp_path / "R"
    root.mkdir()
    if stranger.endswith("/"):
        (root / stranger).mkdir()
    else:
        (root / stranger).write_text("mine")
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match=str(root)):
        make_demo_splits(root, **DEMO)
    assert _snapshot(root) == before


def test_demo_writes_into_a_new_an_empty_or_its_own_folder(tmp_path):
    new = tmp_path / "new" / "demo"
    make_demo_splits(new, **DEMO)
    assert (new / ".iconet_demo").is_file() and (new / "singlecoil_train" / "file_demo_000.h5").is_file()
    make_demo_splits(new, **DEMO)  # marked by itself: reused
    make_demo_splits(new, challenge="multicoil", num_coils=2, **DEMO)  # and extended
    empty = tmp_path / "empty"
    empty.mkdir()
    make_demo_splits(empty, **DEMO)
    assert (empty / "singlecoil_val" / "file_demo_001.h5").is_file()


def test_the_inference_library_call_and_mask_sweeps_refuse_the_data_folder_too(tmp_path):
    """run_inference() (used by the script, predict's siblings and mask sweeps) checks its folders itself."""
    from iconet_fastmri.demo import write_fastmri_dataset
    from iconet_fastmri.inference import run_inference

    data = tmp_path / "singlecoil_val"
    write_fastmri_dataset(data, "singlecoil", num_volumes=1, slices=1, recon_size=(32, 32), seed=1)
    before = sorted((p.name, p.stat().st_size) for p in data.iterdir())
    for out in (data, data / "recon", tmp_path):
        with pytest.raises(ValueError, match="singlecoil_val"):
            run_inference(data, out, baseline="zero_filled_bicubic", scale=2, hr_crop=(32, 32), overwrite=True,
                          progress=False)
    assert sorted((p.name, p.stat().st_size) for p in data.iterdir()) == before
