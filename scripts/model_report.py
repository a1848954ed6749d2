"""Print a markdown table of model size and cost: parameters and GFLOPs per HR slice.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` for
one single-coil magnitude slice (batch 1, ``in_chans=1``) whose HR grid is
``--hr`` x ``--hr`` (default 320x320, the fastMRI crop), i.e. an LR input of
``(hr/s) x (hr/s)``. The counter reports 2 FLOPs per multiply-accumulate of
convolutions and matrix products; interpolation, FFTs and element-wise
operations are not counted (they are negligible next to the convolutions, and
the FFT-based sinc baseline therefore shows 0).

Usage::

    python scripts/model_report.py [--hr 320] [--scales 2 4]
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from iconet_fastmri.models import build_model

#: (row label, registry name, constructor arguments); defaults are the spec's / ours.
MODELS: List[Tuple[str, str, Dict[str, object]]] = [
    ("ICONet (C=64, N=4, RSCFL, adaptive)", "iconet", {}),
    ("Zero-filled + bicubic", "bicubic", {}),
    ("Zero-filled + sinc", "sinc", {}),
    ("U-Net SR (chans=32, pools=4)", "unet_sr", {}),
    ("T2Net-like (C=64, 8 blocks/branch)", "t2net_like", {}),
]


def count(model: nn.Module, lr_size: int) -> Tuple[int, float]:
    """Parameter count and GFLOPs of one forward pass on a ``(1, 1, lr, lr)`` input."""
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 1, lr_size, lr_size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return params, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hr", type=int, default=320, help="HR grid side (default 320)")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()

    torch.manual_seed(0)
    header = "| Model | " + " | ".join(
        f"x{s} params | x{s} GFLOPs" for s in args.scales
    ) + " |"
    print(f"Cost per {args.hr}x{args.hr} HR slice, single-coil magnitude input (batch 1).\n")
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.scales)))
    for label, name, kwargs in MODELS:
        cells = []
        for scale in args.scales:
            if args.hr % scale:
                raise SystemExit(f"--hr {args.hr} is not divisible by the scale {scale}")
            params, gflops = count(build_model(name, scale=scale, **kwargs), args.hr // scale)
            cells += [f"{params / 1e6:.3f} M", f"{gflops:.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
