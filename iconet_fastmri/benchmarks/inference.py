"""Inference section: the shipped inference, HDF5 volume -> saved reconstruction, per volume/slice.

It times :func:`iconet_fastmri.inference.run_inference` (the code path of
``scripts/run_inference.py``) on a generated volume; :func:`evaluate_targets`
checks the fft and degradation ratios of the run against the project's targets.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from .harness import (
    Bench,
    Budget,
    cpu_sample,
    foreign_load,
    loadavg,
    section_budget,
    wait_for_quiet,
)

#: What the section times.
CODE_PATH = "iconet_fastmri.inference.run_inference"
#: Used when no ICONet checkpoint can be built (it needs no checkpoint).
FALLBACK_BASELINE = "zero_filled_bicubic"
#: Breakdown entries timed by wrapping the functions run_inference calls (see :func:`stage_timers`).
STAGES = ("degradation", "model", "save")


def write_checkpoint(path: Path, scale: int, width: int, blocks: int) -> None:
    """Save an untrained ICONet ``IconetModule`` the way ``load_method`` reads checkpoints."""
    import torch

    from iconet_fastmri.models import ICONet
    from iconet_fastmri.pl_modules.iconet_module import IconetModule

    torch.manual_seed(0)
    model = ICONet(scale=scale, in_chans=1, width=width, blocks_per_stage=blocks)
    module = IconetModule(model=model)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)


@contextlib.contextmanager
def stage_timers(b: Bench) -> Iterator[Dict[str, Optional[float]]]:
    """Time the stages of the shipped inference loop without changing it.

    While active, ``IconetModule.degrade`` (degradation), ``IconetModule.forward``
    (model) and ``iconet_fastmri.inference.write_volume_atomic`` (save) are
    wrapped with timers (synchronising CUDA around the first two). The yielded
    dict holds the seconds per stage once the block ends; None for a stage
    that was never called (the loop no longer goes through that function).
    """
    import iconet_fastmri.inference as shipped
    from iconet_fastmri.pl_modules.iconet_module import IconetModule

    seconds = {stage: 0.0 for stage in STAGES}
    calls = {stage: 0 for stage in STAGES}

    def timed(stage: str, fn: Callable[..., Any], sync: bool) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if sync:
                b.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    b.sync()
                seconds[stage] += time.perf_counter() - t0
                calls[stage] += 1

        return wrapper

    targets = [
        (IconetModule, "degrade", "degradation", True),
        (IconetModule, "forward", "model", True),
        (shipped, "write_volume_atomic", "save", False),
    ]
    patched = []
    result: Dict[str, Optional[float]] = {}
    try:
        for owner, name, stage, sync in targets:
            original = vars(owner).get(name)
            if callable(original):
                setattr(owner, name, timed(stage, original, sync))
                patched.append((owner, name, original))
        yield result
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
        result.update({s: seconds[s] if calls[s] else None for s in STAGES})


def section_inference(b: Bench) -> Dict[str, Any]:
    """End-to-end ``run_inference`` on one generated single-coil volume per scale."""
    from iconet_fastmri.demo import write_fastmri_dataset

    p = b.profile
    S, R = p["inf_slices"], p["inf_recon"]
    budget = Budget(section_budget(b, "inference"))
    tmp = Path(tempfile.mkdtemp(prefix="iconet_bench_"))
    rows: List[Dict[str, Any]] = []
    model_error = None
    try:
        data_dir = tmp / "data"
        t0 = time.perf_counter()
        write_fastmri_dataset(data_dir, "singlecoil", num_volumes=1, slices=S, recon_size=(R, R))
        write_s = time.perf_counter() - t0
        for scale in p["inf_scales"]:
            ckpt = tmp / f"iconet_x{scale}.ckpt"
            error = None
            try:
                write_checkpoint(ckpt, scale, p["model_width"], p["model_blocks"])
                method: Dict[str, Any] = {"checkpoint": ckpt}
            except Exception as err:
                error = model_error = f"building an ICONet checkpoint failed: {err!r}"
                method = {"baseline": FALLBACK_BASELINE}
            row = _inference_case(b, data_dir, tmp / f"recon_x{scale}", scale, method, budget)
            rows.append(dict(row, model_error=error))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rows": rows,
        "write_dataset_s": write_s,
        "data": f"1 singlecoil volume, {S} slices, recon {R}x{R}",
        "code_path": CODE_PATH,
        "model_error": model_error,
        "notes": f"per_volume_s: wall time of {CODE_PATH} (loading the checkpoint, indexing the "
        "folder, reading + transforming slices, degradation, model, writing one HDF5 per "
        "volume). Breakdown: degradation = IconetModule.degrade, model = IconetModule.forward "
        "(both timed with CUDA syncs around them), save = write_volume_atomic; rest = "
        "everything else (checkpoint, dataset, HDF5 reads, transforms, magnitude, host copies).",
    }


def _inference_case(
    b: Bench, data_dir: Path, out_dir: Path, scale: int, method: Dict[str, Any], budget: Budget
) -> Dict[str, Any]:
    """Time ``run_inference`` (repeats within the budget) for one scale; one row."""
    torch = b.torch
    import h5py

    import iconet_fastmri.inference as shipped
    from iconet_fastmri.physics.masks import MaskConfig

    p = b.profile
    S, R, batch = p["inf_slices"], p["inf_recon"], p["inf_batch"]
    repeats = b.args.repeats or p["inf_repeats"]
    kwargs = dict(
        data_path=data_dir,
        out_dir=out_dir,
        scale=scale,
        challenge="singlecoil",
        mask=MaskConfig(name="random", center_fractions=[0.08], accelerations=[4.0]),
        hr_crop=(R, R),
        batch_size=batch,
        num_workers=0,
        device=str(b.device),
        overwrite=True,
        progress=False,
        **method,
    )

    # Warm-up and time estimate: one batch through degradation + model of the same module.
    t = time.perf_counter()
    module = shipped.load_method(method.get("checkpoint"), method.get("baseline"), scale)[0]
    module = module.to(b.device)
    with torch.inference_mode():
        hr = torch.zeros(batch, 1, R, R, dtype=torch.complex64, device=b.device)
        hr[..., R // 2, R // 2] = 1
        mask = torch.ones(batch, 1, R // scale, R // scale, device=b.device)
        module.magnitude(module(module.model_input(module.acquisition.simulate(hr, mask))).sr)
        b.sync()
    del module, hr, mask
    estimate = (time.perf_counter() - t) * S / batch * 1.3

    runs: List[Dict[str, Optional[float]]] = []
    written: List[Path] = []
    note = None
    if b.args.wait_quiet:
        wait_for_quiet(b.args.wait_quiet)
    sample = cpu_sample()
    for r in range(repeats):
        if r > 0 and estimate > budget.left():
            note = f"stopped after {r} run(s): the next would exceed the section budget"
            break
        if r == 0 and estimate > budget.left() + (budget.seconds or 0) * 0.5:
            note = f"skipped: estimated {estimate:.0f} s per volume exceeds the section budget"
            break
        with stage_timers(b) as stages:
            b.sync()
            t0 = time.perf_counter()
            written = shipped.run_inference(**kwargs)
            b.sync()
            total = time.perf_counter() - t0
        run = dict(stages)
        run["rest"] = total - sum(v for v in stages.values() if v is not None)
        run["total"] = total
        runs.append(run)
    label = (
        f"ICONet(width={p['model_width']}, blocks_per_stage={p['model_blocks']})"
        if "checkpoint" in method
        else None
    )
    if not runs:
        return b.row(scale=scale, skipped=note, slices=S, recon=[R, R], model=label)
    with h5py.File(written[0], "r") as hf:
        saved_shape = list(hf["reconstruction"].shape)
    totals = [run["total"] for run in runs]
    median = statistics.median(totals)
    return b.row(
        scale=scale,
        slices=S,
        recon=[R, R],
        batch_size=batch,
        code_path=CODE_PATH,
        method="checkpoint" if "checkpoint" in method else f"baseline {method['baseline']}",
        model=label,
        per_volume_s=median,
        per_slice_ms=median / S * 1e3,
        runs=len(runs),
        breakdown_s_fastest_run=runs[totals.index(min(totals))],
        all_totals_s=totals,
        saved_shape=saved_shape,
        saved_ok=len(written) == 1 and saved_shape == [S, R, R],
        foreign_load_cores=foreign_load(sample),
        note=note,
        loadavg=loadavg(),
    )


def evaluate_targets(b: Bench, results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The fft / degradation targets of this run (ratios against fastMRI), met or not."""
    scaled = b.mode != "full"
    suffix = " (scaled-down sizes)" if scaled else ""
    targets: List[Dict[str, Any]] = []
    fft = results.get("fft", {})
    for r in fft.get("rows", []):
        if not r.get("multicoil") or r["op"] != "fft2c":
            continue
        case = f"{r['case']} {tuple(r['shape'])}"
        targets.append(
            {
                "target": f"fft2c >= 2x fastmri.fft2c{suffix}",
                "case": case,
                "value": r["speedup_vs_fastmri"],
                "threshold": ">= 2.0",
                "met": r["speedup_vs_fastmri"] >= 2.0,
            }
        )
        targets.append(
            {
                "target": f"fft2c <= 1.3x unshifted floor{suffix}",
                "case": case,
                "value": r["ours_over_floor"],
                "threshold": "<= 1.3",
                "met": r["ours_over_floor"] <= 1.3,
            }
        )
    deg = results.get("degradation", {})
    for r in deg.get("rows", []):
        if r["coils"] < 15 and not (b.mode == "tiny" and r["coils"] > 1):
            continue
        targets.append(
            {
                "target": f"degradation >= 2x per-sample fastmri reference (CPU){suffix}",
                "case": r["case"],
                "value": r["ours_over_reference"],
                "threshold": ">= 2.0",
                "met": (r["ours_over_reference"] >= 2.0) if not b.cuda else None,
            }
        )
        if b.cuda:
            targets.append(
                {
                    "target": f"degradation <= 1.3x its own FFTs (GPU){suffix}",
                    "case": r["case"],
                    "value": r["degradation_over_own_fft"],
                    "threshold": "<= 1.3",
                    "met": r["degradation_over_own_fft"] <= 1.3,
                }
            )
    targets.extend(_training_targets(results.get("model", {}), suffix))
    for t in targets:
        t.update(b.row_env)
    return targets


def _training_targets(model: Dict[str, Any], suffix: str) -> List[Dict[str, Any]]:
    """bf16 autocast + torch.compile against eager fp32, forward+backward (CUDA rows only)."""
    by_case: Dict[Any, Dict[str, Dict[str, Any]]] = {}
    for r in model.get("rows", []):
        if r.get("mode") == "forward+backward" and "variant" in r:
            by_case.setdefault((r["scale"], r["batch"]), {})[r["variant"]] = r
    targets: List[Dict[str, Any]] = []
    for (scale, batch), rows in sorted(by_case.items()):
        fast, ref = rows.get("compile_bf16_channels_last"), rows.get("eager_fp32")
        if fast is None or ref is None:
            continue
        case = f"ICONet x{scale} forward+backward, batch {batch}"
        targets.append(
            {
                "target": f"bf16 + compile (channels_last) >= 2x the slices/s of eager fp32{suffix}",
                "case": case,
                "value": fast["slices_per_s"] / ref["slices_per_s"],
                "threshold": ">= 2.0",
                "met": fast["slices_per_s"] / ref["slices_per_s"] >= 2.0,
            }
        )
        if fast.get("peak_mib_over_start") and ref.get("peak_mib_over_start"):
            ratio = fast["peak_mib_over_start"] / ref["peak_mib_over_start"]
            targets.append(
                {
                    "target": f"bf16 + compile (channels_last) <= 0.55x the peak memory of eager fp32{suffix}",
                    "case": case,
                    "value": ratio,
                    "threshold": "<= 0.55",
                    "met": ratio <= 0.55,
                }
            )
    return targets
