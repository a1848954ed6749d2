"""Timing, memory and machine-load harness shared by the benchmark sections.

:class:`Bench` times callables alternately (interleaved repeats after warm-up,
medians of ``time.perf_counter`` with ``torch.cuda.synchronize`` on CUDA),
checks compared outputs numerically and measures peak memory; :class:`Budget`
and :data:`PROFILES` set the sizes and time limits of each mode.

Nothing here imports torch at import time (``--thp`` must be set first):
:class:`Bench` imports it when it is created and hands it to the sections as
``b.torch``.

The module is long because timing on noisy shared machines needs its
bookkeeping in one place: interleaved repeats, the load of other processes,
peak memory on both devices, numerical comparison and the per-mode budgets.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..machine_load import cpu_sample, foreign_load  # noqa: F401  (re-exported for the sections)

# ----------------------------------------------------------------------------- profiles
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
        "sense_batch": 8,
        "sense_lr": 160,
        "sense_coils": [1, 15],
        "pipe_cases": [("knee multi-coil", 15, (640, 368), 320), ("brain multi-coil", 16, (640, 320), 320)],
        "pipe_volumes": 2,
        "pipe_slices": 4,
        "pipe_e2e_batch": 8,
        "pipe_e2e_workers": 8,
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
        "sense_batch": 4,
        "sense_lr": 64,
        "sense_coils": [1, 15],
        "pipe_cases": [("knee multi-coil", 15, (640, 368), 320)],
        "pipe_volumes": 1,
        "pipe_slices": 3,
        "pipe_e2e_batch": 2,
        "pipe_e2e_workers": 2,
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
        "sense_batch": 2,
        "sense_lr": 16,
        "sense_coils": [1, 4],
        "pipe_cases": [("knee multi-coil (tiny)", 4, (64, 46), 32)],
        "pipe_volumes": 1,
        "pipe_slices": 4,
        "pipe_e2e_batch": 2,
        "pipe_e2e_workers": 1,
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


# ----------------------------------------------------------------------------- machine state


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> Optional[List[float]]:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def wait_for_quiet(
    max_wait_s: float, threshold: float = 0.25, window_s: float = 0.25
) -> Dict[str, Any]:
    """Wait (at most ``max_wait_s``) until other processes use less than ``threshold`` cores."""
    t0 = time.monotonic()
    load = None
    while True:
        start = cpu_sample()
        time.sleep(window_s)
        load = foreign_load(start)
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


def ru_maxrss_mib() -> float:
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
            "loadavg_at_start": loadavg(),
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
        """Time callables alternately: warm-up, then ``repeats`` rounds, order rotating.

        Fast cases get more rounds: enough for about ``MIN_TIMED_S[mode]`` of timed
        rounds, at most :data:`MAX_REPEATS`. Returns per-callable median/min/max ms.
        """
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
        sample = cpu_sample()
        times: Dict[str, List[float]] = {name: [] for name in names}
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                self.sync()
                t0 = time.perf_counter()
                fns[name]()
                self.sync()
                times[name].append(time.perf_counter() - t0)
        load = foreign_load(sample, 0.1 if self.mode == "tiny" else 0.5)
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
                peak_mib=ru_maxrss_mib(),
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


def section_budget(b: Bench, section: str) -> Optional[float]:
    """Time budget (s): ``--budget-s``, else :data:`CPU_FULL_BUDGET` on a CPU in full mode."""
    if b.args.budget_s is not None:
        return b.args.budget_s
    if b.mode == "full" and not b.cuda:
        return CPU_FULL_BUDGET[section]
    return None
