"""Command line of ``scripts/benchmark.py``: the section registry, argument parsing and the run.

Runs the selected sections in order, each under a try/except (a failing
section is recorded with its traceback), then writes the JSON report and
prints the tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .harness import CPU_FULL_BUDGET, Bench, ru_maxrss_mib
from .inference import evaluate_targets, section_inference
from .kspace import section_degradation, section_fft
from .model import section_memory, section_model
from .pipeline import H200_SLICES_PER_S, section_pipeline
from .sense import section_sense
from .report import jsonable, print_tables

#: Section name -> function of the :class:`~.harness.Bench`, in the order they run.
SECTION_FUNCS: Dict[str, Callable[[Bench], Dict[str, Any]]] = {
    "fft": section_fft,
    "degradation": section_degradation,
    "sense": section_sense,
    "model": section_model,
    "inference": section_inference,
    "memory": section_memory,
    "pipeline": section_pipeline,
}
SECTIONS = tuple(SECTION_FUNCS)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of ``scripts/benchmark.py``; ``args.mode`` is tiny, quick or full."""
    parser = argparse.ArgumentParser(
        description="Speed and memory of iconet_fastmri against the fastMRI reference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda[:N] (default: cuda when present)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (< 2 min on 2 CPU cores)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help=argparse.SUPPRESS
    )  # CI: seconds per section
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out", default="benchmark.json", help="JSON output file (default benchmark.json)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="override the timed repeats of every section"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="override the warm-up calls per side"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--model-width", type=int, default=None, help="ICONet width (default: 64; quick 8)"
    )
    parser.add_argument(
        "--model-blocks",
        type=int,
        default=None,
        help="ICONet blocks per stage (default 4; quick 1)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time budget (s) of the model and of the inference section each; default: "
        f"{CPU_FULL_BUDGET['model']:.0f}/{CPU_FULL_BUDGET['inference']:.0f} s on the CPU in full "
        "mode, unlimited otherwise",
    )
    parser.add_argument(
        "--feed-rate", type=float, default=H200_SLICES_PER_S,
        help="slices/s a GPU consumes, for the pipeline section's workers needed "
        f"(default {H200_SLICES_PER_S}: ICONet compiled bf16, batch 8, one H200)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed comparison wait up to SECONDS for other processes to use "
        "< 0.25 CPU cores (shared machines); the load seen during each timing is recorded anyway",
    )
    parser.add_argument(
        "--thp",
        action="store_true",
        help="set THP_MEM_ALLOC_ENABLE=1 (PyTorch CPU allocations on transparent huge pages) "
        "before importing torch; recorded in the environment",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; valid sections are {list(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    args.mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected sections, print the tables, write the JSON report; exit status."""
    args = parse_args(argv)
    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    bench = Bench(args)
    started = time.perf_counter()
    results: Dict[str, Any] = {
        "env": bench.env,
        "config": {
            "mode": bench.mode,
            "sections": args.sections,
            "profile": bench.profile,
            "warmup": bench.warmup,
            "repeats_override": args.repeats,
        },
    }
    for name in SECTIONS:
        if name not in args.sections:
            results[name] = {"skipped": "not selected by --sections"}
            continue
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            res = SECTION_FUNCS[name](bench)
        except Exception as err:
            res = {"error": repr(err), "traceback": traceback.format_exc()}
        gc.collect()
        res["seconds"] = time.perf_counter() - t0
        res["process_peak_rss_mib_after"] = ru_maxrss_mib()
        res["env"] = bench.row_env
        results[name] = res
        print(f"[benchmark] {name} done in {res['seconds']:.1f} s", file=sys.stderr, flush=True)
    results["correctness"] = bench.correctness
    results["targets"] = evaluate_targets(bench, results)
    results["total_seconds"] = time.perf_counter() - started
    results["table_markdown"] = print_tables(bench, results)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(results), indent=2))
    print(f"\n[benchmark] wrote {out} ({results['total_seconds']:.0f} s)", file=sys.stderr)
    return 0
