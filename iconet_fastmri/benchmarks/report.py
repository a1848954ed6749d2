"""Report: the markdown tables printed after a run (one per section, plus targets) and JSON cleanup.

Nothing is measured here; every number comes from the section results.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from .harness import Bench

def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1:
            return f"{value:.3g}"  # 3 significant digits for small values
        if abs(value) >= 1e6:
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


def _load(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)



def print_tables(b: Bench, results: Dict[str, Any]) -> str:
    out: List[str] = []
    env = b.env
    out.append(f"## Benchmark ({b.mode}) on {env['device']} - {env['device_name']}")
    out.append(
        f"torch {env['torch']}, CUDA {env['cuda']}, threads {env['threads']}, "
        f"fastmri {env['fastmri']}, load average at start {env['loadavg_at_start']}, "
        f"THP_MEM_ALLOC_ENABLE={env['thp_mem_alloc_enable']}"
    )
    out.append(
        "Times are medians of interleaved repeats. 'other load' = CPU cores used by other "
        "processes while a row was timed (0 = quiet machine)."
    )

    def status(section: str) -> Optional[str]:
        res = results.get(section, {})
        if "error" in res:
            return f"\n### {section}\nERROR: {res['error']}"
        if "skipped" in res:
            return f"\n### {section}\nskipped: {res['skipped']}"
        return None

    s = status("fft")
    if s:
        out.append(s)
    elif "fft" in results:
        rows = results["fft"]["rows"]
        reps = [r["timing"]["ours"]["repeats"] for r in rows] or [0]
        out.append(f"\n### Centred FFT (ms; medians of {min(reps)}-{max(reps)} repeats)")
        out.append(
            markdown_table(
                [
                    "case",
                    "shape",
                    "op",
                    "ours",
                    "fastmri",
                    "floor",
                    "fastmri/ours",
                    "ours/floor",
                    "max abs diff",
                    "other load",
                ],
                [
                    [
                        r["case"],
                        "x".join(map(str, r["shape"])),
                        r["op"],
                        r["ours_ms"],
                        r["fastmri_ms"],
                        r["floor_ms"],
                        r["speedup_vs_fastmri"],
                        r["ours_over_floor"],
                        f"{r['max_abs_diff']:.1e}",
                        _load(r["foreign_load_cores"]),
                    ]
                    for r in rows
                ],
            )
        )
    s = status("degradation")
    if s:
        out.append(s)
    elif "degradation" in results:
        rows = results["degradation"]["rows"]
        out.append(
            f"\n### Degradation (slices/s; batch {rows[0]['batch'] if rows else '-'}, "
            f"HR {rows[0]['hr'][0] if rows else '-'}^2)"
        )
        out.append(
            markdown_table(
                [
                    "case",
                    "ours slices/s",
                    "fastmri ref slices/s",
                    "ours/ref",
                    "ours ms",
                    "own FFTs ms",
                    "degradation/own FFTs",
                    "max rel diff",
                    "other load",
                ],
                [
                    [
                        r["case"],
                        r["ours_slices_per_s"],
                        r["reference_slices_per_s"],
                        r["ours_over_reference"],
                        r["ours_ms"],
                        r["own_fft_ms"],
                        r["degradation_over_own_fft"],
                        f"{r['max_rel_diff']:.1e}",
                        _load(r["foreign_load_cores"]),
                    ]
                    for r in rows
                ],
            )
        )
    s = status("sense")
    if s:
        out.append(s)
    elif "sense" in results:
        sec = results["sense"]
        out.append(f"\n### Coil maps and data consistency (ms per slice; batch {sec['batch']})")
        out.append(
            markdown_table(
                ["case", "ours ms/slice", "reference", "reference ms/slice", "reference/ours", "other load"],
                [
                    [r["case"], r["ours_ms_per_slice"], r["reference"], r["reference_ms_per_slice"],
                     r["reference_over_ours"], _load(r["foreign_load_cores"])]
                    for r in sec["rows"]
                ],
            )
        )
    s = status("pipeline")
    if s:
        out.append(s)
    elif "pipeline" in results:
        sec = results["pipeline"]
        out.append(f"\n### Data pipeline, per data-loader worker (1 thread, files in the page cache; "
                   f"workers to feed {sec['feed_rate']} slices/s)")
        out.append(
            markdown_table(
                ["case", "format", "slices/s", "CPU ms/slice", "MB/slice (read per epoch)",
                 "x HDF5 speed", "x fewer bytes", "workers to feed", "prepare ms/slice"],
                [
                    [r["case"], r["format"], r["slices_per_s"], r["cpu_ms_per_slice"],
                     r["stored_bytes_per_slice"] / 1e6, r["speedup_vs_hdf5"], r["bytes_vs_hdf5"],
                     r["workers_to_feed"], r["prepare_ms_per_slice"]]
                    for r in sec["rows"]
                ],
            )
        )
        e2e = sec.get("end_to_end", {})
        if "skipped" in e2e:
            out.append(f"End to end: skipped ({e2e['skipped']}).")
        elif e2e:
            out.append(f"End to end ({e2e['model']}, {e2e['precision']}, batch {e2e['batch']}, {e2e['workers']} "
                       f"workers, {e2e['steps']} steps): shards -> device -> step "
                       f"{e2e['end_to_end_slices_per_s']:.1f} slices/s against {e2e['model_only_slices_per_s']:.1f} "
                       f"on a batch already on the device: {100 * e2e['e2e_over_model']:.0f} %.")
    s = status("model")
    if s:
        out.append(s)
    elif "model" in results:
        res = results["model"]
        out.append(f"\n### ICONet ({res['config']})")
        out.append(
            markdown_table(
                ["scale", "LR", "params", "GFLOPs fwd/slice", "GFLOPs fwd+bwd/slice", "counted on"],
                [
                    [
                        r["scale"],
                        f"{r['lr'][0]}x{r['lr'][1]}",
                        r["params"],
                        r["gflops_fwd_per_slice"],
                        r["gflops_fwd_bwd_per_slice"],
                        r["flops_counted_on"],
                    ]
                    for r in res["summary"]
                ],
            )
        )
        out.append("")
        out.append(
            markdown_table(
                [
                    "scale",
                    "batch",
                    "mode",
                    "variant",
                    "ms",
                    "slices/s",
                    "GFLOP/s",
                    "peak MiB (this variant)",
                    "peak MiB (all variants)",
                    "compile / first call s",
                    "other load",
                    "note",
                ],
                [
                    [
                        r["scale"],
                        r["batch"],
                        r["mode"],
                        r.get("variant", "-"),
                        r.get("ms"),
                        r.get("slices_per_s"),
                        r.get("gflop_per_s"),
                        r.get("peak_mib_over_start"),
                        r.get("peak_mib_over_start_all_variants"),
                        r.get("first_call_s"),
                        _load(r.get("foreign_load_cores")),
                        r.get("skipped") or r.get("error") or r.get("note"),
                    ]
                    for r in res["rows"]
                ],
            )
        )
    s = status("inference")
    if s:
        out.append(s)
    elif "inference" in results:
        res = results["inference"]
        out.append(
            f"\n### Inference, HDF5 -> saved reconstruction ({res.get('code_path', '-')}; "
            f"{res['data']}; writing it took {res['write_dataset_s']:.1f} s, not counted)"
        )
        if res.get("model_error"):
            out.append(f"model: {res['model_error']} (baseline zero_filled_bicubic instead)")
        table = []
        for r in res["rows"]:
            if "skipped" in r:
                table.append([r["scale"], "-", "-", "-", "-", "-", "-", "-", "-", r["skipped"]])
                continue
            br = r["breakdown_s_fastest_run"]
            table.append(
                [
                    r["scale"],
                    r["batch_size"],
                    r["per_volume_s"],
                    r["per_slice_ms"],
                    br.get("rest"),
                    br.get("degradation"),
                    br.get("model"),
                    br.get("save"),
                    _load(r["foreign_load_cores"]),
                    f"{r['runs']} run(s); {r.get('method', '-')}; saved {r['saved_shape']}"
                    + (f"; {r['note']}" if r.get("note") else ""),
                ]
            )
        out.append(
            markdown_table(
                [
                    "scale",
                    "batch",
                    "s/volume",
                    "ms/slice",
                    "setup+load+transform s",
                    "degradation s",
                    "model s",
                    "save s",
                    "other load",
                    "note",
                ],
                table,
            )
        )
    s = status("memory")
    if s:
        out.append(s)
    elif "memory" in results:
        res = results["memory"]
        kind = res["rows"][0]["kind"] if res["rows"] else ""
        out.append(f"\n### Peak memory (MiB over the start of each case; {kind})")
        out.append(
            markdown_table(
                ["case", "shape / batch", "peak over start", "peak (process)", "input"],
                [
                    [
                        r["case"],
                        r.get("shape") or r.get("batch"),
                        r.get("peak_over_start_mib"),
                        r.get("peak_mib"),
                        r.get("input_mib"),
                    ]
                    for r in res["rows"]
                    if "error" not in r
                ],
            )
        )
    peaks = {
        k: v.get("process_peak_rss_mib_after") for k, v in results.items() if isinstance(v, dict)
    }
    out.append(
        "\nProcess peak RSS (ru_maxrss, monotone) after each section, MiB: "
        + ", ".join(f"{k} {_fmt(v, 0)}" for k, v in peaks.items() if v is not None)
    )

    targets = results.get("targets", [])
    if targets:
        out.append("\n### Targets")
        out.append(
            markdown_table(
                ["target", "case", "value", "threshold", "met"],
                [
                    [
                        t["target"],
                        t["case"],
                        t["value"],
                        t["threshold"],
                        "n/a" if t["met"] is None else ("yes" if t["met"] else "NO"),
                    ]
                    for t in targets
                ],
            )
        )
    corr = results.get("correctness", [])
    if corr:
        worst = max(corr, key=lambda c: c["max_rel_diff"])
        out.append(
            f"\nCorrectness: {len(corr)} compared pairs; worst relative difference "
            f"{worst['max_rel_diff']:.2e} ({worst['section']} / {worst['case']} / "
            f"{worst['quantity']}, abs {worst['max_abs_diff']:.2e})."
        )
    text = "\n".join(out)
    print(text, flush=True)
    return text


def jsonable(value: Any) -> Any:
    """``value`` with dict keys as strings, tuples as lists, NaN/inf as None, others as str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
