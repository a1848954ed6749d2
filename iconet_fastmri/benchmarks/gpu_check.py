"""One GPU check, ready to run: the CUDA paths against the CPU, bf16 + compile against fp32 eager.

``python scripts/gpu_check.py --out gpu_check/`` on a CUDA machine (about
5 minutes on one GPU):

1. **Numerics, CUDA vs CPU on the same inputs.** ``fft2c`` / ``ifft2c``; the
   degradation, single- and 15-coil, x2 and x4, every tensor of ``Degraded``;
   masks drawn on the device (``KSpaceDegradation`` with a mask function);
   ICONet's forward in fp32. Tolerances: relative max-abs error 1e-5 for the
   FFTs and the degradation (float32 rounding of two FFT libraries), 1e-4 for
   the network (cuDNN convolution algorithms), exact for the masks.
2. **Training precision.** A short ``fit`` in ``bf16-mixed`` with
   ``--model.compile true``, then ``validate`` of that checkpoint in bf16 +
   compile and in fp32 eager: PSNR must agree within 0.05 dB.
3. **The full benchmark** (``scripts/benchmark.py``), its JSON into ``--out``.

``--device cpu --tiny`` runs the same code CPU against CPU at tiny sizes (no
compile, fp32 only): CI runs it (``tests/test_benchmark.py``) so the script
cannot rot between GPU sessions. Exit status 1 when a check fails; every
figure goes to ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
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
TOL_PSNR_DB = 0.05


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def numerics_checks(device: str, tiny: bool) -> List[Dict[str, Any]]:
    """Compare ``device`` with the CPU on the same inputs; one row per compared tensor."""
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.physics.degradation import KSpaceDegradation
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
            ours = KSpaceDegradation(scale)(x.to(device), mask.to(device))
            ref = KSpaceDegradation(scale)(x, mask)
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
    ours = KSpaceDegradation(2, mask_func=func_a)(x.to(device))
    ref = KSpaceDegradation(2, mask_func=func_b)(x)
    row("masks drawn for a batch", "mask", ours.mask, ref.mask, 0.0)
    torch.manual_seed(0)
    model = ICONet(scale=2, width=8 if tiny else 64, blocks_per_stage=1 if tiny else 4).eval()
    lr = torch.rand(2, 1, hr // 2, hr // 2, generator=g)
    with torch.no_grad():
        ref_out = model(lr).sr
        ours_out = model.to(device)(lr.to(device)).sr
    row("ICONet forward fp32", "sr", ours_out, ref_out, TOL_MODEL)
    return rows


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
                                 "--model.compile", "true" if gpu else "false"],
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
                                      "--model.volume_metrics_file", str(metrics)],
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="device compared with the CPU (cuda, cuda:1, cpu)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for the JSON reports")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_benchmark", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu for the CPU-vs-CPU path", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    report["numerics"] = numerics_checks(args.device, args.tiny)
    if not args.skip_training:
        report["training"] = training_check(args.device, args.tiny, args.out)
    if not args.skip_benchmark:
        bench = [sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"),
                 "--device", "cuda" if args.device.startswith("cuda") else "cpu",
                 "--out", str(args.out / "benchmark.json")]
        if args.tiny:
            bench += ["--quick", "--tiny"]
        proc = subprocess.run(bench, capture_output=True, text=True)
        report["benchmark"] = {"ok": proc.returncode == 0, "json": str(args.out / "benchmark.json"),
                               "tables": proc.stdout[-20000:], "stderr": proc.stderr[-3000:]}
    failed = [r for r in report["numerics"] if not r["ok"]]
    ok = not failed and report.get("training", {}).get("ok", True) and report.get("benchmark", {}).get("ok", True)
    report["ok"] = bool(ok)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    worst = max(report["numerics"], key=lambda r: r["rel_max_err"] / (r["tolerance"] or 1))
    print(f"numerics: {len(report['numerics'])} comparisons, {len(failed)} failed; worst "
          f"{worst['case']} / {worst['tensor']}: {worst['rel_max_err']:.2e} (tolerance {worst['tolerance']:g})")
    if "training" in report:
        t = report["training"]
        print(f"training ({t.get('precision')}, compile={t.get('compile')}): "
              + (f"PSNR {t['psnr_fast']:.3f} vs fp32 eager {t['psnr_fp32_eager']:.3f} dB" if "psnr_fast" in t
                 else "failed"))
    print(f"gpu_check {'passed' if ok else 'FAILED'}; report: {args.out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
