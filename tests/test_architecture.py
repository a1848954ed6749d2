"""The package's shape (docs/ARCHITECTURE.md): layers, module size, and the extension examples."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

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
    "predictions": 5,
    "cli": 6,
    "inference": 6,
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
        if text.count("\n") > 520:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if "long because" not in docstring.lower():
                long.append(f"{module}: {text.count(chr(10))} lines")
    assert not long, "modules over ~500 lines without a reason in their docstring: " + ", ".join(long)


def _doc_examples():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 4, "docs/ARCHITECTURE.md should show a mask, a model, a step and an operator"
    return blocks


def _run(block: str) -> dict:
    namespace: dict = {"__name__": "architecture_example"}
    exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_doc_example_mask_builds_and_degrades():
    from iconet_fastmri.physics.degradation import KSpaceDegradation
    from iconet_fastmri.physics.masks import MASKS, MaskConfig, effective_acceleration

    try:
        _run(_doc_examples()[0])
        mask_func = MaskConfig(name="every_other", options={"center_lines": 4}).build()
        mask, num_low = mask_func((8, 16))
        assert num_low == 4 and mask[:, ::2].all() and mask[:, 6:10].all()
        assert effective_acceleration(mask) == pytest.approx(16 / 10)
        out = KSpaceDegradation(2, mask_func=mask_func)(torch.randn(2, 1, 16, 32, dtype=torch.complex64))
        assert torch.equal(out.mask[0, 0], mask)
    finally:
        MASKS.unregister("every_other")


def test_doc_example_model_trains_and_round_trips():
    from iconet_fastmri.models import MODELS, model_from_spec, model_spec
    from iconet_fastmri.physics.degradation import KSpaceDegradation
    from iconet_fastmri.pl_modules import IconetModule

    try:
        ns = _run(_doc_examples()[1])
        torch.manual_seed(0)
        module = IconetModule(ns["TinySR"](scale=2, width=4), lr=1e-2, scheduler="none")
        deg = KSpaceDegradation(2)(torch.randn(2, 1, 16, 16, dtype=torch.complex64))
        optimizer = module.configure_optimizers()
        losses = []
        for _ in range(5):
            loss, _ = module.loss_fn(module(deg), deg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        assert losses[-1] < losses[0]
        spec = module.hparams["model"]
        assert spec == model_spec(module.model) and spec["init_args"]["width"] == 4
        rebuilt = model_from_spec(spec)
        rebuilt.load_state_dict(module.model.state_dict())
        assert module.method_name == "tiny_sr"
    finally:
        MODELS.unregister("tiny_sr")


def test_doc_example_step_changes_only_acquired_samples():
    from iconet_fastmri.physics.degradation import KSPACE_STEPS, KSpaceDegradation, build_kspace_steps
    from iconet_fastmri.physics.fft import ifft2c
    from iconet_fastmri.physics.operators import rss

    try:
        _run(_doc_examples()[2])
        x = torch.randn(2, 3, 16, 24, dtype=torch.complex64)
        mask = (torch.rand(2, 1, 8, 12) > 0.5).float()
        plain = KSpaceDegradation(2)(x, mask)
        steps = build_kspace_steps([{"name": "gain_drift", "max_drift": 0.2}])
        drifted = KSpaceDegradation(2, steps=steps)(x, mask)
        gain = 1 + 0.2 * torch.linspace(-1, 1, 12)
        assert torch.allclose(drifted.lr_observed, plain.lr_observed * gain, atol=1e-6)
        assert torch.allclose(drifted.lr_input, rss(ifft2c(drifted.lr_observed)), atol=1e-5)
        assert torch.equal(drifted.lr_clean, plain.lr_clean)  # targets are untouched
        with pytest.raises(ValueError, match="does not take argument"):
            build_kspace_steps([{"name": "gain_drift", "max_drfit": 0.2}])
        with pytest.raises(ValueError, match="unknown k-space step 'gain_drfit'"):
            build_kspace_steps([{"name": "gain_drfit"}])
    finally:
        KSPACE_STEPS.unregister("gain_drift")


def test_doc_example_operator_is_adjoint():
    ns = _run(_doc_examples()[3])
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, 6, 8, generator=g) > 0.5).float()
    op = ns["Sampling"](mask)
    x = torch.randn(2, 3, 6, 8, dtype=torch.complex128, generator=g)
    y = torch.randn(2, 3, 6, 8, dtype=torch.complex128, generator=g)
    lhs = torch.vdot(op(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert torch.allclose(lhs, rhs)
