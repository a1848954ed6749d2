"""Issue 21: what you typed counts (class 2), resuming with another mask and two fits into one folder
(class 5), and refusals as a message rather than a traceback (class 6)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from helpers.runs import cli_args, write_tiny_fit_data
from iconet_fastmri.checkpoints import load_checkpoint
from iconet_fastmri.cli import main
from iconet_fastmri.models import ICONet
from iconet_fastmri.pl_modules import IconetModule

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_iconet_fastmri.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_fit_data(tmp_path_factory.mktemp("values"))


def _args(sub, data, run, *extra, model=False):
    return cli_args(sub, data, run, *extra, model=model)


def _crafted(path, **init):
    """A randomly initialised ICONet checkpoint, as Lightning writes one (no training needed)."""
    torch.manual_seed(0)
    mode = "complex" if init.get("in_chans") == 2 else "magnitude"
    module = IconetModule(ICONet(**{"scale": 2, "width": 8, "blocks_per_stage": 1, **init}), mode=mode)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}, path)
    return path


@pytest.fixture(scope="module")
def x4_complex(data, tmp_path_factory):
    """A run trained 1 epoch at x4 in complex mode (neither is the default)."""
    run = tmp_path_factory.mktemp("x4c")
    main(_args("fit", data, run, "--data.scale", 4, "--model.mode", "complex", "--trainer.max_epochs", 1,
               "--data.mask.center_fractions", "[0.25]", "--data.mask.accelerations", "[2]", model=True))
    return run


# ------------------------------------------------------------------ case 1: a typed value is never replaced
@pytest.mark.slow
def test_a_typed_default_that_conflicts_with_the_checkpoint_is_an_error(data, x4_complex, tmp_path):
    """`validate --data.scale 2 --ckpt_path x4.ckpt` printed the x4 result with exit code 0; so did
    `--model.mode magnitude` with a complex checkpoint. Both typed values are the defaults."""
    ckpt = x4_complex / "checkpoints" / "last.ckpt"
    common = ("--ckpt_path", ckpt, "--data.mask.center_fractions", "[0.25]", "--data.mask.accelerations", "[2]")
    with pytest.raises(ValueError, match=r"data\.scale: the checkpoint was trained at 4, you gave 2"):
        main(_args("validate", data, tmp_path / "a", "--data.scale", 2, *common))
    with pytest.raises(ValueError, match=r"model\.mode: the checkpoint is 'complex', you gave 'magnitude'"):
        main(_args("validate", data, tmp_path / "b", "--model.mode", "magnitude", *common))
    # A config file counts as typed too.
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  scale: 2\nmodel:\n  mode: magnitude\n")
    with pytest.raises(ValueError, match=r"(?s)data\.scale: .* you gave 2.*model\.mode: .* you gave 'magnitude'"):
        main(_args("validate", data, tmp_path / "c", "--config", config, *common))
    # Left alone, both come from the checkpoint, and so does the same value typed again.
    main(_args("validate", data, tmp_path / "d", *common))
    main(_args("validate", data, tmp_path / "e", "--data.scale", 4, "--model.mode", "complex", *common))


def test_a_typed_default_init_arg_that_conflicts_with_the_checkpoint_is_an_error(data, tmp_path):
    """The same for the model's own arguments: width 64 is ICONet's default, the checkpoint's is 8."""
    ckpt = _crafted(tmp_path / "w8.ckpt")
    with pytest.raises(ValueError, match=r"init_args\.width: the checkpoint has 8, you gave 64"):
        main(_args("validate", data, tmp_path / "a", "--ckpt_path", ckpt, "--model.model", "ICONet",
                   "--model.model.init_args.width", 64))
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  model:\n    class_path: ICONet\n    init_args:\n      blocks_per_stage: 4\n")
    with pytest.raises(ValueError, match=r"init_args\.blocks_per_stage: the checkpoint has 1, you gave 4"):
        main(_args("validate", data, tmp_path / "b", "--ckpt_path", ckpt, "--config", config))


def test_an_evaluation_setting_of_the_model_may_differ_from_the_checkpoint(data, tmp_path):
    """UnetSR's eval_window (windows at evaluation, not weights) is the user's; its width still is the checkpoint's."""
    from iconet_fastmri.models import UnetSR

    torch.manual_seed(0)
    module = IconetModule(UnetSR(scale=2, chans=4, num_pool_layers=1, eval_window=(8, 16)))
    ckpt = tmp_path / "unet.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}, ckpt)
    seen = []
    real = UnetSR.run

    def spy(self, image, *args):
        seen.append(self.eval_window)
        return real(self, image, *args)

    UnetSR.run = spy
    try:
        main(_args("validate", data, tmp_path / "a", "--ckpt_path", ckpt))
        main(_args("validate", data, tmp_path / "b", "--ckpt_path", ckpt, "--model.model", "UnetSR",
                   "--model.model.init_args.eval_window", "null"))
    finally:
        UnetSR.run = real
    assert seen[0] == (8, 16) and seen[-1] is None
    with pytest.raises(ValueError, match=r"init_args\.chans: the checkpoint has 4, you gave 32"):
        main(_args("validate", data, tmp_path / "c", "--ckpt_path", ckpt, "--model.model", "UnetSR",
                   "--model.model.init_args.chans", 32))


def test_typed_settings_are_what_the_user_set(tmp_path):
    """Command line and config file count, defaults do not (even a default typed again counts)."""
    from iconet_fastmri.cli import IconetCLI, typed_settings
    from iconet_fastmri.pl_modules import IconetDataModule

    seen = {}

    class ParseOnly(IconetCLI):
        def _parse_ckpt_path(self):
            seen["typed"] = typed_settings(self.parser, self._given_args, self.config["subcommand"])
            raise SystemExit(0)

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  scale: 2\n")
    with pytest.raises(SystemExit):
        ParseOnly(IconetModule, IconetDataModule, parser_kwargs={"parser_mode": "yaml"},
                  args=["validate", "--config", str(config), "--model.mode", "magnitude", "--model.model", "ICONet",
                        "--model.model.init_args.width", "64"])
    typed = seen["typed"]
    assert {"data.scale", "model.mode", "model.model.init_args.width"} <= typed
    assert not typed & {"data.hr_crop", "model.lr", "model.model.init_args.blocks_per_stage", "data.mask.name"}


# ------------------------------------------------------------------ case 5: resuming with another mask
@pytest.mark.slow
def test_resuming_with_another_mask_warns_naming_both(data, x4_complex, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(x4_complex, run)
    resume = ("--ckpt_path", "last", "--trainer.max_epochs", 2, "--data.mask.center_fractions", "[0.25]")
    with pytest.warns(UserWarning, match=r"(?s)mask: the checkpoint's run used 'random' .*\[2\.0\].*"
                                         r"you gave 'random' .*\[1\.5\].*last\.ckpt will record yours"):
        main(_args("fit", data, run, *resume, "--data.mask.accelerations", "[1.5]"))
    # (the run folder is a copy: last.ckpt is still the file written, never a last-v1.ckpt)
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["IconetDataModule"]["mask"]["accelerations"] == [1.5]


@pytest.mark.slow
def test_resuming_with_the_same_mask_does_not_warn(data, x4_complex, tmp_path, recwarn):
    run = tmp_path / "run"
    shutil.copytree(x4_complex, run)
    main(_args("fit", data, run, "--ckpt_path", "last", "--trainer.max_epochs", 2,
               "--data.mask.center_fractions", "[0.25]", "--data.mask.accelerations", "[2]"))
    assert not [w for w in recwarn if "another acquisition" in str(w.message)]


# ------------------------------------------------------------------ case 6: one fit per run folder
def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1",
                PYTHONHASHSEED="0")


@pytest.mark.slow
def test_a_second_fit_into_a_folder_a_fit_is_running_in_is_refused(data, tmp_path, monkeypatch):
    run, record = tmp_path / "run", tmp_path / "batches.txt"
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), *_args("fit", data, run, "--trainer.max_epochs", 50, model=True),
         "--trainer.callbacks+", "helpers.slow_callback.SlowTraining", "--trainer.callbacks.seconds", "0.5",
         "--trainer.callbacks+", "helpers.slow_callback.RecordBatches", "--trainer.callbacks.path", str(record)],
        env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 240
        while not record.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert record.exists(), first.stderr.read()[-3000:] if first.poll() is not None else "no batch in 240 s"
        with pytest.raises(FileExistsError, match=rf"another fit is running into .*pid {first.pid}"):
            main(_args("fit", data, run, "--trainer.max_epochs", 1, model=True))
        assert first.poll() is None  # the first run is untouched
    finally:
        first.kill()
        first.wait()
    # Its lock is left behind by SIGKILL: the next fit takes it over, says so, and removes it at the end.
    said = []
    import iconet_fastmri.run_folder as run_folder

    monkeypatch.setattr(run_folder, "rank_zero_info", lambda msg: said.append(msg))
    main(_args("fit", data, run, "--trainer.max_epochs", 1, "--overwrite", "true", model=True))
    assert any(f"pid {first.pid}" in m and "taking it over" in m for m in said), said
    assert not list(run.glob(".*.lock"))


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    import json
    import socket

    import iconet_fastmri.run_folder as cli

    folder = tmp_path / "run" / "checkpoints"
    lock = cli.RunLock(folder).acquire()
    assert lock.path == tmp_path / "run" / ".checkpoints.lock" and lock.path.is_file()
    with pytest.raises(FileExistsError, match=rf"another fit is running into .*pid {os.getpid()}"):
        cli.RunLock(folder).acquire()
    lock.release()
    assert not lock.path.exists()
    # a dead process's lock is taken over, with a message
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.parent.mkdir(parents=True)  # (the lock removed the folder it had made)
    lock.path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    said = []
    monkeypatch.setattr(cli, "rank_zero_info", said.append)
    taken = cli.RunLock(folder).acquire()
    assert said and f"pid {dead.pid}" in said[0] and "taking it over" in said[0]
    assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    taken.release()
    # another host's lock cannot be checked: refused, saying which file to delete
    lock.path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "earlier"}))
    with pytest.raises(FileExistsError, match=rf"if no fit runs there, delete {lock.path}"):
        cli.RunLock(folder).acquire()


def test_a_failed_start_leaves_no_lock_and_no_folder_behind(data, tmp_path):
    run = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="noise_std"):
        main(_args("fit", data, run, "--data.noise_std", ".inf", "--trainer.max_epochs", 1, model=True))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ case 7: a refusal is a message
def test_run_prints_a_refusal_alone_and_exits_1(data, tmp_path, capsys, monkeypatch):
    from iconet_fastmri.cli import run

    monkeypatch.delenv("ICONET_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run(_args("fit", data, tmp_path / "run", "--data.noise_std", ".inf", "--trainer.max_epochs", 1,
                  model=True))
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "noise_std" in err and "Traceback" not in err and "ICONET_DEBUG=1" in err and err.startswith("error: ")
    monkeypatch.setenv("ICONET_DEBUG", "1")  # the traceback, for a bug report
    with pytest.raises(ValueError, match="noise_std"):
        run(_args("fit", data, tmp_path / "run", "--data.noise_std", ".inf", "--trainer.max_epochs", 1,
                  model=True))


class ValueErrorAt(pl.Callback):
    """A bug mid-training that happens to raise a ValueError."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        raise ValueError(f"a bug at step {trainer.global_step}")


def test_a_value_error_mid_training_keeps_its_traceback(data, tmp_path, monkeypatch):
    from iconet_fastmri.cli import run

    monkeypatch.delenv("ICONET_DEBUG", raising=False)
    with pytest.raises(ValueError, match="a bug at step 1"):  # raised on (a traceback), not a clean exit
        run(_args("fit", data, tmp_path / "run", "--trainer.max_epochs", 1,
                  "--trainer.callbacks+", f"{__name__}.ValueErrorAt", model=True))


def test_is_refusal_tells_refusals_from_crashes():
    """A ValueError raised once training has started is a crash (a bug), not a refusal."""
    from iconet_fastmri.cli import is_refusal
    from iconet_fastmri.divergence import TrainingDiverged

    early, late = ValueError("bad value"), ValueError("bug")
    late.iconet_mid_run = True
    assert is_refusal(early) and is_refusal(FileNotFoundError("no such file"))
    assert not is_refusal(late) and not is_refusal(RuntimeError("boom"))
    diverged = TrainingDiverged("training diverged at optimiser step 7")
    diverged.iconet_mid_run = True
    assert is_refusal(diverged)  # a clear stop: its message says it all


@pytest.mark.slow
def test_the_script_prints_refusals_without_a_traceback(data, tmp_path):
    """Every refusal printed a full traceback with the message only at the end."""
    def script(run, *extra, env=None):
        return subprocess.run([sys.executable, str(SCRIPT), *_args("fit", data, tmp_path / run, *extra, model=True)],
                              env=env or _env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)

    refused = script("a", "--data.noise_std", ".inf", "--trainer.max_epochs", 1)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and "noise_std" in refused.stderr
    debug = script("b", "--data.noise_std", ".inf", "--trainer.max_epochs", 1, env=dict(_env(), ICONET_DEBUG="1"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    # A crash mid-training (not a refusal) keeps its traceback.
    crash = script("c", "--trainer.max_epochs", 1, "--trainer.callbacks+", "helpers.slow_callback.RaiseAt",
                   "--trainer.callbacks.at_step", 1)
    assert crash.returncode != 0 and "Traceback" in crash.stderr and "boom at step 1" in crash.stderr
