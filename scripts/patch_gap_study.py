#!/usr/bin/env python
"""Patch training against full slices, and where the difference comes from (docs/REAL_DATA.md).

    python scripts/patch_gap_study.py --out outputs/patch_gap --models unet_sr iconet --seeds 0 1 2 --jobs 2

Trains each model with ``fit --config configs/demo.yaml`` (the CLI, in this process or in
``--jobs`` worker processes with one thread each) under the same pixels per step and the same
number of steps, and reads the last validation on whole slices:

* ``full``: whole slices, ``--batch_size`` B, ``--epochs`` E;
* ``patches``: readout patches ``--patch_size``, k = rows / patch rows times the batch and the
  epochs (same pixels per step, same steps);
* ``context``: a control. The patches' draws, batch and steps, but the network runs on the whole
  slice and only the loss is cut to the patch (:class:`WholeSliceContext`). It saves no memory;
  it separates what patch training changes in the *loss* (which rows are supervised, how many
  slices per step) from what it changes in what the *network sees*;
* ``patches, eval_window [h, w]``: the ``patches`` checkpoint of U-Net SR validated on LR windows
  (``UnetSR.eval_window``), ``h`` from ``--eval_rows`` (default: the patch's rows / scale).

Writes OUT/<run>/metrics.json per run (a finished run is not redone) and OUT/study.md, and
prints the table with the gap of each row to ``full`` (mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from iconet_fastmri.io import run_script
from iconet_fastmri.models.patches import cut_patches, whole_slices
from iconet_fastmri.pl_modules import IconetModule

MODELS = {"unet_sr": "UnetSR", "iconet": "ICONet"}
VARIANTS = ("full", "patches", "context")


class WholeSliceContext(IconetModule):
    """Control: the network sees the whole slice; the loss only the patch's rows and columns."""

    def training_step(self, batch, batch_idx):
        if batch.patch is None or whole_slices(batch.patch, batch.hr_images.shape):
            return super().training_step(batch, batch_idx)
        if self.hparams.lambda_phase > 0:
            raise ValueError("the context control supervises magnitudes only: set model.lambda_phase 0")
        deg = self.degrade(batch)
        inputs = self.model_input(deg, batch.maps)
        out = self(inputs)
        # Cut the outputs at their own grids exactly as the targets are cut (``also``).
        cut, _, (sr_stages, rec_stages) = cut_patches(deg, inputs, batch.patch, self.model.norm_eps,
                                                      (out.sr_stages, out.rec_stages))
        out = replace(out, sr=sr_stages[-1], sr_stages=sr_stages, rec_stages=rec_stages)
        loss, _ = self.loss_fn(out, cut.stage_targets, cut.rec_targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=cut.hr_target.shape[0])
        return loss


def cli_once(subcommand: str, run_dir: Path, args: List[str], context: bool = False) -> Dict[str, float]:
    """One ``fit`` or ``validate`` through the package's CLI; the metrics of its last validation."""
    from iconet_fastmri.cli import IconetCLI
    from iconet_fastmri.pl_modules import IconetDataModule

    cli = IconetCLI(WholeSliceContext if context else IconetModule, IconetDataModule,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"parser_mode": "yaml"},
                    args=[subcommand, *args, "--trainer.default_root_dir", str(run_dir), "--trainer.logger", "false",
                          "--trainer.enable_progress_bar", "false"])
    return {k.split("/", 1)[1]: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


def plan(args: argparse.Namespace) -> List[dict]:
    """Every run: name, CLI arguments, kind."""
    ph, pw = args.patch_size
    k = args.rows // ph
    runs = []
    for model in args.models:
        for seed in args.seeds:
            common = [*args.config_args, "--seed_everything", str(seed), "--model.model", MODELS[model],
                      "--model.lr", str(args.lr), *args.extra]
            full = [*common, "--trainer.max_epochs", str(args.epochs), "--data.batch_size", str(args.batch_size)]
            patch = [*common, "--trainer.max_epochs", str(k * args.epochs), "--data.batch_size", str(k * args.batch_size),
                     "--data.patch_size", f"[{ph}, {pw}]"]
            for variant in args.variants:
                runs.append({"name": f"{model}_{variant}_s{seed}", "model": model, "variant": variant, "seed": seed,
                             "kind": "fit", "args": full if variant == "full" else patch, "context": variant == "context"})
            for rows in (args.eval_rows or [ph // args.scale]) if model == "unet_sr" and "patches" in args.variants else ():
                window = f"[{rows}, {pw // args.scale}]"
                suffix = "" if rows == ph // args.scale else f"{rows}"
                runs.append({"name": f"{model}_patches-window{suffix}_s{seed}", "model": model,
                             "variant": f"patches, eval_window {window}", "seed": seed, "kind": "validate",
                             "after": f"{model}_patches_s{seed}",
                             "args": [*args.config_args, "--model.model", MODELS[model], *args.extra,
                                      "--model.model.init_args.eval_window", window]})
    return runs


def run_one(out: Path, run: dict) -> Dict[str, float]:
    run_dir = out / run["name"]
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run["kind"] == "fit":
        metrics = cli_once("fit", run_dir, run["args"], run["context"])
    else:
        ckpt = out / run["after"] / "checkpoints" / "last.ckpt"
        metrics = cli_once("validate", run_dir, [*run["args"], "--ckpt_path", str(ckpt)])
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def _in_worker(out: Path, run: dict) -> Dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # side by side on few cores: one thread each
    subprocess.run([sys.executable, __file__, "--out", str(out), "--one", json.dumps(run)], env=env, check=True)
    return json.loads((out / run["name"] / "metrics.json").read_text())


def table(runs: Sequence[dict], results: Dict[str, Dict[str, float]], seeds: Sequence[int]) -> str:
    lines = ["| model | training | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | gap to full |",
             "|---|---|" + "---|" * (len(seeds) + 2)]
    groups: Dict[tuple, Dict[int, Dict[str, float]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["variant"]), {})[run["seed"]] = results[run["name"]]

    def mean(group, key):
        return float(np.mean([m[key] for m in group.values()]))

    for (model, variant), group in groups.items():
        cells = [f"{group[s]['psnr']:.2f} / {group[s]['ssim']:.4f}" if s in group else "" for s in seeds]
        full = groups.get((model, "full"))
        gap = "" if full is None or variant == "full" else (
            f"{mean(full, 'psnr') - mean(group, 'psnr'):.2f} dB / {mean(full, 'ssim') - mean(group, 'ssim'):.3f}")
        lines.append(f"| {model} | {variant} | " + " | ".join(cells)
                     + f" | {mean(group, 'psnr'):.2f} / {mean(group, 'ssim'):.4f} | {gap} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--one", help=argparse.SUPPRESS)  # a worker: one run, given as JSON
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--models", nargs="+", default=["unet_sr", "iconet"], choices=sorted(MODELS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--rows", type=int, default=128, help="HR rows of a whole slice (the config's hr_crop)")
    p.add_argument("--scale", type=int, default=2, help="the config's data.scale (for eval_window)")
    p.add_argument("--patch_size", nargs=2, type=int, default=[64, 128], metavar=("PH", "PW"))
    p.add_argument("--batch_size", type=int, default=4, help="full-slice batch; patches get k times it")
    p.add_argument("--epochs", type=int, default=10, help="full-slice epochs; patches get k times them")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval_rows", nargs="+", type=int, default=None,
                   help="U-Net SR: LR rows of the eval_window validations of its patch checkpoint "
                        "(default: the patch's, patch rows / scale)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further CLI arguments for every run (last on the command line)")
    args = p.parse_args(argv)
    if args.one:
        run_one(args.out, json.loads(args.one))
        return 0
    if args.rows % args.patch_size[0]:
        raise ValueError(f"--patch_size rows {args.patch_size[0]} must divide --rows {args.rows}")
    args.config_args = ["--config", args.config]
    runs = plan(args)
    results: Dict[str, Dict[str, float]] = {}
    fits = [r for r in runs if r["kind"] == "fit"]
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            results.update(zip([r["name"] for r in fits], pool.map(lambda r: _in_worker(args.out, r), fits)))
    else:
        results.update({r["name"]: run_one(args.out, r) for r in fits})
    results.update({r["name"]: run_one(args.out, r) for r in runs if r["kind"] == "validate"})
    command = shlex.join(["python", "scripts/patch_gap_study.py", *(argv if argv is not None else sys.argv[1:])])
    text = (f"`{command}`\n\n"
            + table(runs, results, args.seeds) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
