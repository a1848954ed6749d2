"""One GPU check, ready to run: the CUDA paths against the CPU, bf16 + compile against fp32 eager.

``python scripts/gpu_check.py --out gpu_check/`` on a CUDA machine (about
5 minutes on one GPU):

1. **Numerics, CUDA vs CPU on the same inputs.** ``fft2c`` / ``ifft2c``; the
   degradation, single- and 15-coil, x2 and x4, every tensor of ``Degraded``;
   masks drawn on the device (``Acquisition.simulate`` with a mask function);
   ICONet's forward in fp32. Tolerances: relative max-abs error 1e-5 for the
   FFTs and the degradation (float32 rounding of two FFT libraries), 1e-4 for
   the network in strict fp32 (TF32 off: cuDNN algorithms differ only in
   summation order), 5e-3 with PyTorch's default, which lets cuDNN use TF32
   (the first H200 run measured 3.8e-4 there), exact for the masks.
2. **Training precision.** A short ``fit`` in ``bf16-mixed`` with
   ``--model.compile true --model.channels_last true --trainer.benchmark true``, then ``validate`` of that checkpoint in bf16 +
   compile and in fp32 eager: PSNR must agree within 0.05 dB.
3. **The benchmark sections the GPU targets name** (:func:`benchmark_check`:
   ``fft``, ``degradation``, and ``model`` at x2, batch 8 on a GPU; then the
   degradation on this machine's CPU), with the targets met or not, into
   ``<out>/benchmark.json``. Targets not met are reported, not a failure; a
   section that raises is a failure.

``--steps`` picks and orders the steps (default ``numerics,training,benchmark``);
``--work`` holds the demo data and the training run (default ``--out``).

``--device cpu --tiny`` runs the same code CPU against CPU at tiny sizes (no
compile, fp32 only): CI runs it (``tests/benchmarks/test_benchmark.py``) so the script
cannot rot between GPU sessions. Exit status 1 when a check fails; every
figure goes to ``<out>/gpu_check.json``, rewritten after each step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["main", "numerics_checks", "training_check"]

TOL_FFT = 1e-5
TOL_MODEL = 1e-4
#: TF32 rounds each convolution's inputs to 10 mantissa bits (~5e-4 relative each).
TOL_TF32 = 5e-3
TOL_PSNR_DB = 0.05


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def numerics_checks(device: str, tiny: bool) -> List[Dict[str, Any]]:
    """Compare ``device`` with the CPU on the same inputs; one row per compared tensor."""
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.physics.acquisition import Acquisition
    from iconet_fastmri.physics.fft import fft2c, ifft2c
    from iconet_fastmri.physics.masks import create_mask

    rows: List[Dict[str, Any]] = []

    def row(case: str, what: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        err = _rel(ours, ref) if tol > 0 else float(not torch.equal(ours.detach().cpu(), ref.detach().cpu()))
        rows.append({"case": case, "tensor": what, "rel_max_err": err, "tolerance": tol, "ok": err <= tol})

    g = torch.Generator().manual_seed(0)
    hr = 32 if tiny else 320
    coil_counts = (1, 3) if tiny else (1, 15)
    knee = [1, 3, 64, 40] if tiny else [1, 15, 640, 368]  # a fastMRI knee multi-coil slice
    for shape in ([2, 1, hr, hr], knee):
        x = torch.randn(*shape, dtype=torch.complex64, generator=g)
        row(f"fft {shape}", "fft2c", fft2c(x.to(device)), fft2c(x), TOL_FFT)
        row(f"fft {shape}", "ifft2c", ifft2c(x.to(device)), ifft2c(x), TOL_FFT)
    for coils in coil_counts:
        for scale in (2, 4):
            x = torch.randn(2, coils, hr, hr, dtype=torch.complex64, generator=g)
            mask = (torch.rand(2, 1, hr // scale, hr // scale, generator=g) > 0.5).float()
            ours = Acquisition(scale)(x.to(device), mask.to(device))
            ref = Acquisition(scale)(x, mask)
            for name in ("hr_target", "lr_kspace", "lr_clean", "lr_observed", "lr_input",
                         "lr_input_complex", "lr_clean_complex"):
                a, b = getattr(ours, name), getattr(ref, name)
                if a is not None:
                    row(f"degradation {coils}-coil x{scale}", name, a, b, TOL_FFT)
            for k, (a, b) in enumerate(zip(ours.stage_targets, ref.stage_targets)):
                row(f"degradation {coils}-coil x{scale}", f"stage_targets[{k}]", a, b, TOL_FFT)
    # Masks drawn through the degradation on the device equal the CPU draws for the same seed.
    func_a = create_mask("random", accelerations=[4], seed=5)
    func_b = create_mask("random", accelerations=[4], seed=5)
    x = torch.randn(3, 1, hr, hr, dtype=torch.complex64, generator=g)
    ours = Acquisition(2, mask=func_a)(x.to(device))
    ref = Acquisition(2, mask=func_b)(x)
    row("masks drawn for a batch", "mask", ours.mask, ref.mask, 0.0)
    torch.manual_seed(0)
    model = ICONet(scale=2, width=8 if tiny else 64, blocks_per_stage=1 if tiny else 4).eval()
    lr = torch.rand(2, 1, hr // 2, hr // 2, generator=g)
    with torch.no_grad():
        ref_out = model(lr).sr
        model = model.to(device)
        with strict_fp32():
            ours_out = model(lr.to(device)).sr
        default_out = model(lr.to(device)).sr
    row("ICONet forward fp32", "sr", ours_out, ref_out, TOL_MODEL)
    if device != "cpu":
        # PyTorch's default lets cuDNN convolve fp32 in TF32 (10-bit mantissa) on Ampere and later.
        row("ICONet forward fp32, cuDNN TF32 allowed (PyTorch default)", "sr", default_out, ref_out, TOL_TF32)
    return rows


@contextlib.contextmanager
def strict_fp32():
    """Convolutions and matmuls in true fp32 (no TF32) inside the ``with`` body."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def training_check(device: str, tiny: bool, out: Path) -> Dict[str, Any]:
    """fit in bf16-mixed + compile, then validate that checkpoint in bf16+compile and in fp32 eager."""
    from iconet_fastmri.demo import make_demo_splits

    data = out / "data"
    make_demo_splits(data, train_volumes=2 if tiny else 8, val_volumes=1 if tiny else 2,
                     slices=2 if tiny else 8, recon_size=(32, 32) if tiny else (128, 128))
    gpu = device != "cpu"
    precision = "bf16-mixed" if gpu else "32-true"
    run = out / "run"
    base = [sys.executable, "-m", "iconet_fastmri.cli"]
    common = [
        "--trainer.accelerator", "gpu" if gpu else "cpu", "--trainer.devices", "1",
        "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--data.data_path", str(data), "--data.hr_crop", "[32, 32]" if tiny else "[128, 128]",
        "--data.batch_size", "2" if tiny else "8", "--data.num_workers", "0" if tiny else "4",
        "--data.use_dataset_cache", "false",
    ]
    t0 = time.perf_counter()
    fit = subprocess.run(base + ["fit", *common, "--overwrite", "true", "--trainer.max_epochs", "1" if tiny else "3",
                                 "--trainer.precision", precision, "--trainer.num_sanity_val_steps", "0",
                                 "--model.model", "ICONet", "--model.model.init_args.width", "8" if tiny else "32",
                                 "--model.model.init_args.blocks_per_stage", "1" if tiny else "2",
                                 "--model.compile", "true" if gpu else "false",
                                 "--model.channels_last", "true" if gpu else "false",
                                 "--trainer.benchmark", "true" if gpu else "false"],
                         capture_output=True, text=True)
    result: Dict[str, Any] = {"fit_seconds": time.perf_counter() - t0, "precision": precision,
                              "compile": gpu, "fit_ok": fit.returncode == 0}
    if fit.returncode != 0:
        result["fit_error"] = fit.stderr[-3000:]
        result["ok"] = False
        return result
    psnr = {}
    for name, extra in (("fast", ["--trainer.precision", precision, "--model.compile", "true" if gpu else "false"]),
                        ("fp32_eager", ["--trainer.precision", "32-true", "--model.compile", "false"])):
        metrics = out / f"validate_{name}.json"
        proc = subprocess.run(base + ["validate", *common, "--ckpt_path", "last", *extra,
                                      "--volume_metrics.path", str(metrics)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            result[f"validate_{name}_error"] = proc.stderr[-3000:]
            result["ok"] = False
            return result
        psnr[name] = float(json.loads(metrics.read_text())["summary"]["psnr"])
    result.update(psnr_fast=psnr["fast"], psnr_fp32_eager=psnr["fp32_eager"],
                  psnr_diff_db=abs(psnr["fast"] - psnr["fp32_eager"]), tolerance_db=TOL_PSNR_DB)
    result["ok"] = result["psnr_diff_db"] <= TOL_PSNR_DB
    return result


def benchmark_check(device: str, tiny: bool, out: Path) -> Dict[str, Any]:
    """The benchmark sections the GPU targets need, bounded, plus the CPU reference of the degradation.

    On ``device``: ``fft``, ``degradation`` and ``model`` (on a GPU the model at x2,
    batch 8, LR 160², the size the training target names; the full benchmark's
    other cases would each add a ``torch.compile``). Then the ``degradation`` section
    on this machine's CPU, for the "GPU >= 100x the per-sample fastMRI pipeline on
    the CPU" target. ``<out>/benchmark.json`` is rewritten after every section, so
    a run stopped by a time limit still leaves what it measured.
    """
    from .cli import SECTION_FUNCS, parse_args
    from .harness import Bench
    from .inference import evaluate_targets
    from .report import jsonable, print_tables

    mode = ["--tiny"] if tiny else []
    path = out / "benchmark.json"
    results: Dict[str, Any] = {}

    def save() -> None:
        path.write_text(json.dumps(jsonable(results), indent=1, default=str))

    def run_sections(b: Bench, names: Sequence[str], into: Dict[str, Any]) -> None:
        for name in names:
            print(f"[gpu_check] benchmark {name} on {b.device} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                into[name] = SECTION_FUNCS[name](b)
            except Exception as err:  # recorded, the other sections still run
                into[name] = {"error": repr(err)}
            into[name]["seconds"] = time.perf_counter() - t0
            save()

    dev = Bench(parse_args(["--device", device, *mode]))
    if dev.cuda and not tiny:
        dev.profile.update(model_scales=[2], model_batches=[8])
    results["env"] = dev.env
    results["config"] = {"mode": dev.mode, "profile": dev.profile}
    for name in SECTION_FUNCS:
        results[name] = {"skipped": "not part of the GPU check"}
    results["model"] = {"skipped": "not reached"}
    run_sections(dev, ("fft", "degradation"), results)
    # The CPU reference before the model: the model's compiles are the slow, uncertain part.
    cpu = Bench(parse_args(["--device", "cpu", *mode]))
    cpu.profile.update(deg_repeats=3)
    cpu_results: Dict[str, Any] = {"env": cpu.env}
    results["cpu"] = cpu_results
    for name in SECTION_FUNCS:
        cpu_results[name] = {"skipped": "not part of the GPU check"}
    cpu_results["degradation"] = {"skipped": "not reached"}
    run_sections(cpu, ("degradation",), cpu_results)
    run_sections(dev, ("model",), results)
    results["correctness"] = dev.correctness
    results["targets"] = evaluate_targets(dev, results) + device_over_cpu_targets(results, cpu_results)
    results["table_markdown"] = print_tables(dev, results)
    (out / "benchmark.md").write_text(results["table_markdown"])
    save()
    errors = {k: results[k]["error"] for k in ("fft", "degradation", "model") if "error" in results[k]}
    if "error" in cpu_results["degradation"]:
        errors["cpu degradation"] = cpu_results["degradation"]["error"]
    return {"targets_met": all(t["met"] is not False for t in results["targets"]), "errors": errors,
            "json": str(path), "targets": results["targets"]}


def device_over_cpu_targets(gpu: Dict[str, Any], cpu: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Batched degradation on the device against the per-sample fastMRI pipeline on the CPU."""
    cpu_rows = {r["case"]: r for r in cpu.get("degradation", {}).get("rows", [])}
    targets = []
    for r in gpu.get("degradation", {}).get("rows", []):
        ref = cpu_rows.get(r["case"])
        if ref is None or gpu["env"]["device"] == "cpu":
            continue
        ratio = ref["reference_ms"] / r["ours_ms"]
        targets.append({"target": "degradation (GPU) >= 100x the per-sample fastMRI pipeline (CPU)",
                        "case": r["case"], "value": ratio, "threshold": ">= 100", "met": ratio >= 100,
                        "gpu_ms": r["ours_ms"], "cpu_reference_ms": ref["reference_ms"],
                        "cpu_threads": cpu["env"].get("threads")})
    return targets


STEPS = ("numerics", "training", "benchmark")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="device compared with the CPU (cuda, cuda:1, cpu)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for the JSON reports")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for the demo data and the training run (default: --out)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}, run in that order")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_benchmark", action="store_true")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; valid steps are {list(STEPS)}")
    steps = [s for s in steps if not (s == "training" and args.skip_training)
             and not (s == "benchmark" and args.skip_benchmark)]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu for the CPU-vs-CPU path", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out
    work.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "steps": steps,
    }
    started = time.perf_counter()

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    for step in steps:
        t0 = time.perf_counter()
        if step == "numerics":
            report["numerics"] = numerics_checks(args.device, args.tiny)
            failed = [r for r in report["numerics"] if not r["ok"]]
            worst = max(report["numerics"], key=lambda r: r["rel_max_err"] / (r["tolerance"] or 1))
            print(f"numerics: {len(report['numerics'])} comparisons, {len(failed)} failed; worst "
                  f"{worst['case']} / {worst['tensor']}: {worst['rel_max_err']:.2e} "
                  f"(tolerance {worst['tolerance']:g})", flush=True)
        elif step == "training":
            t = report["training"] = training_check(args.device, args.tiny, work)
            print(f"training ({t.get('precision')}, compile={t.get('compile')}, fit {t['fit_seconds']:.0f} s): "
                  + (f"PSNR {t['psnr_fast']:.3f} vs fp32 eager {t['psnr_fp32_eager']:.3f} dB" if "psnr_fast" in t
                     else "failed"), flush=True)
        else:
            bench = report["benchmark"] = benchmark_check(args.device, args.tiny, args.out)
            for t in bench["targets"]:
                met = {True: "met", False: "NOT met", None: "-"}[t["met"]]
                print(f"target {t['target']} [{t['case']}]: {t['value']:.3g} ({t['threshold']}) {met}",
                      flush=True)
        report[f"{step}_seconds"] = time.perf_counter() - t0
        save()
    failed = [r for r in report.get("numerics", []) if not r["ok"]]
    ok = (not failed and report.get("training", {}).get("ok", True)
          and not report.get("benchmark", {}).get("errors"))
    report["benchmark_targets_met"] = report.get("benchmark", {}).get("targets_met")
    report["ok"] = bool(ok)
    save()
    print(f"gpu_check {'passed' if ok else 'FAILED'} in {report['seconds']:.0f} s "
          f"(benchmark targets {'met' if report['benchmark_targets_met'] else 'not all met'}); "
          f"report: {args.out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
