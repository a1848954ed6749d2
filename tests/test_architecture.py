"""The package's shape (docs/ARCHITECTURE.md): layers, module size, and the extension examples."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from helpers.adjoint import assert_adjoint

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "iconet_fastmri"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

#: Module (dotted, relative to the package) prefix -> layer; the longest prefix wins.
LAYERS = {
    "__init__": 0,
    "registry": 0,
    "io": 0,
    "checkpoints": 0,
    "machine_load": 0,
    "physics": 1,
    "data": 2,
    "demo": 2,
    "models": 3,
    "losses": 4,
    "metrics": 4,
    "evaluation": 4,
    "figures": 4,
    "pl_modules": 5,
    "callbacks": 5,
    "divergence": 5,
    "reports": 5,
    "run_folder": 5,
    "predictions": 5,
    "cli": 6,
    "checkpoint_settings": 6,
    "inference": 6,
    "acquired": 6,
    "sweeps": 6,
    "benchmarks": 7,
}


def _layer(module: str) -> int:
    first = module.split(".")[0]
    if first not in LAYERS:
        raise AssertionError(f"module {module!r} is in no layer of docs/ARCHITECTURE.md")
    return LAYERS[first]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: Path):
    """Package-internal modules imported by ``module`` (relative and absolute imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    yield target
                    continue
                for alias in node.names:  # from . import name: a submodule, or an attribute of the package
                    candidate = ".".join(base + [alias.name])
                    is_module = (PACKAGE.joinpath(*candidate.split("."))).is_dir() or (
                        PACKAGE.joinpath(*candidate.split(".")).with_suffix(".py").is_file()
                    )
                    yield candidate if is_module else (target or "__init__")
            elif node.module and node.module.startswith("iconet_fastmri"):
                yield node.module[len("iconet_fastmri") + 1 :] or "__init__"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("iconet_fastmri."):
                    yield alias.name[len("iconet_fastmri") + 1 :]


def test_no_import_points_upward():
    upward = []
    for module, path in _modules():
        if module == "__init__":
            continue
        own = _layer(module)
        for target in _imports(module, path):
            if not target or target == "__init__":
                continue
            if _layer(target) > own:
                upward.append(f"{module} (layer {own}) imports {target} (layer {_layer(target)})")
    assert not upward, "imports that point upward:\n" + "\n".join(upward)


def test_layer_table_knows_every_module():
    for module, _ in _modules():
        _layer(module)  # raises for a module in no layer


def test_long_modules_say_why():
    long = []
    for module, path in _modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 420:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if "long because" not in docstring.lower():
                long.append(f"{module}: {text.count(chr(10))} lines")
    assert not long, "modules over ~400 lines without a reason in their docstring: " + ", ".join(long)


def test_the_training_module_stays_thin():
    """IconetModule is the training step only: per-volume evaluation, reports and the optimiser live elsewhere."""
    lines = (PACKAGE / "pl_modules" / "iconet_module.py").read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"pl_modules/iconet_module.py has {lines} lines"


#: The extension sections of docs/ARCHITECTURE.md and the file each one's example is saved as.
EXTENSIONS = {"mask": "Add a mask", "model": "Add a model", "step": "Add an acquisition effect"}


def _sections() -> dict:
    text = DOC.read_text(encoding="utf-8")
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)}


def doc_example(title: str):
    """``(file name, file text, command words)`` of one "Add a ..." section, as the doc shows them.

    The file is the section's first ``python`` block, whose first line names
    it (``# my_masks.py``); the command is its ``bash`` block (lines ending
    in a backslash joined), split as a shell would.
    """
    section = _sections()[title]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, f"docs/ARCHITECTURE.md, {title!r}: no python example"
    first = code.group(1).splitlines()[0]
    name = re.fullmatch(r"# (\w+\.py)", first)
    assert name, f"docs/ARCHITECTURE.md, {title!r}: the example's first line should name its file, got {first!r}"
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    words = shlex.split(command.group(1).replace("\\\n", " ")) if command else []
    return name.group(1), code.group(1), words


def _write_example(kind: str, folder: Path) -> str:
    """Save the doc's example file in ``folder``; its module name."""
    name, code, _ = doc_example(EXTENSIONS[kind])
    (folder / name).write_text(code, encoding="utf-8")
    return name[: -len(".py")]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder outside the package on sys.path, whose modules are forgotten afterwards."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in str(sys.modules[name].__file__):
            del sys.modules[name]


def test_every_extension_section_shows_a_file_and_a_command():
    for kind, title in EXTENSIONS.items():
        name, _, words = doc_example(title)
        assert words[:3] == ["python", "scripts/train_iconet_fastmri.py", "fit"], (title, words)
        assert any(name[: -len(".py")] + "." in w for w in words), f"{title}: the command does not name {name}"


def test_doc_example_mask_draws_its_mask(user_folder):
    from iconet_fastmri.physics.masks import MaskConfig, check_mask_on_grid, effective_acceleration
    from iconet_fastmri.registry import allow_imports

    module = _write_example("mask", user_folder)
    config = MaskConfig(name=f"{module}.EveryOtherLine", options={"center_lines": 4})
    with allow_imports():
        mask_func = config.build()
        nominal = config.nominal_acceleration()
    assert nominal is None  # it takes no accelerations and declares none: the demo's R = 4 is not its R
    mask, num_low = mask_func((8, 16))
    assert mask.shape == (8, 16) and num_low == 4 and mask[:, ::2].all() and mask[:, 6:10].all()
    assert effective_acceleration(mask) == pytest.approx(16 / 10)
    assert check_mask_on_grid(mask_func, (8, 16), nominal) == pytest.approx(1.6)
    # The R the doc states for the demo's grid (64x64 LR) with center_lines 12.
    assert effective_acceleration(type(mask_func)(12)((64, 64))[0]) == pytest.approx(1.68, abs=0.005)


def test_doc_example_model_trains_and_round_trips(user_folder):
    import importlib

    from iconet_fastmri.models import MODELS, model_from_spec, model_spec

    try:
        TinySR = importlib.import_module(_write_example("model", user_folder)).TinySR
        assert MODELS.name_of(TinySR) == "tiny_sr"
        torch.manual_seed(0)
        model = TinySR(scale=2, width=4)
        lr, hr = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):
            loss = torch.nn.functional.l1_loss(model(lr).sr, hr)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        spec = model_spec(model)
        assert spec["init_args"]["width"] == 4
        rebuilt = model_from_spec(spec)
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt(lr).sr, model(lr).sr)
    finally:
        MODELS.unregister("tiny_sr")


def test_doc_example_step_changes_only_acquired_samples(user_folder):
    from iconet_fastmri.physics.degradation import build_kspace_steps
    from iconet_fastmri.registry import allow_imports

    path = f"{_write_example('step', user_folder)}.GainDrift"
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 8, 12, generator=g) > 0.5).float()
    kspace = torch.randn(2, 3, 8, 12, dtype=torch.complex64, generator=g) * mask
    with allow_imports():
        (step,) = build_kspace_steps([{"name": path, "max_drift": 0.2}])
        with pytest.raises(ValueError, match="does not take argument"):
            build_kspace_steps([{"name": path, "max_drfit": 0.2}])
        with pytest.raises(ValueError, match="has no attribute 'GainDrfit'"):
            build_kspace_steps([{"name": path[: -len("GainDrift")] + "GainDrfit"}])
    drifted = step(kspace, mask)
    gain = 1 + 0.2 * torch.linspace(-1, 1, 12)
    assert torch.allclose(drifted, kspace * gain, atol=1e-6)
    assert not drifted[(mask == 0).expand_as(drifted)].any()  # samples not acquired stay zero
    with pytest.raises(ValueError, match="unknown k-space step 'gain_drfit'"):
        build_kspace_steps([{"name": "gain_drfit"}])


def test_doc_example_operator_is_adjoint():
    block = re.search(r"```python\n(.*?)```", _sections()["Add an operator"], flags=re.S).group(1)
    ns: dict = {"__name__": "architecture_example"}
    exec(compile(block, str(DOC), "exec"), ns)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, 6, 8, generator=g) > 0.5).float()
    op = ns["Sampling"](mask)
    assert_adjoint(op.forward, op.adjoint, x_shape=(2, 3, 6, 8), rtol=1e-12)
