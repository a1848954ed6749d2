#!/usr/bin/env python
"""Score prediction folders against HR targets with fastMRI's metrics.

    python scripts/evaluate.py --targets demo_data/singlecoil_val \\
        --predictions outputs/iconet outputs/unet_sr outputs/bicubic \\
        --out outputs/eval --bootstrap 1000 --paired iconet zero_filled_bicubic \\
        --figures outputs/eval/figures

Targets are computed from each raw file's k-space with our HR-target rule
(RSS of the HR-grid coil images; equals reconstruction_esc/rss at 320x320),
or read from --target_key. Per-volume NMSE/PSNR/SSIM come from
fastmri.evaluate (volume max as data range). Prints the table, and with
--out writes per_volume.csv, summary.csv, results.json and table.md there.

fastMRI's own flags work too (its ``python -m fastmri.evaluate`` crashes
under numpy 2): ``--target-path``, ``--predictions-path``, ``--challenge``
(reads ``reconstruction_esc`` / ``reconstruction_rss`` as fastMRI does) and
``--acquisition`` (only volumes of that acquisition); like fastMRI's script
it then needs no output folder.

Rows are keyed by prediction folder (or ``--names``). A prediction must be on
the run's HR grid (its ``hr_crop`` attribute, else ``--hr_crop``, else the
target file's reconstruction size); ``--crop_predictions`` centre-crops
larger ones. The grid is a column of the table, and folders scored on
different grids are a warning (printed, and kept in results.json and
table.md). NaN/Inf, complex and mis-shaped predictions are errors naming
the file (and slices). Predictions with negative pixels are scored as given,
with the fraction of negative pixels per volume (negative_fraction; its mean
and max per table row in summary.csv) and a warning naming the volumes. A file
without the run's attributes takes the settings its folder's other files agree
on, with a warning naming it (and what could not be inferred).

--out and --figures must lie outside --targets and every --predictions folder
(neither be, contain nor lie inside one). A refusal prints its message and
exits with code 1; --debug (or ICONET_DEBUG=1) shows the Python traceback.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path


from iconet_fastmri.evaluation import (
    EVALUATION_WARNINGS,
    evaluate_folders,
    format_table,
    paired_comparison,
    save_json,
    summarize_rows,
    write_csv,
)
from iconet_fastmri.io import check_outputs_apart, run_script

OUTPUTS = ("per_volume.csv", "summary.csv", "results.json", "table.md")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", "--target-path", dest="targets", type=Path, required=True,
                   help="folder of raw fastMRI .h5 files")
    p.add_argument("--predictions", "--predictions-path", dest="predictions", type=Path, nargs="+", required=True,
                   help="one folder per method")
    p.add_argument("--challenge", choices=("singlecoil", "multicoil"), default=None,
                   help="fastMRI's flag: score against the files' reconstruction_esc (singlecoil) or "
                        "reconstruction_rss (multicoil) unless --target_key is given")
    p.add_argument("--acquisition", default=None,
                   help="fastMRI's flag: only volumes of this acquisition (e.g. CORPD_FBK)")
    p.add_argument("--crop_predictions", action="store_true",
                   help="centre-crop predictions larger than the HR grid (otherwise an error)")
    p.add_argument("--scale", type=int, default=None, help="scale of predictions without attributes")
    p.add_argument("--acceleration", type=float, default=None, help="R of predictions without attributes")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--names", nargs="+", default=None, help="method names (default: the files' 'method' attribute)")
    p.add_argument("--hr_crop", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--target_key", default=None, help="e.g. reconstruction_esc: read targets instead of k-space")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the tables (default: none; the table is printed)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% CIs (0: off)")
    p.add_argument("--paired", nargs=2, default=None, metavar=("A", "B"), help="paired comparison of two methods")
    p.add_argument("--figures", type=Path, default=None, help="write PNG panels here")
    p.add_argument("--figure_volume", default=None)
    p.add_argument("--figure_slice", type=int, default=None)
    p.add_argument("--allow_missing", action="store_true", help="skip volumes a method lacks")
    p.add_argument("--overwrite", action="store_true", help="replace existing tables in --out")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (or set ICONET_DEBUG=1)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Before anything is created: outputs never go into, over or around an input folder.
    check_outputs_apart({"--out": args.out, "--figures": args.figures},
                        [("--targets", args.targets)] + [("--predictions", p) for p in args.predictions])
    if args.out is not None:
        clash = [name for name in OUTPUTS if (args.out / name).exists()]
        if clash and not args.overwrite:
            raise SystemExit(f"error: {args.out} already holds {clash}; pass --overwrite to replace them")
        args.out.mkdir(parents=True, exist_ok=True)
    target_key = args.target_key
    if target_key is None and args.challenge:
        target_key = "reconstruction_esc" if args.challenge == "singlecoil" else "reconstruction_rss"
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        for category in EVALUATION_WARNINGS:
            warnings.simplefilter("always", category)
        rows = evaluate_folders(
            args.targets, args.predictions, names=args.names,
            hr_crop=tuple(args.hr_crop) if args.hr_crop else None,
            target_key=target_key, allow_missing=args.allow_missing,
            crop_predictions=args.crop_predictions, scale=args.scale, acceleration=args.acceleration,
            acquisition=args.acquisition, progress=not args.no_progress,
        )
    notes = []
    for w in caught:
        if issubclass(w.category, EVALUATION_WARNINGS):
            notes.append(str(w.message))
        else:  # not ours to judge: shown as Python would
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    elapsed = time.perf_counter() - start
    per_volume = {r["fname"]: r["num_slices"] for r in rows}
    scored = sum(r["num_slices"] for r in rows)
    print(f"scored {len(rows)} (method, volume) pairs over {len(per_volume)} volumes, "
          f"{sum(per_volume.values())} slices, in {elapsed:.1f} s ({scored / max(elapsed, 1e-9):.1f} "
          f"method-slices/s)")
    table = summarize_rows(rows, bootstrap=args.bootstrap)
    payload = {"per_volume": rows, "summary": table, "warnings": notes}
    if args.paired:
        payload["paired"] = paired_comparison(rows, *args.paired, bootstrap=max(args.bootstrap, 1000))
    text = format_table(table)
    if args.out is not None:
        write_csv(args.out / "per_volume.csv", rows)
        write_csv(args.out / "summary.csv", table)
        save_json(args.out / "results.json", payload)
        (args.out / "table.md").write_text(text + "\n" + "".join(f"\n> warning: {n}\n" for n in notes))
    print(text)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if args.paired:
        pc = payload["paired"]
        print(f"\npaired {pc['a']} - {pc['b']} over {pc['volumes']} volumes:")
        for metric in ("psnr", "ssim", "nmse"):
            d = pc[metric]
            print(f"  {metric}: {d['mean_diff']:+.4f} [95% CI {d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
                  f"Wilcoxon p={d['wilcoxon_p']:.3g}, {pc['a']} better on {d['a_better']}/{pc['volumes']}")
    if args.figures:
        from iconet_fastmri.figures import comparison_panel

        png = comparison_panel(args.targets, args.predictions, args.figures / "panel.png", names=args.names,
                               fname=args.figure_volume, slice_num=args.figure_slice)
        print(f"figure: {png}")


if __name__ == "__main__":
    sys.exit(run_script(main))
