#!/usr/bin/env python
"""Speed and memory of iconet_fastmri against the fastMRI reference, side by side in one run.

Sections (``--sections``, comma separated; default all):

``fft``
    :func:`iconet_fastmri.physics.fft.fft2c` / ``ifft2c`` (native complex64) against
    ``fastmri.fft2c`` / ``fastmri.ifft2c`` (real view ``(..., 2)``, roll-based
    shifts) and the floor, a plain unshifted ``torch.fft.fft2`` / ``ifft2`` of
    the same data. Ratios: fastmri / ours (speed-up) and ours / floor.
``degradation``
    Batched :class:`iconet_fastmri.physics.degradation.KSpaceDegradation` against a
    per-sample reference made of fastMRI's own transforms (``RandomMaskFunc``
    on the LR grid, ``fastmri.fft2c``, ``complex_center_crop``, scaling by
    1/s, ``apply_mask``, ``fastmri.ifft2c``, ``complex_abs`` + ``rss``), which
    produces the same outputs (HR target, LR clean and zero-filled RSS images,
    LR k-space and masked k-space, for x4 also the x2-grid stage target), and
    the module's own FFTs alone (``fft2`` of the HR batch + ``ifft2`` of the
    LR/intermediate batches). Reported in slices/s.
``model``
    ICONet forward and forward+backward in slices/s, parameter count, FLOPs per
    slice (``torch.utils.flop_counter.FlopCounterMode``). On CUDA also bf16
    autocast, ``torch.compile`` and ``checkpoint_blocks=True``.
``inference``
    End-to-end latency from a fastMRI HDF5 volume to the saved reconstruction
    (``IconetSliceDataset`` + ``IconetDataTransform`` + ``DataLoader`` ->
    ``KSpaceDegradation`` -> ICONet -> ``fastmri.save_reconstructions``),
    per volume and per slice.
``memory``
    Peak memory per case: ``torch.cuda.max_memory_allocated`` (reset between
    cases) on CUDA; on the CPU the peak resident set size, reset between
    cases through ``/proc/self/clear_refs`` (the kernel's per-process high-water
    mark ``VmHWM``), reported as the increase over the resident size before
    the case. Each section also records the process-wide ``ru_maxrss`` after
    it, which is monotone over the run.

Method: every comparison runs all sides in this process, alternately
(interleaved repeats, the order rotating every repeat), after warm-up calls;
fast comparisons get more repeats (about 1 s of timed rounds, at most 200);
times are medians (min / max recorded too) of ``time.perf_counter`` with
``torch.cuda.synchronize()`` before each clock read on CUDA. Every compared
pair is also checked numerically; the max abs / relative differences are in
the JSON (``correctness``).

Output: a JSON file (``--out``) and markdown tables on stdout. Every row
records the device (CPU model / GPU name), torch and CUDA versions and
``torch.get_num_threads()``.

Usage::

    python scripts/benchmark.py                       # full run, CUDA if present
    python scripts/benchmark.py --quick --device cpu  # small sizes, < 2 min on 2 cores
    python scripts/benchmark.py --sections fft,degradation --out fft.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SECTIONS = ("fft", "degradation", "model", "inference", "memory")

# --------------------------------------------------------------------------- profiles
# Sizes per mode. "full" are the fastMRI sizes; "quick" keeps every section under
# 2 minutes on a 2-core CPU; "tiny" (hidden flag, CI) runs in a few seconds per section.
PROFILES: Dict[str, Dict[str, Any]] = {
    "full": {
        "fft_cases": [
            ("single-coil", (1, 320, 320), False),
            ("multi-coil knee", (15, 640, 368), True),
            ("multi-coil brain", (16, 640, 320), True),
            ("single-coil, batch 8", (8, 1, 320, 320), False),
            ("multi-coil knee, batch 8", (8, 15, 640, 368), True),
            ("multi-coil brain, batch 8", (8, 16, 640, 320), True),
        ],
        "fft_repeats": 9,
        "deg_hr": 320,
        "deg_batch": 8,
        "deg_coils": [1, 15],
        "deg_scales": [2, 4],
        "deg_repeats": 7,
        "model_hr": 320,
        "model_scales": [2, 4],
        "model_batches": [1, 8],
        "model_width": 64,
        "model_blocks": 4,
        "model_repeats": 3,
        "inf_slices": 36,
        "inf_recon": 320,
        "inf_scales": [2, 4],
        "inf_batch": 8,
        "inf_repeats": 2,
        "mem_fft_case": (8, 15, 640, 368),
        "mem_deg": (8, 15, 320, 2),
        "mem_model_batches": [1, 8],
        "warmup": 1,
    },
    "quick": {
        "fft_cases": [
            ("single-coil", (1, 320, 320), False),
            ("multi-coil knee (1/2 size)", (15, 320, 184), True),
            ("multi-coil brain (1/2 size)", (16, 320, 160), True),
            ("single-coil, batch 8 (1/2 size)", (8, 1, 160, 160), False),
            ("multi-coil knee, batch 8 (1/4 size)", (8, 15, 160, 92), True),
            ("multi-coil brain, batch 8 (1/4 size)", (8, 16, 160, 80), True),
        ],
        "fft_repeats": 5,
        "deg_hr": 128,
        "deg_batch": 4,
        "deg_coils": [1, 15],
        "deg_scales": [2, 4],
        "deg_repeats": 5,
        "model_hr": 64,
        "model_scales": [2, 4],
        "model_batches": [1, 8],
        "model_width": 8,
        "model_blocks": 1,
        "model_repeats": 3,
        "inf_slices": 4,
        "inf_recon": 64,
        "inf_scales": [2],
        "inf_batch": 2,
        "inf_repeats": 2,
        "mem_fft_case": (8, 15, 160, 92),
        "mem_deg": (4, 15, 128, 2),
        "mem_model_batches": [1],
        "warmup": 1,
    },
    "tiny": {
        "fft_cases": [
            ("single-coil (tiny)", (1, 32, 32), False),
            ("multi-coil knee (tiny)", (4, 64, 46), True),
            ("multi-coil brain (tiny)", (4, 64, 32), True),
            ("multi-coil knee, batch 2 (tiny)", (2, 4, 32, 24), True),
            ("odd size (tiny, general path)", (2, 15, 21), False),
        ],
        "fft_repeats": 3,
        "deg_hr": 32,
        "deg_batch": 2,
        "deg_coils": [1, 4],
        "deg_scales": [2, 4],
        "deg_repeats": 3,
        "model_hr": 32,
        "model_scales": [2, 4],
        "model_batches": [1, 2],
        "model_width": 4,
        "model_blocks": 1,
        "model_repeats": 2,
        "inf_slices": 2,
        "inf_recon": 32,
        "inf_scales": [2],
        "inf_batch": 2,
        "inf_repeats": 1,
        "mem_fft_case": (2, 4, 32, 24),
        "mem_deg": (2, 4, 32, 2),
        "mem_model_batches": [1],
        "warmup": 1,
    },
}

#: Time budgets (seconds) of the model / inference sections on the CPU in full mode;
#: cases estimated to exceed what is left are run with fewer repeats or skipped (recorded).
CPU_FULL_BUDGET = {"model": 240.0, "inference": 160.0}
#: Fast comparisons are repeated until their timed rounds take about this long (capped).
MIN_TIMED_S = {"full": 1.0, "quick": 0.3, "tiny": 0.02}
MAX_REPEATS = 200
CPU_FULL_OVERRIDES = {"model_repeats": 2, "inf_repeats": 1}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
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


# --------------------------------------------------------------------------- helpers


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> Optional[List[float]]:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def _cpu_sample() -> Optional[Tuple[float, float, float]]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process, wall time)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def _foreign_load(
    start: Optional[Tuple[float, float, float]], min_window_s: float = 0.5
) -> Optional[float]:
    """CPU cores kept busy by other processes since ``start`` (a noise indicator).

    /proc/stat counts in clock ticks (10 ms), so a window shorter than
    ``min_window_s`` is extended by sleeping (then it also covers a moment after).
    """
    if start is not None:
        short = min_window_s - (time.monotonic() - start[2])
        if short > 0:
            time.sleep(short)
    end = _cpu_sample()
    if start is None or end is None or end[2] - start[2] <= 0:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def wait_for_quiet(
    max_wait_s: float, threshold: float = 0.25, window_s: float = 0.25
) -> Dict[str, Any]:
    """Wait (at most ``max_wait_s``) until other processes use less than ``threshold`` cores."""
    t0 = time.monotonic()
    load = None
    while True:
        start = _cpu_sample()
        time.sleep(window_s)
        load = _foreign_load(start)
        if load is None or load < threshold or time.monotonic() - t0 >= max_wait_s:
            break
    return {"waited_s": time.monotonic() - t0, "foreign_load_before": load}


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    # Linux reports KiB, macOS bytes.
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark VmHWM of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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


class Bench:
    """Shared state: torch modules, device, environment, timing and memory helpers."""

    def __init__(self, args: argparse.Namespace) -> None:
        import numpy as np
        import torch

        self.np = np
        self.torch = torch
        self.args = args
        self.mode = args.mode
        self.profile = dict(PROFILES[args.mode])
        if args.model_width is not None:
            self.profile["model_width"] = args.model_width
        if args.model_blocks is not None:
            self.profile["model_blocks"] = args.model_blocks
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda requested but CUDA is not available")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda = self.device.type == "cuda"
        if self.mode == "full" and not self.cuda:
            # The full-width model is slow on a few CPU cores: fewer repeats (plus the budgets).
            self.profile.update(CPU_FULL_OVERRIDES)
        self.warmup = args.warmup if args.warmup is not None else self.profile["warmup"]
        self.env = self._environment()
        self.row_env = {
            k: self.env[k] for k in ("device", "device_name", "torch", "cuda", "threads")
        }
        self.correctness: List[Dict[str, Any]] = []

    # ---------------------------------------------------------------- environment
    def _environment(self) -> Dict[str, Any]:
        torch = self.torch
        gpu = torch.cuda.get_device_name(self.device) if self.cuda else None
        cpu = _cpu_model()
        try:
            import fastmri

            fastmri_version = getattr(fastmri, "__version__", None)
            if fastmri_version is None:
                from importlib.metadata import version

                fastmri_version = version("fastmri")
        except Exception:  # pragma: no cover - fastmri is a dependency
            fastmri_version = None
        return {
            "device": str(self.device),
            "device_name": gpu if gpu else cpu,
            "cpu_model": cpu,
            "gpu_name": gpu,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": (
                torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            ),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": self.np.__version__,
            "fastmri": fastmri_version,
            "platform": platform.platform(),
            "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "mode": self.mode,
            "loadavg_at_start": _loadavg(),
        }

    def row(self, **fields: Any) -> Dict[str, Any]:
        out = dict(fields)
        out.update(self.row_env)
        return out

    # ---------------------------------------------------------------- timing
    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def compare(
        self,
        fns: Dict[str, Callable[[], Any]],
        repeats: int,
        warmup: Optional[int] = None,
    ) -> Dict[str, Dict[str, Any]]:
        """Time callables alternately: warm-up, then ``repeats`` rounds, order rotating."""
        warmup = self.warmup if warmup is None else warmup
        names = list(fns)
        round_s = 0.0
        for _ in range(warmup):
            t0 = time.perf_counter()
            for name in names:
                fns[name]()
                self.sync()
            round_s = time.perf_counter() - t0
        if round_s > 0:  # fast cases: more repeats, for at least MIN_TIMED_S of timed rounds
            wanted = math.ceil(MIN_TIMED_S[self.mode] / round_s)
            repeats = max(repeats, min(wanted, MAX_REPEATS))
        quiet = wait_for_quiet(self.args.wait_quiet) if self.args.wait_quiet else None
        sample = _cpu_sample()
        times: Dict[str, List[float]] = {name: [] for name in names}
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                self.sync()
                t0 = time.perf_counter()
                fns[name]()
                self.sync()
                times[name].append(time.perf_counter() - t0)
        load = _foreign_load(sample, 0.1 if self.mode == "tiny" else 0.5)
        out = {name: self.stats(v) for name, v in times.items()}
        for st in out.values():
            st["foreign_load_cores"] = load
            if quiet is not None:
                st["waited_for_quiet_s"] = quiet["waited_s"]
        return out

    @staticmethod
    def stats(values: List[float]) -> Dict[str, Any]:
        ms = [v * 1e3 for v in values]
        return {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "repeats": len(ms),
        }

    # ---------------------------------------------------------------- correctness
    def diff(self, section: str, case: str, quantity: str, ours: Any, ref: Any) -> Dict[str, float]:
        torch = self.torch
        a = ours.detach()
        b = ref.detach()
        if a.is_complex():
            a = torch.view_as_real(a)
        if b.is_complex():
            b = torch.view_as_real(b)
        a = a.to("cpu", torch.float64)
        b = b.to("cpu", torch.float64)
        if a.shape != b.shape:
            raise AssertionError(
                f"{section}/{case}/{quantity}: shape {tuple(a.shape)} != {tuple(b.shape)}"
            )
        max_abs = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(b.abs().max()) if b.numel() else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        entry = {
            "section": section,
            "case": case,
            "quantity": quantity,
            "max_abs_diff": max_abs,
            "ref_max_abs": scale,
            "max_rel_diff": rel,
        }
        self.correctness.append(entry)
        return {"max_abs_diff": max_abs, "max_rel_diff": rel}

    # ---------------------------------------------------------------- memory
    def available_mib(self) -> Optional[float]:
        """Free device memory (CUDA) or MemAvailable (CPU), MiB."""
        if self.cuda:
            free, _ = self.torch.cuda.mem_get_info(self.device)
            return free / 2**20
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    @contextlib.contextmanager
    def track_peak(self, into: Dict[str, Any]):
        """Record in ``into`` the peak memory over the start of the ``with`` body."""
        torch = self.torch
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield
            self.sync()
            into["peak_over_start_mib"] = (
                torch.cuda.max_memory_allocated(self.device) - base
            ) / 2**20
            return
        gc.collect()
        _malloc_trim()
        reset = _reset_hwm()
        base = _proc_status_kib("VmRSS")
        yield
        peak = _proc_status_kib("VmHWM") if reset else None
        if peak is not None and base is not None:
            into["peak_over_start_mib"] = (peak - base) / 1024.0

    def peak_memory(self, fn: Callable[[], Any]) -> Dict[str, Any]:
        """Peak memory of one call of ``fn`` (its result is dropped inside)."""
        torch = self.torch
        gc.collect()
        if self.cuda:
            self.sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            peak = torch.cuda.max_memory_allocated(self.device)
            return {
                "kind": "torch.cuda.max_memory_allocated",
                "peak_mib": peak / 2**20,
                "peak_over_start_mib": (peak - base) / 2**20,
                "start_mib": base / 2**20,
            }
        _malloc_trim()
        reset = _reset_hwm()
        base = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM") if reset else None
        out: Dict[str, Any] = {
            "kind": "VmHWM (reset per case) - VmRSS before",
            "start_mib": _mib(base),
        }
        if peak is None or base is None:
            out.update(
                kind="ru_maxrss (process-wide, monotone: VmHWM reset unavailable)",
                peak_mib=_ru_maxrss_mib(),
                peak_over_start_mib=None,
            )
        else:
            out.update(peak_mib=peak / 1024.0, peak_over_start_mib=(peak - base) / 1024.0)
        return out


def _mib(kib: Optional[int]) -> Optional[float]:
    return None if kib is None else kib / 1024.0


class Budget:
    """Wall-clock budget of a section (None: unlimited)."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.start)


# --------------------------------------------------------------------------- section: fft


def section_fft(b: Bench) -> Dict[str, Any]:
    torch = b.torch
    import fastmri

    from iconet_fastmri.physics.fft import fft2c, ifft2c

    repeats = b.args.repeats or b.profile["fft_repeats"]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for label, shape, multicoil in b.profile["fft_cases"]:
        x = torch.randn(*shape, dtype=torch.complex64, generator=gen).to(b.device)
        xr = torch.view_as_real(x)  # fastMRI's real view (a view, no copy)
        for op, ours_fn, ref_fn, floor_fn in (
            ("fft2c", fft2c, fastmri.fft2c, torch.fft.fft2),
            ("ifft2c", ifft2c, fastmri.ifft2c, torch.fft.ifft2),
        ):
            d = b.diff("fft", f"{label} {tuple(shape)}", op, ours_fn(x), ref_fn(xr))
            t = b.compare(
                {
                    "ours": lambda f=ours_fn: f(x),
                    "fastmri": lambda f=ref_fn: f(xr),
                    "floor": lambda f=floor_fn: f(x, norm="ortho"),
                },
                repeats,
            )
            ours, ref, floor = (t[k]["median_ms"] for k in ("ours", "fastmri", "floor"))
            rows.append(
                b.row(
                    case=label,
                    shape=list(shape),
                    op=op,
                    multicoil=multicoil,
                    ours_ms=ours,
                    fastmri_ms=ref,
                    floor_ms=floor,
                    speedup_vs_fastmri=ref / ours,
                    ours_over_floor=ours / floor,
                    fastmri_over_floor=ref / floor,
                    timing=t,
                    foreign_load_cores=t["ours"]["foreign_load_cores"],
                    loadavg=_loadavg(),
                    **d,
                )
            )
        del x, xr
    return {"rows": rows, "repeats": repeats, "warmup": b.warmup}


# --------------------------------------------------------------------------- section: degradation


def _fastmri_reference(fastmri, T, hr: Any, scale: int, mask_func: Any, seeds: Sequence[int]):
    """Per-sample degradation with fastMRI's transforms; lists of per-sample outputs."""
    torch = __import__("torch")
    H, W = hr.shape[-2:]
    h, w = H // scale, W // scale
    outs = []
    for i in range(hr.shape[0]):
        image = torch.view_as_real(hr[i])  # (C, H, W, 2)
        kspace = fastmri.fft2c(image)
        lr_kspace = T.complex_center_crop(kspace, (h, w)) / scale
        masked, _, _ = T.apply_mask(lr_kspace, mask_func, seed=seeds[i])
        lr_clean = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(lr_kspace)), dim=0)
        lr_input = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(masked)), dim=0)
        hr_target = fastmri.rss(fastmri.complex_abs(image), dim=0)
        stages = []
        g = scale // 2
        while g >= 2:  # intermediate stage targets (x4: the x2 grid)
            mid = T.complex_center_crop(kspace, (H // g, W // g)) / g
            stages.append(fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(mid)), dim=0))
            g //= 2
        outs.append((hr_target, lr_kspace, masked, lr_clean, lr_input, stages))
    return outs


class _OnDevice:
    """A fastMRI mask function whose masks live on ``device``.

    ``apply_mask`` multiplies on the data's device, so on CUDA the mask must be there too.
    """

    def __init__(self, mask_func: Any, device: Any) -> None:
        self.mask_func = mask_func
        self.device = device

    def __call__(self, shape: Sequence[int], offset: Optional[int] = None, seed: Any = None):
        mask, num_low = self.mask_func(shape, offset, seed)
        return mask.to(self.device), num_low


def _fastmri_masks(mask_func: Any, batch: int, lr: Tuple[int, int], seeds: Sequence[int]):
    torch = __import__("torch")
    masks = []
    for i in range(batch):
        m, _ = mask_func((1, lr[0], lr[1], 2), None, seeds[i])  # fastMRI shape: columns = dim -2
        masks.append(m.reshape(1, lr[1]).expand(*lr).to(torch.float32))
    return torch.stack(masks).unsqueeze(1)  # (B, 1, h, w) in our (rows, columns) layout


def section_degradation(b: Bench) -> Dict[str, Any]:
    torch = b.torch
    import fastmri
    from fastmri.data import transforms as T
    from fastmri.data.subsample import RandomMaskFunc

    from iconet_fastmri.physics.degradation import KSpaceDegradation

    p = b.profile
    repeats = b.args.repeats or p["deg_repeats"]
    B, Hr = p["deg_batch"], p["deg_hr"]
    gen = torch.Generator().manual_seed(1)
    rows = []
    for coils in p["deg_coils"]:
        x = torch.randn(B, coils, Hr, Hr, dtype=torch.complex64, generator=gen).to(b.device)
        for scale in p["deg_scales"]:
            lr = (Hr // scale, Hr // scale)
            mask_func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4], seed=0)
            seeds = list(range(100 * scale, 100 * scale + B))
            mask = _fastmri_masks(mask_func, B, lr, seeds).to(b.device)
            if b.cuda:
                mask_func = _OnDevice(mask_func, b.device)
            deg = KSpaceDegradation(scale)
            label = f"{coils}-coil x{scale}"

            ours = deg(x, mask)
            ref = _fastmri_reference(fastmri, T, x, scale, mask_func, seeds)
            diffs = {}
            stack = lambda k: torch.stack([r[k] for r in ref])  # noqa: E731
            diffs["hr_target"] = b.diff(
                "degradation", label, "hr_target", ours.hr_target[:, 0], stack(0)
            )
            diffs["lr_kspace"] = b.diff(
                "degradation",
                label,
                "lr_kspace",
                ours.lr_kspace,
                torch.view_as_complex(stack(1).contiguous()),
            )
            diffs["lr_observed"] = b.diff(
                "degradation",
                label,
                "lr_observed",
                ours.lr_observed,
                torch.view_as_complex(stack(2).contiguous()),
            )
            diffs["lr_clean"] = b.diff(
                "degradation", label, "lr_clean", ours.lr_clean[:, 0], stack(3)
            )
            diffs["lr_input"] = b.diff(
                "degradation", label, "lr_input", ours.lr_input[:, 0], stack(4)
            )
            for j in range(len(ref[0][5])):
                diffs[f"stage_target_{j}"] = b.diff(
                    "degradation",
                    label,
                    f"stage_target_{j}",
                    ours.stage_targets[j][:, 0],
                    torch.stack([r[5][j] for r in ref]),
                )
            del ours, ref

            grids = [(Hr // 2**k, Hr // 2**k) for k in range(int(math.log2(scale)), 0, -1)]
            lr_batches = [
                torch.empty(B, coils, *g, dtype=torch.complex64, device=b.device) for g in grids
            ]

            def own_ffts() -> None:
                torch.fft.fft2(x, norm="ortho")
                torch.fft.ifft2(lr_batches[0], norm="ortho")  # clean LR image
                torch.fft.ifft2(lr_batches[0], norm="ortho")  # zero-filled LR image
                for extra in lr_batches[1:]:  # intermediate stage target(s)
                    torch.fft.ifft2(extra, norm="ortho")

            t = b.compare(
                {
                    "ours": lambda: deg(x, mask),
                    "fastmri_reference": lambda: _fastmri_reference(
                        fastmri, T, x, scale, mask_func, seeds
                    ),
                    "own_ffts": own_ffts,
                },
                repeats,
            )
            ours_ms, ref_ms, fft_ms = (
                t[k]["median_ms"] for k in ("ours", "fastmri_reference", "own_ffts")
            )
            rows.append(
                b.row(
                    case=label,
                    coils=coils,
                    scale=scale,
                    batch=B,
                    hr=[Hr, Hr],
                    lr=list(lr),
                    ours_ms=ours_ms,
                    reference_ms=ref_ms,
                    own_fft_ms=fft_ms,
                    ours_slices_per_s=B / (ours_ms / 1e3),
                    reference_slices_per_s=B / (ref_ms / 1e3),
                    ours_over_reference=ref_ms / ours_ms,
                    degradation_over_own_fft=ours_ms / fft_ms,
                    timing=t,
                    foreign_load_cores=t["ours"]["foreign_load_cores"],
                    loadavg=_loadavg(),
                    max_abs_diff=max(v["max_abs_diff"] for v in diffs.values()),
                    max_rel_diff=max(v["max_rel_diff"] for v in diffs.values()),
                    diffs=diffs,
                )
            )
        del x
    return {
        "rows": rows,
        "repeats": repeats,
        "warmup": b.warmup,
        "notes": "reference: per sample, fastmri.fft2c -> complex_center_crop -> /s -> apply_mask "
        "(RandomMaskFunc(0.08, 4x) drawn on the LR grid, seeded) -> fastmri.ifft2c -> "
        "complex_abs + rss, "
        "plus the x2-grid stage target for x4; ours gets the same masks as a (B, 1, h, w) tensor. "
        "own_ffts: fft2 of the HR batch + ifft2 of the two LR batches (+ the x2 grid for x4), as "
        "single batched calls; on the CPU the module works in ~16 MiB chunks, which avoids the "
        "page faults of fresh full-batch FFT outputs, so degradation/own_ffts can be below 1.",
    }


# --------------------------------------------------------------------------- section: model


def _model_loss(out: Any) -> Any:
    loss = 0.0
    for t in list(out.sr_stages) + list(out.rec_stages):
        loss = loss + t.float().mean()
    return loss


def _count_flops(b: Bench, model: Any, x: Any, train: bool) -> Tuple[Optional[float], str]:
    """FLOPs of one call on ``x`` (fwd, or fwd+bwd), on the meta device when possible."""
    import copy

    torch = b.torch
    from torch.utils.flop_counter import FlopCounterMode

    def run(m: Any, inp: Any) -> float:
        m.train(train)
        with FlopCounterMode(display=False) as counter:
            if train:
                _model_loss(m(inp)).backward()
            else:
                with torch.no_grad():
                    m(inp)
        return float(counter.get_total_flops())

    try:
        meta = copy.deepcopy(model).to("meta")
        return run(meta, torch.empty(x.shape, device="meta", dtype=x.dtype)), "meta"
    except Exception:
        model.zero_grad(set_to_none=True)
        flops = run(model, x)
        model.zero_grad(set_to_none=True)
        return flops, str(x.device)


def section_model(b: Bench) -> Dict[str, Any]:
    torch = b.torch
    try:
        from iconet_fastmri.models import ICONet
    except Exception as err:  # the model may not have landed yet
        return {"error": f"from iconet_fastmri.models import ICONet failed: {err!r}"}

    p = b.profile
    repeats = b.args.repeats or p["model_repeats"]
    total = Budget(_budget(b, "model"))
    width, blocks, Hr = p["model_width"], p["model_blocks"], p["model_hr"]
    config = {"width": width, "blocks_per_stage": blocks, "in_chans": 1, "hr": [Hr, Hr]}
    rows: List[Dict[str, Any]] = []
    summary: List[Dict[str, Any]] = []
    scales = p["model_scales"]
    for index, scale in enumerate(scales):
        # Each scale gets an equal share of what is left of the section budget.
        budget = Budget(total.left() / (len(scales) - index) if total.seconds is not None else None)
        torch.manual_seed(0)
        model = ICONet(scale=scale, in_chans=1, width=width, blocks_per_stage=blocks).to(b.device)
        lr = Hr // scale
        params = sum(q.numel() for q in model.parameters())
        x1 = torch.rand(1, 1, lr, lr, device=b.device)
        fwd_flops, where = _count_flops(b, model, x1, train=False)
        train_flops, _ = _count_flops(b, model, x1, train=True)
        summary.append(
            b.row(
                scale=scale,
                lr=[lr, lr],
                params=params,
                gflops_fwd_per_slice=fwd_flops / 1e9 if fwd_flops is not None else None,
                gflops_fwd_bwd_per_slice=train_flops / 1e9 if train_flops is not None else None,
                flops_counted_on=where,
                **config,
            )
        )
        variants = _model_variants(b, model)
        per_slice_s: Dict[str, float] = {}
        per_slice_mib: Dict[str, float] = {}
        for batch in p["model_batches"]:
            x = torch.rand(batch, 1, lr, lr, device=b.device)
            for mode in ("forward", "forward+backward"):
                key = f"{scale}/{mode}"
                skip = _model_guard(b, budget, batch, per_slice_s.get(key), per_slice_mib.get(key))
                if skip:
                    rows.append(b.row(scale=scale, batch=batch, mode=mode, skipped=skip, **config))
                    continue
                fns = {}
                errors = {}
                for name, (m, autocast, ckpt, train_only) in variants.items():
                    if mode == "forward" and train_only:
                        continue
                    fns[name] = _model_step(b, m, x, mode, autocast, ckpt)
                # Time budget: estimated from the batch-1 time of this mode.
                estimate = per_slice_s.get(key, 0.0) * batch * len(fns)
                reps, warm = repeats, b.warmup
                note = None
                if estimate * (reps + warm) > budget.left():
                    reps, warm = 1, 0
                    note = "1 call without warm-up (time budget)"
                # Variants other than eager fp32 get one trial call first (torch.compile
                # compiles here; its time is recorded); a failing variant is recorded and left out.
                first_call_s = {}
                for name in [n for n in fns if n != "eager_fp32"]:
                    t0 = time.perf_counter()
                    try:
                        fns[name]()
                        b.sync()
                        first_call_s[name] = time.perf_counter() - t0
                    except Exception as err:
                        errors[name] = repr(err)
                        del fns[name]
                peak: Dict[str, Any] = {}
                try:
                    with b.track_peak(peak):
                        t = b.compare(fns, reps, warm) if fns else {}
                except Exception as err:
                    errors["compare"] = repr(err)
                    t = {}
                if batch == 1 and "eager_fp32" in t:
                    per_slice_s[key] = t["eager_fp32"]["median_ms"] / 1e3
                    if peak.get("peak_over_start_mib") is not None:
                        per_slice_mib[key] = peak["peak_over_start_mib"]
                for name, st in t.items():
                    ms = st["median_ms"]
                    sps = batch / (ms / 1e3)
                    flops = fwd_flops if mode == "forward" else train_flops
                    rows.append(
                        b.row(
                            scale=scale,
                            batch=batch,
                            mode=mode,
                            variant=name,
                            ms=ms,
                            slices_per_s=sps,
                            gflop_per_s=(flops * sps / 1e9) if flops else None,
                            timing=st,
                            foreign_load_cores=st["foreign_load_cores"],
                            first_call_s=first_call_s.get(name),
                            peak_mib_over_start_all_variants=peak.get("peak_over_start_mib"),
                            note=note,
                            loadavg=_loadavg(),
                            **config,
                        )
                    )
                if errors:
                    rows.append(b.row(scale=scale, batch=batch, mode=mode, error=errors, **config))
            del x
        del model, variants
    return {
        "summary": summary,
        "rows": rows,
        "repeats": repeats,
        "warmup": b.warmup,
        "config": config,
        "notes": "cases are skipped (recorded) when batch x the batch-1 peak memory exceeds 60% "
        "of the available memory, or batch x the batch-1 time exceeds what is left of the time "
        "budget",
    }


def _model_guard(
    b: Bench, budget: Budget, batch: int, slice_s: Optional[float], slice_mib: Optional[float]
) -> Optional[str]:
    """Why a model case must be skipped (memory or time estimated from batch 1), or None."""
    if batch > 1 and slice_mib is not None:
        available = b.available_mib()
        if available is not None and batch * slice_mib > 0.6 * available:
            return (
                f"estimated peak {batch * slice_mib / 1024:.1f} GiB (batch x batch-1 peak) > "
                f"60% of the {available / 1024:.1f} GiB available"
            )
    if slice_s is not None and batch * slice_s > budget.left():
        return (
            f"estimated {batch * slice_s:.0f} s > {max(budget.left(), 0):.0f} s left of the time "
            f"budget (--budget-s)"
        )
    if budget.left() <= 0:
        return "time budget (--budget-s) used up"
    return None


def _model_variants(b: Bench, model: Any) -> Dict[str, Tuple[Any, Any, bool, bool]]:
    """name -> (module, autocast dtype or None, checkpoint_blocks, fwd+bwd only)."""
    torch = b.torch
    variants: Dict[str, Tuple[Any, Any, bool, bool]] = {"eager_fp32": (model, None, False, False)}
    if b.cuda:
        variants["eager_bf16_autocast"] = (model, torch.bfloat16, False, False)
        variants["checkpoint_blocks"] = (model, None, True, True)
        try:
            variants["torch_compile"] = (torch.compile(model, dynamic=False), None, False, False)
        except Exception:  # recorded by the failing call instead
            pass
    return variants


def _model_step(
    b: Bench, model: Any, x: Any, mode: str, autocast: Any, ckpt: bool
) -> Callable[[], Any]:
    torch = b.torch
    base = getattr(model, "_orig_mod", model)

    def step() -> None:
        base.checkpoint_blocks = ckpt
        ctx = (
            torch.autocast(device_type=b.device.type, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        if mode == "forward":
            base.eval()
            with torch.no_grad(), ctx:
                model(x)
        else:
            base.train()
            base.zero_grad(set_to_none=True)
            with ctx:
                loss = _model_loss(model(x))
            loss.backward()
        base.checkpoint_blocks = False

    return step


# --------------------------------------------------------------------------- section: inference


def section_inference(b: Bench) -> Dict[str, Any]:
    torch = b.torch
    np = b.np
    import fastmri
    import h5py
    from torch.utils.data import DataLoader

    from iconet_fastmri.data.dataset import IconetSliceDataset
    from iconet_fastmri.data.synthetic import write_fastmri_dataset
    from iconet_fastmri.data.transforms import IconetDataTransform
    from iconet_fastmri.physics.degradation import KSpaceDegradation
    from iconet_fastmri.physics.masks import create_mask

    p = b.profile
    S, R = p["inf_slices"], p["inf_recon"]
    repeats = b.args.repeats or p["inf_repeats"]
    budget = Budget(_budget(b, "inference"))
    try:
        from iconet_fastmri.models import ICONet

        model_error = None
    except Exception as err:
        ICONet, model_error = None, f"from iconet_fastmri.models import ICONet failed: {err!r}"

    tmp = Path(tempfile.mkdtemp(prefix="iconet_bench_"))
    rows: List[Dict[str, Any]] = []
    try:
        data_dir = tmp / "data"
        t0 = time.perf_counter()
        write_fastmri_dataset(data_dir, "singlecoil", num_volumes=1, slices=S, recon_size=(R, R))
        write_s = time.perf_counter() - t0
        for scale in p["inf_scales"]:
            model = None
            if ICONet is not None:
                torch.manual_seed(0)
                model = (
                    ICONet(
                        scale=scale,
                        in_chans=1,
                        width=p["model_width"],
                        blocks_per_stage=p["model_blocks"],
                    )
                    .to(b.device)
                    .eval()
                )
            mask_func = create_mask("random", center_fractions=[0.08], accelerations=[4])
            deg = KSpaceDegradation(scale)
            out_dir = tmp / f"recon_x{scale}"

            def pipeline() -> Dict[str, float]:
                times = {
                    "dataset_init": 0.0,
                    "load_transform": 0.0,
                    "degradation": 0.0,
                    "model": 0.0,
                    "to_host": 0.0,
                    "save": 0.0,
                }
                t = time.perf_counter()
                transform = IconetDataTransform(scale, mask_func, hr_crop=(R, R), use_seed=True)
                dataset = IconetSliceDataset(
                    data_dir, "singlecoil", transform=transform, use_dataset_cache=False
                )
                loader = DataLoader(
                    dataset, batch_size=p["inf_batch"], shuffle=False, num_workers=0
                )
                times["dataset_init"] = time.perf_counter() - t
                slices: Dict[str, List[Tuple[int, Any]]] = {}
                with torch.inference_mode():
                    it = iter(loader)
                    while True:
                        t = time.perf_counter()
                        try:
                            batch = next(it)
                        except StopIteration:
                            times["load_transform"] += time.perf_counter() - t
                            break
                        hr = batch.hr_images.to(b.device, non_blocking=True)
                        mask = batch.mask.to(b.device, non_blocking=True)
                        b.sync()
                        t1 = time.perf_counter()
                        times["load_transform"] += t1 - t
                        d = deg(hr, mask)
                        b.sync()
                        t2 = time.perf_counter()
                        times["degradation"] += t2 - t1
                        recon = model(d.lr_input).sr if model is not None else d.lr_input
                        b.sync()
                        t3 = time.perf_counter()
                        times["model"] += t3 - t2
                        recon = recon[:, 0].float().cpu().numpy()
                        for i, (fname, num) in enumerate(zip(batch.fname, batch.slice_num)):
                            slices.setdefault(fname, []).append((int(num), recon[i]))
                        times["to_host"] += time.perf_counter() - t3
                t = time.perf_counter()
                volumes = {
                    f: np.stack([s for _, s in sorted(v, key=lambda e: e[0])])
                    for f, v in slices.items()
                }
                fastmri.save_reconstructions(volumes, out_dir)
                times["save"] = time.perf_counter() - t
                times["total"] = sum(times.values())
                return times

            # Warm-up: one batch through degradation + model (not the whole volume).
            t = time.perf_counter()
            with torch.inference_mode():
                hr = torch.zeros(p["inf_batch"], 1, R, R, dtype=torch.complex64, device=b.device)
                hr[..., R // 2, R // 2] = 1
                mask = torch.ones(p["inf_batch"], 1, R // scale, R // scale, device=b.device)
                d = deg(hr, mask)
                if model is not None:
                    model(d.lr_input)
                b.sync()
            warm_s = time.perf_counter() - t
            estimate = warm_s * S / p["inf_batch"] * 1.3
            runs = []
            note = None
            if b.args.wait_quiet:
                wait_for_quiet(b.args.wait_quiet)
            sample = _cpu_sample()
            for r in range(repeats):
                if r > 0 and estimate > budget.left():
                    note = f"stopped after {r} run(s): the next would exceed the section budget"
                    break
                if r == 0 and estimate > budget.left() + (budget.seconds or 0) * 0.5:
                    note = (
                        f"skipped: estimated {estimate:.0f} s per volume exceeds the section budget"
                    )
                    break
                runs.append(pipeline())
            if not runs:
                rows.append(b.row(scale=scale, skipped=note, slices=S, recon=[R, R]))
                continue
            saved = out_dir / "file_demo_000.h5"
            with h5py.File(saved, "r") as hf:
                saved_shape = list(hf["reconstruction"].shape)
            totals = [run["total"] for run in runs]
            median = statistics.median(totals)
            best = runs[totals.index(min(totals))]
            rows.append(
                b.row(
                    scale=scale,
                    slices=S,
                    recon=[R, R],
                    batch_size=p["inf_batch"],
                    model=(
                        f"ICONet(width={p['model_width']}, blocks_per_stage={p['model_blocks']})"
                        if model is not None
                        else None
                    ),
                    model_error=model_error,
                    per_volume_s=median,
                    per_slice_ms=median / S * 1e3,
                    runs=len(runs),
                    breakdown_s_fastest_run=best,
                    all_totals_s=totals,
                    saved_shape=saved_shape,
                    saved_ok=saved_shape == [S, R, R],
                    foreign_load_cores=_foreign_load(sample),
                    note=note,
                    loadavg=_loadavg(),
                )
            )
            del model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rows": rows,
        "write_dataset_s": write_s,
        "data": f"1 singlecoil volume, {S} slices, recon {R}x{R}",
        "model_error": model_error,
    }


def _budget(b: Bench, section: str) -> Optional[float]:
    if b.args.budget_s is not None:
        return b.args.budget_s
    if b.mode == "full" and not b.cuda:
        return CPU_FULL_BUDGET[section]
    return None


# --------------------------------------------------------------------------- section: memory


def section_memory(b: Bench) -> Dict[str, Any]:
    torch = b.torch
    import fastmri
    from fastmri.data import transforms as T
    from fastmri.data.subsample import RandomMaskFunc

    from iconet_fastmri.physics.degradation import KSpaceDegradation
    from iconet_fastmri.physics.fft import fft2c

    p = b.profile
    rows: List[Dict[str, Any]] = []

    def measure(label: str, fn: Callable[[], Any], **info: Any) -> None:
        fn()  # warm-up: caches (sign patterns, FFT plans, kernels) are not counted
        b.sync()
        m = b.peak_memory(fn)
        rows.append(b.row(case=label, **info, **m))

    shape = p["mem_fft_case"]
    x = torch.randn(*shape, dtype=torch.complex64).to(b.device)
    xr = torch.view_as_real(x)
    size_mib = x.numel() * 8 / 2**20
    measure("fft2c ours", lambda: fft2c(x), shape=list(shape), input_mib=size_mib)
    measure("fft2c fastmri", lambda: fastmri.fft2c(xr), shape=list(shape), input_mib=size_mib)
    measure(
        "fft2 floor", lambda: torch.fft.fft2(x, norm="ortho"), shape=list(shape), input_mib=size_mib
    )
    del x, xr

    B, C, Hr, scale = p["mem_deg"]
    x = torch.randn(B, C, Hr, Hr, dtype=torch.complex64).to(b.device)
    lr = (Hr // scale, Hr // scale)
    mask_func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4], seed=0)
    seeds = list(range(B))
    mask = _fastmri_masks(mask_func, B, lr, seeds).to(b.device)
    if b.cuda:
        mask_func = _OnDevice(mask_func, b.device)
    deg = KSpaceDegradation(scale)
    info = {"shape": [B, C, Hr, Hr], "scale": scale, "input_mib": x.numel() * 8 / 2**20}
    measure("degradation ours (batched)", lambda: deg(x, mask), **info)
    measure(
        "degradation fastmri reference (per sample)",
        lambda: _fastmri_reference(fastmri, T, x, scale, mask_func, seeds),
        **info,
    )
    del x

    try:
        from iconet_fastmri.models import ICONet
    except Exception as err:
        rows.append(
            b.row(case="model", error=f"from iconet_fastmri.models import ICONet failed: {err!r}")
        )
        return {"rows": rows}
    torch.manual_seed(0)
    model = ICONet(
        scale=2, in_chans=1, width=p["model_width"], blocks_per_stage=p["model_blocks"]
    ).to(b.device)
    lr_side = p["model_hr"] // 2
    variants = _model_variants(b, model)
    variants.pop("torch_compile", None)  # compile-time memory is not the steady state
    batches = (
        p["mem_model_batches"] if (b.cuda or b.mode != "full") else [1]
    )  # 2-core CPU: batch 1 only
    for batch in batches:
        xin = torch.rand(batch, 1, lr_side, lr_side, device=b.device)
        for mode in ("forward", "forward+backward"):
            for name, (m, autocast, ckpt, train_only) in variants.items():
                if mode == "forward" and train_only:
                    continue
                measure(
                    f"ICONet x2 {mode} {name}",
                    _model_step(b, m, xin, mode, autocast, ckpt),
                    batch=batch,
                    lr=[lr_side, lr_side],
                    width=p["model_width"],
                    blocks_per_stage=p["model_blocks"],
                )
        model.zero_grad(set_to_none=True)
    return {
        "rows": rows,
        "notes": "CPU: peak RSS of the case (VmHWM reset via /proc/self/clear_refs) minus the "
        "RSS before it, after malloc_trim; it includes the outputs the case allocates and not "
        "the inputs. "
        "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats.",
    }


SECTION_FUNCS = {
    "fft": section_fft,
    "degradation": section_degradation,
    "model": section_model,
    "inference": section_inference,
    "memory": section_memory,
}


# --------------------------------------------------------------------------- targets + tables


def evaluate_targets(b: Bench, results: Dict[str, Any]) -> List[Dict[str, Any]]:
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
    for t in targets:
        t.update(b.row_env)
    return targets


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
                    "peak MiB",
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
                        r.get("peak_mib_over_start_all_variants"),
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
            f"\n### Inference, HDF5 -> saved reconstruction ({res['data']}; writing it took "
            f"{res['write_dataset_s']:.1f} s, not counted)"
        )
        if res.get("model_error"):
            out.append(f"model: {res['model_error']} (degradation + zero-filled only)")
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
                    br["load_transform"],
                    br["degradation"],
                    br["model"],
                    br["save"],
                    _load(r["foreign_load_cores"]),
                    f"{r['runs']} run(s); saved {r['saved_shape']}"
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
                    "load+transform s",
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
        f"\nProcess peak RSS (ru_maxrss, monotone) after each section, MiB: "
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
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
        res["process_peak_rss_mib_after"] = _ru_maxrss_mib()
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
    out.write_text(json.dumps(_jsonable(results), indent=2))
    print(f"\n[benchmark] wrote {out} ({results['total_seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
