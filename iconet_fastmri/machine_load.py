"""How busy the machine is, and how many torch CPU threads that leaves us.

Read from ``/proc/stat`` (Linux); elsewhere the functions return ``None`` and
callers treat the machine as quiet. Used by the CLI and
:class:`~iconet_fastmri.callbacks.CpuThreads` to size torch's threads, and by
the benchmark harness to record how busy the machine was during each timing.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Tuple

__all__ = ["cpu_sample", "foreign_load", "available_cores", "threads_for"]


def cpu_sample() -> Optional[Tuple[float, float, float]]:
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


def foreign_load(
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
    end = cpu_sample()
    if start is None or end is None or end[2] - start[2] <= 0:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for(cores: int, workers: int, busy: float) -> int:
    """torch threads that leave a core to each data-loader worker and to each core other processes keep busy.

    Measured on the 2-core machine, 2 demo epochs with one other process spinning:
    2 threads 93 s, 1 thread 41 s (quiet, 2 threads: 24-26 s). OpenMP threads that
    share a core with another process wait for each other at every parallel region.
    """
    return max(1, cores - workers - int(round(busy)))
