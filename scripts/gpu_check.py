#!/usr/bin/env python
"""CUDA against the CPU, bf16 + compile against fp32 eager, and the full benchmark (see
iconet_fastmri/benchmarks/gpu_check.py).

    python scripts/gpu_check.py --out gpu_check/            # on a CUDA machine, ~5 min
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/gpu_check   # CPU-vs-CPU path (CI)
"""

import sys

from iconet_fastmri.benchmarks.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
