#!/usr/bin/env python
"""One-command reproduction: train what needs training, infer, evaluate, write the table and figure.

    python scripts/reproduce.py --config configs/knee_singlecoil_x2.yaml \\
        --methods iconet unet_sr t2net_like bicubic sinc --data.data_path /data/fastmri --out outputs/knee_x2
    python scripts/reproduce.py --demo --out outputs/demo      # the README's demo table

Each step is one command of this repository's own scripts, printed before it
runs and recorded in ``<out>/steps/<step>.done`` when it succeeds; a rerun
skips finished steps (resumable; delete a ``.done`` file to redo its step).
Methods: ``iconet`` (the config's model), ``unet_sr`` and ``t2net_like``
(trained with the same config and the sizes in ``METHODS``), ``bicubic`` and
``sinc`` (zero-filled baselines, no training). Inference runs on the test
part of the val folder when the config sets ``data.test_fraction``, else on
the whole val folder; evaluation writes ``<out>/eval/table.md`` (with
bootstrap CIs and the paired comparison iconet - bicubic) and a figure.
Any other ``--key value`` arguments are passed to every training run (e.g.
``--trainer.max_epochs 5``).
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: How each trained method is built from the config (the CLI's model injection).
METHODS: Dict[str, List[str]] = {
    "iconet": [],
    "unet_sr": ["--model.model", "UnetSR"],
    "t2net_like": ["--model.model", "T2NetLike", "--model.model.init_args.width", "32",
                   "--model.model.init_args.num_blocks", "4"],
}
BASELINES = {"bicubic": "zero_filled_bicubic", "sinc": "zero_filled_sinc"}


def run_step(out: Path, name: str, cmd: List[str]) -> None:
    done = out / "steps" / f"{name}.done"
    text = " ".join(shlex.quote(str(c)) for c in cmd)
    if done.is_file():
        print(f"[reproduce] {name}: done before, skipped ({done})", flush=True)
        return
    print(f"[reproduce] {name}: {text}", flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(text + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--demo", action="store_true", help="configs/demo.yaml on the built-in demo data")
    p.add_argument("--methods", nargs="+", default=["iconet", "unet_sr", "t2net_like", "bicubic", "sinc"],
                   choices=sorted([*METHODS, *BASELINES]))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    args, extra = p.parse_known_args(argv)
    if args.demo == (args.config is not None):
        p.error("give --config or --demo (not both)")
    config_path = ROOT / "configs" / "demo.yaml" if args.demo else args.config
    config = yaml.safe_load(config_path.read_text())
    data = dict(config.get("data", {}))
    for key, value in zip(extra[::2], extra[1::2]):  # the data overrides matter for inference too
        if key.startswith("--data."):
            data[key[len("--data."):]] = yaml.safe_load(value)
    data_path = Path(data.get("data_path", "demo_data"))
    challenge = data.get("challenge", "singlecoil")
    val_dir = Path(data["val_path"]) if data.get("val_path") else data_path / f"{challenge}_val"
    scale, hr = int(data.get("scale", 2)), [int(n) for n in data.get("hr_crop", [320, 320])]
    out = args.out.resolve()
    predictions: List[Path] = []
    names: List[str] = []
    part = ["--part", "test"] if data.get("test_fraction") else []
    for method in args.methods:
        pred = out / "predictions" / method
        if method in METHODS:
            run_dir = out / "runs" / method
            run_step(out, f"train_{method}", [
                PY, ROOT / "scripts" / "train_iconet_fastmri.py", "fit", "--config", config_path,
                *METHODS[method], "--trainer.default_root_dir", run_dir, "--trainer.logger", "false",
                "--overwrite", "true", *extra,
            ])
            run_step(out, f"infer_{method}", [
                PY, ROOT / "scripts" / "run_inference.py", "--checkpoint", run_dir / "checkpoints" / "last.ckpt",
                "--data_path", val_dir, "--out", pred, "--overwrite", "--no_progress", *part,
            ])
        else:
            run_step(out, f"infer_{method}", [
                PY, ROOT / "scripts" / "run_inference.py", "--baseline", BASELINES[method],
                "--scale", scale, "--hr_crop", *hr, "--data_path", val_dir, "--out", pred, "--overwrite",
                "--no_progress", "--pad_if_smaller", "true" if data.get("pad_if_smaller") else "false",
                *(["--part", "test", "--test_fraction", data["test_fraction"]] if part else []),
            ])
        predictions.append(pred)
        names.append(method)
    paired = ["--paired", "iconet", "bicubic"] if {"iconet", "bicubic"} <= set(names) else []
    run_step(out, "evaluate", [
        PY, ROOT / "scripts" / "evaluate.py", "--targets", val_dir, "--predictions", *predictions,
        "--names", *names, "--out", out / "eval", "--bootstrap", args.bootstrap, *paired,
        "--figures", out / "eval" / "figures", "--overwrite", "--no_progress",
        *(["--allow_missing"] if part else []),
    ])
    print((out / "eval" / "table.md").read_text())
    print(f"[reproduce] table: {out / 'eval' / 'table.md'}; figure: {out / 'eval' / 'figures' / 'panel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
