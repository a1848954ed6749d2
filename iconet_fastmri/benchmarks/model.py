"""Model sections: ICONet speed (slices/s, FLOPs per slice) and the peak memory of each case.

``model`` times ICONet forward and forward+backward (on CUDA also bf16
autocast, ``torch.compile`` under bf16 autocast in ``channels_last`` with
``cudnn.benchmark``, and ``checkpoint_blocks``, each with its own peak memory); ``memory`` records the peak memory of our FFT and
degradation against fastMRI's and of the model steps.

On CUDA the compiled variant is the one people train with (``--trainer.precision
bf16-mixed --model.compile true``); an fp32 compile is not timed (each compiled
case costs a compile of its own, and the GPU check has minutes, not hours).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .harness import Bench, Budget, loadavg, section_budget
from .kspace import OnDevice, fastmri_masks, fastmri_reference

# ----------------------------------------------------------------------------- model


def _model_loss(out: Any) -> Any:
    loss = 0.0
    for t in list(out.sr_stages) + list(out.rec_stages):
        loss = loss + t.float().mean()
    return loss


def _count_flops(b: Bench, model: Any, x: Any, train: bool) -> Tuple[Optional[float], str]:
    """FLOPs of one call on ``x`` (fwd, or fwd+bwd), on the meta device when possible."""
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
    """ICONet forward and forward+backward per scale and batch: slices/s, FLOPs, peak memory."""
    torch = b.torch
    try:
        from iconet_fastmri.models import ICONet
    except Exception as err:  # the model may not have landed yet
        return {"error": f"from iconet_fastmri.models import ICONet failed: {err!r}"}

    p = b.profile
    repeats = b.args.repeats or p["model_repeats"]
    total = Budget(section_budget(b, "model"))
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
                # On CUDA each variant's own peak (one more call each; cheap there).
                own_peak: Dict[str, Any] = {}
                if b.cuda:
                    for name in t:
                        try:
                            own_peak[name] = b.peak_memory(fns[name])["peak_over_start_mib"]
                        except Exception as err:
                            errors[f"{name} peak memory"] = repr(err)
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
                            peak_mib_over_start=own_peak.get(name),
                            note=note,
                            loadavg=loadavg(),
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
            # The layout and settings people train with: --model.channels_last true
            # --trainer.benchmark true --trainer.precision bf16-mixed --model.compile true.
            nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
            nhwc._bench_channels_last = True
            compiled = torch.compile(nhwc, dynamic=False)
            variants["compile_bf16_channels_last"] = (compiled, torch.bfloat16, False, False)
        except Exception:  # recorded by the failing call instead
            pass
    return variants


def _model_step(
    b: Bench, model: Any, x: Any, mode: str, autocast: Any, ckpt: bool
) -> Callable[[], Any]:
    torch = b.torch
    base = getattr(model, "_orig_mod", model)
    nhwc = getattr(base, "_bench_channels_last", False)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        torch.backends.cudnn.benchmark = nhwc
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
        torch.backends.cudnn.benchmark = False

    return step


# ----------------------------------------------------------------------------- memory


def section_memory(b: Bench) -> Dict[str, Any]:
    """Peak memory of one call per case (FFT, degradation, model steps), ours next to fastMRI's.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset between cases). CPU: the
    peak resident set size, reset between cases through ``/proc/self/clear_refs``
    (the kernel's per-process high-water mark ``VmHWM``), reported as the
    increase over the resident size before the case.
    """
    rows: List[Dict[str, Any]] = []
    _memory_fft(b, rows)
    _memory_degradation(b, rows)
    _memory_model(b, rows)
    return {
        "rows": rows,
        "notes": "CPU: peak RSS of the case (VmHWM reset via /proc/self/clear_refs) minus the "
        "RSS before it, after malloc_trim; it includes the outputs the case allocates and not "
        "the inputs. "
        "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats.",
    }


def _measure(
    b: Bench, rows: List[Dict[str, Any]], label: str, fn: Callable[[], Any], **info: Any
) -> None:
    """Append the peak memory of one call of ``fn`` (after one warm-up call) to ``rows``."""
    fn()  # warm-up: caches (sign patterns, FFT plans, kernels) are not counted
    b.sync()
    m = b.peak_memory(fn)
    rows.append(b.row(case=label, **info, **m))


def _memory_fft(b: Bench, rows: List[Dict[str, Any]]) -> None:
    torch = b.torch
    import fastmri

    from iconet_fastmri.physics.fft import fft2c

    shape = b.profile["mem_fft_case"]
    x = torch.randn(*shape, dtype=torch.complex64).to(b.device)
    xr = torch.view_as_real(x)
    info = {"shape": list(shape), "input_mib": x.numel() * 8 / 2**20}
    _measure(b, rows, "fft2c ours", lambda: fft2c(x), **info)
    _measure(b, rows, "fft2c fastmri", lambda: fastmri.fft2c(xr), **info)
    _measure(b, rows, "fft2 floor", lambda: torch.fft.fft2(x, norm="ortho"), **info)


def _memory_degradation(b: Bench, rows: List[Dict[str, Any]]) -> None:
    torch = b.torch
    import fastmri
    from fastmri.data import transforms as T
    from fastmri.data.subsample import RandomMaskFunc

    from iconet_fastmri.physics.acquisition import Acquisition

    B, C, Hr, scale = b.profile["mem_deg"]
    x = torch.randn(B, C, Hr, Hr, dtype=torch.complex64).to(b.device)
    lr = (Hr // scale, Hr // scale)
    mask_func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4], seed=0)
    seeds = list(range(B))
    mask = fastmri_masks(mask_func, B, lr, seeds).to(b.device)
    if b.cuda:
        mask_func = OnDevice(mask_func, b.device)
    deg = Acquisition(scale)
    info = {"shape": [B, C, Hr, Hr], "scale": scale, "input_mib": x.numel() * 8 / 2**20}
    _measure(b, rows, "degradation ours (batched)", lambda: deg(x, mask), **info)
    _measure(
        b,
        rows,
        "degradation fastmri reference (per sample)",
        lambda: fastmri_reference(fastmri, T, x, scale, mask_func, seeds),
        **info,
    )


def _memory_model(b: Bench, rows: List[Dict[str, Any]]) -> None:
    torch = b.torch
    p = b.profile
    try:
        from iconet_fastmri.models import ICONet
    except Exception as err:
        rows.append(
            b.row(case="model", error=f"from iconet_fastmri.models import ICONet failed: {err!r}")
        )
        return
    torch.manual_seed(0)
    model = ICONet(
        scale=2, in_chans=1, width=p["model_width"], blocks_per_stage=p["model_blocks"]
    ).to(b.device)
    lr_side = p["model_hr"] // 2
    variants = _model_variants(b, model)
    variants.pop("compile_bf16_channels_last", None)  # compile-time memory is not the steady state
    batches = (
        p["mem_model_batches"] if (b.cuda or b.mode != "full") else [1]
    )  # 2-core CPU: batch 1 only
    for batch in batches:
        xin = torch.rand(batch, 1, lr_side, lr_side, device=b.device)
        for mode in ("forward", "forward+backward"):
            for name, (m, autocast, ckpt, train_only) in variants.items():
                if mode == "forward" and train_only:
                    continue
                _measure(
                    b,
                    rows,
                    f"ICONet x2 {mode} {name}",
                    _model_step(b, m, xin, mode, autocast, ckpt),
                    batch=batch,
                    lr=[lr_side, lr_side],
                    width=p["model_width"],
                    blocks_per_stage=p["model_blocks"],
                )
        model.zero_grad(set_to_none=True)
