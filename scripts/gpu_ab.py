#!/usr/bin/env python
"""GPU A/B of the choices the first GPU run questioned (one short run; JSON to --out).

The first ``scripts/gpu_check.py`` run on an H200 found the centred FFT at 3.6x
the unshifted floor for one 15-coil slice, the degradation at 3.6x its own FFTs
at batch 8, and bf16 + compile at 1.57x eager fp32. This script measures, on
the same inputs, the alternatives behind those figures:

* ``fft``: our ``fft2c`` against the two-modulation form (multiply, FFT, multiply
  in place; three kernels), ``fftshift(fft2(ifftshift(x)))`` and the unshifted floor;
* ``degradation``: ours against its own FFTs at batch 8 and 64, each timed per
  call (synchronised, as the benchmark does) and pipelined (20 calls, one
  synchronisation: what a training loop sees), plus a CUDA-graph replay of the
  batch-8 call (what removing the kernel-launch cost would give);
* ``model``: ICONet x2 (width 64, 4 blocks, LR 160², batch 8) forward+backward in
  eager fp32 (cuDNN TF32, PyTorch's default), eager bf16, eager bf16 in
  ``channels_last`` with ``cudnn.benchmark``, and ``torch.compile`` + bf16 in
  ``channels_last``; each with its own peak memory.

    python scripts/gpu_ab.py --out gpu_ab.json            # CUDA, ~3 min
    python scripts/gpu_ab.py --device cpu --tiny --out /tmp/ab.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from iconet_fastmri.benchmarks.cli import parse_args
from iconet_fastmri.benchmarks.harness import Bench
from iconet_fastmri.benchmarks.model import _model_loss
from iconet_fastmri.models import ICONet
from iconet_fastmri.physics.degradation import KSpaceDegradation
from iconet_fastmri.physics.fft import _interleaved, _modulate, fft2c


def two_modulations(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    y = torch.fft.fft2(_modulate(x, _interleaved(h, w, x.device, torch.float32, False)), norm="ortho")
    torch.view_as_real(y).mul_(_interleaved(h, w, x.device, torch.float32, True))
    return y


def shifts(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def pipelined_ms(b: Bench, fn, calls: int = 20) -> float:
    fn()
    b.sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    b.sync()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("gpu_ab.json"))
    ap.add_argument("--skip_compile", action="store_true")
    ap.add_argument("--parts", default="fft,degradation,model", help="comma-separated subset")
    args = ap.parse_args()
    b = Bench(parse_args(["--device", args.device, "--quick"]))
    dev = b.device
    report = {"env": b.env, "fft": [], "degradation": [], "model": []}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1, default=str))

    parts = args.parts.split(",")
    g = torch.Generator().manual_seed(0)
    fft_cases = [(1, 32, 32), (2, 4, 32, 24)] if args.tiny else [
        (1, 320, 320), (15, 640, 368), (8, 1, 320, 320), (8, 15, 640, 368)]
    for shape in fft_cases if "fft" in parts else []:
        x = torch.randn(*shape, dtype=torch.complex64, generator=g).to(dev)
        ref = fft2c(x)
        for name, fn in (("two_modulations", two_modulations), ("shifts", shifts)):
            assert torch.allclose(fn(x), ref, atol=1e-5, rtol=1e-4), name
        fns = {"ours": lambda: fft2c(x), "two_modulations": lambda: two_modulations(x),
               "shifts": lambda: shifts(x), "floor": lambda: torch.fft.fft2(x, norm="ortho")}
        t = b.compare(fns, 20)
        row = {"shape": list(shape), **{f"{k}_ms": v["median_ms"] for k, v in t.items()}}
        row.update({f"{k}_pipelined_ms": pipelined_ms(b, f) for k, f in fns.items()})
        report["fft"].append(row)
        print("fft", row, flush=True)
    save()

    hr = 32 if args.tiny else 320
    for coils in (1, 15) if "degradation" in parts else []:
        for batch in (8, 64):
            x = torch.randn(batch, coils, hr, hr, dtype=torch.complex64, generator=g).to(dev)
            mask = (torch.rand(batch, 1, hr // 2, hr // 2, generator=g) > 0.5).float().to(dev)
            deg = KSpaceDegradation(2)
            lr_batch = torch.empty(batch, coils, hr // 2, hr // 2, dtype=torch.complex64, device=dev)

            def own_ffts() -> None:
                torch.fft.fft2(x, norm="ortho")
                torch.fft.ifft2(lr_batch, norm="ortho")
                torch.fft.ifft2(lr_batch, norm="ortho")

            fns = {"ours": lambda: deg(x, mask), "own_ffts": own_ffts}
            t = b.compare(fns, 10)
            row = {"coils": coils, "batch": batch, **{f"{k}_ms": v["median_ms"] for k, v in t.items()}}
            row.update({f"{k}_pipelined_ms": pipelined_ms(b, f) for k, f in fns.items()})
            if b.cuda and batch == 8:
                try:
                    static_x, static_mask = x.clone(), mask.clone()
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            deg(static_x, static_mask)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = deg(static_x, static_mask)
                    graph.replay()
                    b.sync()
                    row["graph_matches"] = bool(torch.allclose(static_out.lr_input, deg(x, mask).lr_input))
                    row["graph_replay_ms"] = b.compare({"replay": graph.replay}, 20)["replay"]["median_ms"]
                except Exception as err:  # recorded
                    row["graph_error"] = repr(err)
            report["degradation"].append(row)
            print("degradation", row, flush=True)
            del x, lr_batch
    save()

    if "model" not in parts:
        return 0
    torch.manual_seed(0)
    width, blocks, lr, batch = (8, 1, 16, 2) if args.tiny else (64, 4, 160, 8)
    model = ICONet(scale=2, width=width, blocks_per_stage=blocks).to(dev).train()
    x = torch.rand(batch, 1, lr, lr, device=dev)

    def step(m, inp, dtype):
        def run() -> None:
            m.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, dtype=dtype, enabled=dtype is not None):
                loss = _model_loss(m(inp))
            loss.backward()
        return run

    variants = {"eager_fp32_tf32": step(model, x, None), "eager_bf16": step(model, x, torch.bfloat16)}
    if b.cuda:
        cl_model = ICONet(scale=2, width=width, blocks_per_stage=blocks).to(dev).train()
        cl_model = cl_model.to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        variants["eager_bf16_channels_last"] = step(cl_model, cl_x, torch.bfloat16)
        if not args.skip_compile:
            variants["compile_bf16_channels_last"] = step(torch.compile(cl_model), cl_x, torch.bfloat16)
    for name, fn in variants.items():
        torch.backends.cudnn.benchmark = "channels_last" in name
        row = {"variant": name, "batch": batch, "lr": lr}
        try:
            t0 = time.perf_counter()
            fn()
            b.sync()
            row["first_call_s"] = time.perf_counter() - t0
            row["ms"] = b.compare({name: fn}, 10)[name]["median_ms"]
            row["slices_per_s"] = batch / (row["ms"] / 1e3)
            row["peak_mib"] = b.peak_memory(fn)["peak_over_start_mib"]
        except Exception as err:
            row["error"] = repr(err)[:2000]
        report["model"].append(row)
        print("model", row, flush=True)
        save()
    torch.backends.cudnn.benchmark = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
