"""Extending from your own file (issue 20, items 7 and 9).

* Masks, acquisition effects (k-space steps) and models are named by dotted
  path from the command line; the docs' examples run exactly as
  docs/ARCHITECTURE.md shows them, through scripts/train_iconet_fastmri.py,
  from a user folder outside the package (slow: one tiny demo fit each).
* The registry's dotted-path resolution and its errors; a checkpoint never
  makes us import a module.
* A fit that fails says only what it really saved.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iconet_fastmri.registry import Registry, allow_imports, imports_allowed, search_working_directory
from test_architecture import EXTENSIONS, doc_example

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_iconet_fastmri.py"


# ------------------------------------------------------------------ helpers
@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder outside the package on sys.path; modules imported from it are forgotten afterwards."""
    folder = tmp_path / "user"
    folder.mkdir()
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in set(sys.modules) - before:
        if str(folder) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


def _module(folder: Path, name: str, code: str, marker: bool = True) -> Path:
    """Write ``name.py``; with ``marker``, importing it creates ``name.imported`` next to it."""
    head = f"open({str(folder / (name + '.imported'))!r}, 'w').close()\n" if marker else ""
    (folder / f"{name}.py").write_text(head + code, encoding="utf-8")
    return folder / f"{name}.imported"


STEP_CODE = '''
class Gain:
    def __init__(self, gain: float = 2.0):
        self.gain = gain
    def __call__(self, kspace, mask):
        return kspace * self.gain
NOT_CALLABLE = 3
'''


def _registry():
    return Registry("widget", "iconet_fastmri.test_widgets", builtins={"plain": dict})


# ------------------------------------------------------------------ the registry: dotted paths
def test_imports_are_off_unless_the_user_command_turns_them_on():
    assert not imports_allowed()
    with allow_imports():
        assert imports_allowed()
        with allow_imports(False):
            assert not imports_allowed()
        assert imports_allowed()
    assert not imports_allowed()


def test_a_dotted_path_is_imported_when_allowed(user_folder):
    marker = _module(user_folder, "ext_widgets", STEP_CODE)
    reg = _registry()
    with allow_imports():
        cls = reg.get("ext_widgets.Gain")
        step = reg.build("ext_widgets.Gain", gain=3.0)
        assert reg.accepted_kwargs("ext_widgets.Gain") == ["gain"]
        with pytest.raises(ValueError, match=r"widget 'ext_widgets.Gain' does not take argument\(s\) \['gian'\]"):
            reg.build("ext_widgets.Gain", gian=3.0)
    assert marker.exists() and cls.__name__ == "Gain" and step.gain == 3.0
    assert "ext_widgets.Gain" not in reg and reg.names() == ["plain"]  # resolving does not register
    # The user named it in this process: it stays usable here (rebuilt later, outside the block) ...
    assert reg.get("ext_widgets.Gain") is cls and reg.build("ext_widgets.Gain").gain == 2.0
    with pytest.raises(ValueError, match="not a registered widget"):  # ... but not where only registered names count
        reg.get("ext_widgets.Gain", allow_import=False)
    assert reg.get("plain") is dict


def test_allow_import_argument_overrides_the_context(user_folder):
    marker = _module(user_folder, "ext_widgets_arg", STEP_CODE)
    reg = _registry()
    with allow_imports(), pytest.raises(ValueError, match="nothing is imported"):
        reg.get("ext_widgets_arg.Gain", allow_import=False)
    assert not marker.exists() and "ext_widgets_arg" not in sys.modules
    assert reg.get("ext_widgets_arg.Gain", allow_import=True).__name__ == "Gain"
    assert marker.exists()


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz.Gain", r"widget 'no_such_module_xyz.Gain': no module 'no_such_module_xyz' can be imported"),
    ("ext_widgets_err.Gian", r"widget 'ext_widgets_err.Gian': module 'ext_widgets_err' \(.*ext_widgets_err.py\) "
                             r"has no attribute 'Gian'"),
    ("ext_widgets_err.NOT_CALLABLE", r"widget 'ext_widgets_err.NOT_CALLABLE' \(.*\) is not a class or function: 3"),
    ("ext_widgets_dep.Gain", r"widget 'ext_widgets_dep.Gain': importing 'ext_widgets_dep' failed: "
                             r"No module named 'missing_dependency_xyz'"),
])
def test_dotted_path_errors_name_the_path(user_folder, path, message):
    _module(user_folder, "ext_widgets_err", STEP_CODE)
    _module(user_folder, "ext_widgets_dep", "import missing_dependency_xyz\n" + STEP_CODE)
    with allow_imports(), pytest.raises(ValueError, match=message):
        _registry().build(path)


def test_unknown_short_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown widget 'plian'; registered widgets: plain \(or give a dotted path"):
        _registry().get("plian")


def test_without_imports_only_registered_classes_of_imported_modules(user_folder):
    """The checkpoint rule: no import; a registered factory of an imported module is accepted, nothing else."""
    marker = _module(user_folder, "ext_widgets_late", STEP_CODE)
    reg = _registry()
    with pytest.raises(ValueError, match=r"widget 'ext_widgets_late.Gain' is not a registered widget.*nothing is imported"):
        reg.get("ext_widgets_late.Gain")
    assert not marker.exists() and "ext_widgets_late" not in sys.modules
    with pytest.raises(ValueError, match="'os.system' is not a registered widget"):
        reg.build("os.system", command="true")  # imported, callable, but not registered
    import ext_widgets_late  # the user's own code imports and registers it

    with pytest.raises(ValueError, match="not a registered widget"):
        reg.get("ext_widgets_late.Gain")
    reg.register("gain", ext_widgets_late.Gain)
    assert reg.get("ext_widgets_late.Gain") is ext_widgets_late.Gain


def test_search_working_directory_appends_it_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    search_working_directory()
    search_working_directory()
    assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1


def test_masks_and_kspace_steps_take_dotted_paths(user_folder):
    from iconet_fastmri.physics.degradation import build_kspace_steps
    from iconet_fastmri.physics.masks import MaskConfig

    marker = _module(user_folder, "ext_masks", '''
import torch
class Stripes:
    nominal_acceleration = 2.0
    def __call__(self, shape, seed=None):
        mask = torch.zeros(shape[-2:])
        mask[:, ::2] = 1
        return mask, 0
''')
    config = MaskConfig(name="ext_masks.Stripes")
    with pytest.raises(ValueError, match="'ext_masks.Stripes' is not a registered mask"):
        config.build()
    with pytest.raises(ValueError, match="'ext_widgets_k.Gain' is not a registered k-space step"):
        build_kspace_steps([{"name": "ext_widgets_k.Gain"}])
    assert not marker.exists()
    _module(user_folder, "ext_widgets_k", STEP_CODE)
    with allow_imports():
        func = config.build()
        (step,) = build_kspace_steps([{"name": "ext_widgets_k.Gain", "gain": 0.5}])
        assert config.nominal_acceleration() == 2.0  # declared by the class
    assert func((4, 6))[0][:, ::2].all() and step(torch.ones(2), None).tolist() == [0.5, 0.5]


# ------------------------------------------------------------------ acceleration of a user mask
class _NoR:
    """Every other column; takes no accelerations, declares none."""

    def __call__(self, shape, seed=None):
        mask = torch.zeros(shape[-2:])
        mask[:, ::2] = 1
        return mask, 0


class _DeclaredR(_NoR):
    nominal_acceleration = 8.0


class _TakesR(_NoR):
    def __init__(self, accelerations=(4,)):
        self.accelerations = accelerations


@pytest.mark.parametrize("cls, nominal", [(_NoR, None), (_DeclaredR, 8.0), (_TakesR, 3.0)])
def test_a_mask_is_checked_against_the_acceleration_it_was_given_or_declares(cls, nominal):
    """The config's R reaches (and checks) only a mask that takes it; others may declare theirs."""
    import warnings

    from iconet_fastmri.physics.masks import MASKS, MaskConfig, check_mask_on_grid

    MASKS.register("test_ext_r", cls)
    try:
        config = MaskConfig(name="test_ext_r", accelerations=[3.0])
        assert config.nominal_acceleration() == nominal
        func = config.build()  # achieves R = 2 on any grid
        if nominal is None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert check_mask_on_grid(func, (8, 8), config.nominal_acceleration()) == 2.0
        elif nominal == 3.0:
            with pytest.warns(UserWarning, match="achieves R = 2.00"):
                check_mask_on_grid(func, (8, 8), config.nominal_acceleration())
        else:
            with pytest.raises(ValueError, match="cannot reach its nominal acceleration"):
                check_mask_on_grid(func, (8, 8), config.nominal_acceleration())
    finally:
        MASKS.unregister("test_ext_r")


# ------------------------------------------------------------------ checkpoints never import
EVIL = "evil_ckpt_mod"


def _inject(value, step_name, mask_name):
    """Every ``kspace_steps`` list and every mask spec in a checkpoint, renamed to dotted paths."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "kspace_steps" and step_name:
                out[key] = [{"name": step_name}]
            elif key == "mask" and isinstance(item, dict) and "name" in item and mask_name:
                out[key] = dict(item, name=mask_name)
            else:
                out[key] = _inject(item, step_name, mask_name)
        return out
    if isinstance(value, list):
        return [_inject(v, step_name, mask_name) for v in value]
    return value


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A width-4 ICONet trained for one step through the CLI, on 32x32 demo data."""
    from iconet_fastmri.cli import main
    from iconet_fastmri.demo import write_fastmri_dataset

    root = tmp_path_factory.mktemp("ext_ckpt")
    write_fastmri_dataset(root / "singlecoil_train", "singlecoil", num_volumes=1, slices=2, recon_size=(32, 32), seed=3)
    write_fastmri_dataset(root / "singlecoil_val", "singlecoil", num_volumes=1, slices=2, recon_size=(32, 32),
                          seed=4, first_index=9)
    run = root / "run"
    main(["fit", "--seed_everything", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.num_sanity_val_steps", "0", "--data.data_path", str(root), "--data.hr_crop", "[32, 32]",
          "--data.batch_size", "2", "--data.num_workers", "0", "--data.use_dataset_cache", "false",
          "--model.model", "ICONet", "--model.model.init_args.width", "4",
          "--model.model.init_args.blocks_per_stage", "1"])
    return root, run / "checkpoints" / "last.ckpt"


def _crafted(tiny_checkpoint, tmp_path, step_name=None, mask_name=None) -> Path:
    from iconet_fastmri.checkpoints import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint[1])
    crafted = _inject(ckpt, step_name, mask_name)
    assert crafted != ckpt, "the checkpoint no longer records kspace_steps / a mask: update _inject"
    path = tmp_path / "crafted.ckpt"
    torch.save(crafted, path)
    return path


@pytest.fixture
def evil_module(user_folder):
    """A module on sys.path whose import would be the attack: it leaves a marker."""
    return _module(user_folder, EVIL, STEP_CODE + "\nclass Mask:\n    def __call__(self, shape, seed=None):\n"
                                      "        import torch\n        return torch.ones(shape[-2:]), 0\n")


def test_inference_refuses_a_dotted_kspace_step_from_a_checkpoint(tiny_checkpoint, tmp_path, evil_module):
    from iconet_fastmri.inference import load_method

    crafted = _crafted(tiny_checkpoint, tmp_path, step_name=f"{EVIL}.Gain")
    with pytest.raises(ValueError, match=re.escape(f"{EVIL}.Gain")):
        load_method(checkpoint=crafted)
    assert not evil_module.exists() and EVIL not in sys.modules


def test_inference_refuses_a_dotted_mask_from_a_checkpoint(tiny_checkpoint, tmp_path, evil_module):
    from iconet_fastmri.inference import run_inference

    crafted = _crafted(tiny_checkpoint, tmp_path, mask_name=f"{EVIL}.Mask")
    with pytest.raises(ValueError, match=re.escape(f"{EVIL}.Mask")):
        run_inference(tiny_checkpoint[0] / "singlecoil_val", tmp_path / "out", checkpoint=crafted, progress=False)
    assert not evil_module.exists() and EVIL not in sys.modules


def test_the_cli_never_imports_what_a_checkpoint_names(tiny_checkpoint, tmp_path, evil_module):
    """validate --ckpt_path inside the training script's allow_imports(): the user's names only."""
    from iconet_fastmri.cli import main

    root, _ = tiny_checkpoint
    crafted = _crafted(tiny_checkpoint, tmp_path, step_name=f"{EVIL}.Gain", mask_name=f"{EVIL}.Mask")
    args = ["validate", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.data_path", str(root), "--data.hr_crop", "[32, 32]", "--data.batch_size", "2",
            "--data.num_workers", "0", "--data.use_dataset_cache", "false", "--ckpt_path", str(crafted)]
    with allow_imports():
        try:
            main(args)
        except ValueError as err:  # refusing is fine; importing is not
            assert EVIL in str(err)
    assert not evil_module.exists() and EVIL not in sys.modules


# ------------------------------------------------------------------ the docs' examples, as a user runs them
#: Tiny-demo settings appended to the doc's commands (2+1 volumes of 2 slices at 32x32, one epoch).
TINY = ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.hr_crop", "[32, 32]", "--data.demo_volumes", "[2, 1]",
        "--data.demo_slices", "2", "--data.batch_size", "2"]
TINY_ICONET = ["--model.model.init_args.width", "8", "--model.model.init_args.blocks_per_stage", "1"]

#: kind -> (class, method whose calls prove the run used it, the dotted path the config must name).
USES = {"mask": ("EveryOtherLine", "__call__", "my_masks.EveryOtherLine"),
        "step": ("GainDrift", "__call__", "my_steps.GainDrift"),
        "model": ("TinySR", "run", "my_models.TinySR")}

COUNTER = '''

# --- added by tests/entry/test_extensions.py: count the calls that prove the run used this class
def _count_calls(cls, method, path):
    original = getattr(cls, method)
    def counted(self, *args, **kwargs):
        with open(path, "a") as f:
            f.write("1\\n")
        return original(self, *args, **kwargs)
    setattr(cls, method, counted)
'''


def _as_run(words, folder: Path):
    """The doc's command words with ``python`` and repository paths made absolute (cwd is the user folder)."""
    out = [sys.executable if words[0] == "python" else words[0]]
    for word in words[1:]:
        out.append(str(ROOT / word) if not word.startswith("-") and (ROOT / word).is_file() else word)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mask", "step", "model"])
def test_doc_command_runs_from_a_user_folder(kind, tmp_path):
    name, code, words = doc_example(EXTENSIONS[kind])
    cls, method, dotted = USES[kind]
    folder = tmp_path / "my_project"  # outside the package, and not on PYTHONPATH
    folder.mkdir()
    calls = tmp_path / "calls.txt"
    (folder / name).write_text(code + COUNTER + f"_count_calls({cls}, {method!r}, {str(calls)!r})\n", encoding="utf-8")
    command = _as_run(words, folder) + TINY + (TINY_ICONET if kind != "model" else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    assert str(folder) not in env.get("PYTHONPATH", "")
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert calls.is_file() and len(calls.read_text().split()) > 0, f"{dotted} was never called"
    configs = list(folder.rglob("config.yaml"))
    assert configs and dotted in configs[0].read_text(), "the saved config does not name the user's class"
    assert (folder / "runs" / "demo" / "checkpoints" / "last.ckpt").is_file()
    assert "achieves R =" not in proc.stderr  # no acceleration complaint about a mask that was given no R


# ------------------------------------------------------------------ item 9: messages that are true
def _fit_with_checkpoint(tmp_path, monkeypatch, module):
    import pytorch_lightning as pl

    import iconet_fastmri.callbacks as callbacks

    said = []
    monkeypatch.setattr(callbacks, "rank_zero_info", said.append)
    checkpoint = callbacks.IconetCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[checkpoint], default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module)
    return [s for s in said if s.startswith("[iconet-fastmri] RuntimeError")], tmp_path / "checkpoints" / "last.ckpt"


def test_a_fit_failing_in_setup_does_not_claim_a_checkpoint(tmp_path, monkeypatch):
    from pytorch_lightning.demos.boring_classes import BoringModel

    class FailsInSetup(BoringModel):
        def setup(self, stage):
            raise RuntimeError("boom")

    said, last = _fit_with_checkpoint(tmp_path, monkeypatch, FailsInSetup())
    assert not last.exists()
    assert len(said) == 1 and "saved" not in said[0], said
    assert "no checkpoint was written" in said[0] and "before its first optimiser step" in said[0]


def test_a_fit_failing_after_steps_says_where_it_saved_them(tmp_path, monkeypatch):
    from pytorch_lightning.demos.boring_classes import BoringModel

    class FailsAtStep3(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    said, last = _fit_with_checkpoint(tmp_path, monkeypatch, FailsAtStep3())
    from iconet_fastmri.checkpoints import load_checkpoint

    assert last.is_file() and load_checkpoint(last)["global_step"] == 3
    assert said == [f"[iconet-fastmri] RuntimeError: saved the weights of step 3 to {last}"]


@pytest.mark.slow
def test_the_script_does_not_claim_a_checkpoint_when_setup_fails(tmp_path):
    """The reported case: a fit whose data folder has no train split fails in setup, at step 0."""
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--data.demo", "false",
         "--data.data_path", "empty", "--trainer.logger", "false"],
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "FileNotFoundError" in out
    assert "saved the weights" not in out and not list(tmp_path.rglob("*.ckpt"))
    assert "no checkpoint was written" in out


@pytest.mark.slow
def test_doc_dataset_layout_command_runs_from_a_user_folder(tmp_path):
    """docs/ARCHITECTURE.md, 'Add a dataset layout': explicit split folders, no code, through the script."""
    from iconet_fastmri.demo import write_fastmri_dataset
    from test_architecture import _sections

    section = _sections()["Add a dataset layout"]
    words = shlex.split(re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " "))
    folder = tmp_path / "my_project"
    train, valid = (words[words.index(flag) + 1] for flag in ("--data.train_path", "--data.val_path"))
    write_fastmri_dataset(folder / train, "singlecoil", num_volumes=2, slices=2, recon_size=(32, 32), seed=3)
    write_fastmri_dataset(folder / valid, "singlecoil", num_volumes=1, slices=2, recon_size=(32, 32), seed=4,
                          first_index=9)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run(_as_run(words, folder) + TINY + TINY_ICONET, cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert (folder / "runs" / "demo" / "checkpoints" / "last.ckpt").is_file()
    assert not (folder / "demo_data").exists()  # --data.demo false: nothing generated
    after = sorted(p.relative_to(folder) for p in (folder / train).parent.rglob("*"))
    assert [p for p in after if p not in before] == []  # the data folders are read, never written
