"""Checkpoints you can trust (issue 11): nothing but the architecture comes from a checkpoint,
a run folder holds one run, and last.ckpt holds the final weights however fit ends."""

import signal

import pytest
import torch

from helpers.runs import cli_args, write_tiny_fit_data
from iconet_fastmri.checkpoints import load_checkpoint
from iconet_fastmri.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_fit_data(tmp_path_factory.mktemp("trust"))


def _args(sub, data, run, *extra, model=True):
    return cli_args(sub, data, run, *extra, model=model)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A width-8 ICONet trained for 1 epoch (3 steps)."""
    run = tmp_path_factory.mktemp("trained")
    main(_args("fit", data, run, "--trainer.max_epochs", 1))
    return run / "checkpoints" / "last.ckpt"


def _step(path):
    return int(load_checkpoint(path)["global_step"])


# ------------------------------------------------------------------ 1, 2: what a checkpoint may decide
def test_checkpoint_hyperparameters_never_choose_output_files(data, trained, tmp_path):
    ckpt = load_checkpoint(trained)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt["hyper_parameters"]["volume_metrics_file"] = str(victim)
    ckpt["hyper_parameters"]["lr"] = 123.0
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    main(_args("validate", data, tmp_path / "run", "--ckpt_path", crafted, model=False))
    assert victim.read_text() == "precious"
    # fit resumed from it: the user's settings, never the checkpoint's
    main(_args("fit", data, tmp_path / "run2", "--ckpt_path", crafted, "--trainer.max_epochs", 2,
               "--volume_metrics.path", tmp_path / "mine.json", model=False))
    assert victim.read_text() == "precious" and (tmp_path / "mine.json").is_file()


def test_checkpoint_naming_an_unregistered_class_is_refused(data, trained, tmp_path):
    ckpt = load_checkpoint(trained)
    ckpt["hyper_parameters"]["model"]["class_path"] = "os.system"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    with pytest.raises(ValueError, match="'os.system' is not a registered model"):
        main(_args("validate", data, tmp_path / "run", "--ckpt_path", crafted, model=False))


def test_typed_architecture_conflicting_with_the_checkpoint_is_an_error(data, trained, tmp_path):
    with pytest.raises(ValueError, match=r"init_args\.width: the checkpoint has 8, you gave 16"):
        main(_args("validate", data, tmp_path / "a", "--ckpt_path", trained,
                   "--model.model.init_args.width", 16))
    with pytest.raises(ValueError, match=r"data\.scale: the checkpoint was trained at 2, you gave 4"):
        main(_args("validate", data, tmp_path / "b", "--ckpt_path", trained, "--data.scale", 4,
                   "--data.hr_crop", "[32, 32]"))
    with pytest.raises(ValueError, match=r"the checkpoint holds iconet .* you gave .*UnetSR"):
        main(_args("validate", data, tmp_path / "c", "--ckpt_path", trained, "--model.model", "UnetSR",
                   model=False))
    # Architecture the user left alone comes from the checkpoint; the same value typed again is fine.
    main(_args("validate", data, tmp_path / "d", "--ckpt_path", trained, "--model.model", "ICONet",
               "--model.model.init_args.width", 8, model=False))


# ------------------------------------------------------------------ 3: one run per folder
@pytest.mark.slow
def test_a_second_fit_into_the_same_folder_is_refused_or_moves_the_old_run_aside(data, trained):
    run = trained.parent.parent
    with pytest.raises(ValueError, match="already holds checkpoints of an earlier run"):
        main(_args("fit", data, run, "--trainer.max_epochs", 1))
    before = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    main(_args("fit", data, run, "--trainer.max_epochs", 2, "--overwrite", "true"))
    moved = list((run / "checkpoints").glob("replaced-*"))
    assert len(moved) == 1 and sorted(p.name for p in moved[0].glob("*.ckpt")) == before
    assert _step(run / "checkpoints" / "last.ckpt") == 6  # the new run's, 2 epochs x 3 steps
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))


def test_ckpt_path_last_resolves_to_exactly_one_file(data, trained, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(trained.read_bytes())
    (folder / "last-v1.ckpt").write_bytes(trained.read_bytes())
    with pytest.raises(ValueError, match=r"ambiguous.*last-v1\.ckpt"):
        main(_args("validate", data, tmp_path / "run", "--ckpt_path", "last", model=False))
    (folder / "last-v1.ckpt").unlink()
    main(_args("validate", data, tmp_path / "run", "--ckpt_path", "last", model=False))


# ------------------------------------------------------------------ 4: the end of training is saved
@pytest.mark.parametrize(
    "ending,extra,expected_step",
    [
        # validation at step 6 (end of epoch 1), then max_steps ends the run mid-epoch at step 8
        ("max_steps", ("--trainer.max_steps", 8, "--trainer.max_epochs", -1,
                       "--trainer.check_val_every_n_epoch", 2), 8),
        # validation at the end of epoch 1 (step 6), then a last epoch without validation
        ("max_epochs", ("--trainer.max_epochs", 3, "--trainer.check_val_every_n_epoch", 2), 9),
        ("sigusr1", ("--trainer.max_epochs", 20, "--trainer.check_val_every_n_epoch", 1,
                     "--trainer.callbacks+=helpers.slow_callback.SendSignal",
                     "--trainer.callbacks.signum", int(signal.SIGUSR1), "--trainer.callbacks.at_step", 4), 4),
    ],
)
@pytest.mark.slow
def test_last_ckpt_holds_the_final_weights(data, tmp_path, ending, extra, expected_step):
    main(_args("fit", data, tmp_path, *extra))
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == expected_step


@pytest.mark.slow
def test_last_ckpt_is_saved_on_sigterm(data, tmp_path):
    with pytest.raises(BaseException) as info:
        main(_args("fit", data, tmp_path, "--trainer.max_epochs", 20, "--trainer.check_val_every_n_epoch", 1,
                   "--trainer.callbacks+=helpers.slow_callback.SendSignal",
                   "--trainer.callbacks.signum", int(signal.SIGTERM), "--trainer.callbacks.at_step", 4))
    assert "SIGTERM" in type(info.value).__name__
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 4


@pytest.mark.slow
def test_last_ckpt_is_saved_at_max_time_and_every_n_steps(data, tmp_path):
    main(_args("fit", data, tmp_path / "time", "--trainer.max_epochs", 1000, "--trainer.check_val_every_n_epoch", 1,
               "--trainer.max_time", "00:00:00:04",
               "--trainer.callbacks+=helpers.slow_callback.SlowTraining", "--trainer.callbacks.seconds", 0.4))
    steps = _step(tmp_path / "time" / "checkpoints" / "last.ckpt")
    assert steps > 0
    state = load_checkpoint(tmp_path / "time" / "checkpoints" / "last.ckpt")
    assert state["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == steps
    record = tmp_path / "last_steps.txt"
    main(_args("fit", data, tmp_path / "every", "--trainer.max_epochs", 2, "--trainer.check_val_every_n_epoch", 25,
               "--checkpoint.last_every_n_steps", 2,
               "--trainer.callbacks+=helpers.slow_callback.RecordLastCheckpoint", "--trainer.callbacks.path", record))
    seen = [tuple(map(int, line.split())) for line in record.read_text().splitlines()]
    # (step at batch start, step in last.ckpt): refreshed at steps 2 and 4 and at the epoch end (3)
    assert seen == [(0, -1), (1, -1), (2, 2), (3, 3), (4, 4), (5, 4)]
    assert _step(tmp_path / "every" / "checkpoints" / "last.ckpt") == 6


def test_a_failed_fit_leaves_no_sigusr1_handler_behind(data, tmp_path):
    """A fit that raises must restore SIGUSR1: a stale handler of ours would keep a later fit from stopping on it."""
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
    with pytest.raises(RuntimeError, match="boom at step 2"):
        main(_args("fit", data, tmp_path, "--trainer.max_epochs", 5,
                   "--trainer.callbacks+=helpers.slow_callback.RaiseAt", "--trainer.callbacks.at_step", 2))
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
