#!/usr/bin/env python
"""Speed and memory of iconet_fastmri against the fastMRI reference, side by side in one run.

Sections (``--sections``, comma separated; default all): ``fft``,
``degradation``, ``model``, ``inference``, ``memory``; the code and what each
measures are in :mod:`iconet_fastmri.benchmarks`.

Output: a JSON file (``--out``) and markdown tables on stdout. Every row
records the device (CPU model / GPU name), torch and CUDA versions and
``torch.get_num_threads()``.

Usage::

    python scripts/benchmark.py                       # full run, CUDA if present
    python scripts/benchmark.py --quick --device cpu  # small sizes, < 2 min on 2 cores
    python scripts/benchmark.py --sections fft,degradation --out fft.json
"""

import sys

from iconet_fastmri.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
