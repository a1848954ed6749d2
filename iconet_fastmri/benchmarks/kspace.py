"""k-space sections: our centred FFTs and batched degradation against fastMRI's, in the same run.

``fft`` times :func:`iconet_fastmri.physics.fft.fft2c` / ``ifft2c`` against
``fastmri.fft2c`` / ``ifft2c`` and an unshifted ``torch.fft`` floor;
``degradation`` times :meth:`~iconet_fastmri.physics.acquisition.Acquisition.simulate`
against a per-sample reference built from fastMRI's transforms. Both check
that the compared outputs agree.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .harness import Bench, loadavg

# ----------------------------------------------------------------------------- fft


def section_fft(b: Bench) -> Dict[str, Any]:
    """Centred 2D FFTs: ours vs ``fastmri.fft2c`` (real view) vs the plain ``torch.fft`` floor."""
    torch = b.torch
    repeats = b.args.repeats or b.profile["fft_repeats"]
    gen = torch.Generator().manual_seed(0)
    rows: List[Dict[str, Any]] = []
    for label, shape, multicoil in b.profile["fft_cases"]:
        rows += _fft_case(b, label, shape, multicoil, repeats, gen)
    return {"rows": rows, "repeats": repeats, "warmup": b.warmup}


def _fft_case(
    b: Bench, label: str, shape: Sequence[int], multicoil: bool, repeats: int, gen: Any
) -> List[Dict[str, Any]]:
    """Both directions of one FFT case (its input is freed on return)."""
    torch = b.torch
    import fastmri

    from iconet_fastmri.physics.fft import fft2c, ifft2c

    x = torch.randn(*shape, dtype=torch.complex64, generator=gen).to(b.device)
    xr = torch.view_as_real(x)  # fastMRI's real view (a view, no copy)
    rows = []
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
                loadavg=loadavg(),
                **d,
            )
        )
    return rows


# ----------------------------------------------------------------------------- degradation


def fastmri_reference(fastmri, T, hr: Any, scale: int, mask_func: Any, seeds: Sequence[int]):
    """Per-sample degradation with fastMRI's transforms; lists of per-sample outputs."""
    import torch

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


class OnDevice:
    """A fastMRI mask function whose masks live on ``device``.

    ``apply_mask`` multiplies on the data's device, so on CUDA the mask must be there too.
    """

    def __init__(self, mask_func: Any, device: Any) -> None:
        self.mask_func = mask_func
        self.device = device

    def __call__(self, shape: Sequence[int], offset: Optional[int] = None, seed: Any = None):
        mask, num_low = self.mask_func(shape, offset, seed)
        return mask.to(self.device), num_low


def fastmri_masks(mask_func: Any, batch: int, lr: Tuple[int, int], seeds: Sequence[int]):
    """fastMRI's per-sample masks as one ``(B, 1, h, w)`` tensor in our (rows, columns) layout."""
    import torch

    masks = []
    for i in range(batch):
        m, _ = mask_func((1, lr[0], lr[1], 2), None, seeds[i])  # fastMRI shape: columns = dim -2
        masks.append(m.reshape(1, lr[1]).expand(*lr).to(torch.float32))
    return torch.stack(masks).unsqueeze(1)


def section_degradation(b: Bench) -> Dict[str, Any]:
    """Batched ``Acquisition.simulate`` vs the per-sample fastMRI reference vs its own FFTs alone."""
    torch = b.torch
    p = b.profile
    repeats = b.args.repeats or p["deg_repeats"]
    B, Hr = p["deg_batch"], p["deg_hr"]
    gen = torch.Generator().manual_seed(1)
    rows = []
    for coils in p["deg_coils"]:
        x = torch.randn(B, coils, Hr, Hr, dtype=torch.complex64, generator=gen).to(b.device)
        for scale in p["deg_scales"]:
            rows.append(_degradation_case(b, x, scale, repeats))
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


def _degradation_case(b: Bench, x: Any, scale: int, repeats: int) -> Dict[str, Any]:
    """One (coils, scale) case on the HR batch ``x``: numerical check, then the timings."""
    torch = b.torch
    import fastmri
    from fastmri.data import transforms as T
    from fastmri.data.subsample import RandomMaskFunc

    from iconet_fastmri.physics.acquisition import Acquisition

    B, coils, Hr = x.shape[0], x.shape[1], x.shape[-1]
    lr = (Hr // scale, Hr // scale)
    mask_func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4], seed=0)
    seeds = list(range(100 * scale, 100 * scale + B))
    mask = fastmri_masks(mask_func, B, lr, seeds).to(b.device)
    if b.cuda:
        mask_func = OnDevice(mask_func, b.device)
    deg = Acquisition(scale)
    label = f"{coils}-coil x{scale}"
    diffs = _degradation_diffs(
        b, label, deg(x, mask), fastmri_reference(fastmri, T, x, scale, mask_func, seeds)
    )

    grids = [(Hr // 2**k, Hr // 2**k) for k in range(int(math.log2(scale)), 0, -1)]
    lr_batches = [torch.empty(B, coils, *g, dtype=torch.complex64, device=b.device) for g in grids]

    def own_ffts() -> None:
        torch.fft.fft2(x, norm="ortho")
        torch.fft.ifft2(lr_batches[0], norm="ortho")  # clean LR image
        torch.fft.ifft2(lr_batches[0], norm="ortho")  # zero-filled LR image
        for extra in lr_batches[1:]:  # intermediate stage target(s)
            torch.fft.ifft2(extra, norm="ortho")

    t = b.compare(
        {
            "ours": lambda: deg(x, mask),
            "fastmri_reference": lambda: fastmri_reference(fastmri, T, x, scale, mask_func, seeds),
            "own_ffts": own_ffts,
        },
        repeats,
    )
    ours_ms, ref_ms, fft_ms = (t[k]["median_ms"] for k in ("ours", "fastmri_reference", "own_ffts"))
    return b.row(
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
        loadavg=loadavg(),
        max_abs_diff=max(v["max_abs_diff"] for v in diffs.values()),
        max_rel_diff=max(v["max_rel_diff"] for v in diffs.values()),
        diffs=diffs,
    )


def _degradation_diffs(b: Bench, label: str, ours: Any, ref: List[Any]) -> Dict[str, Any]:
    """Compare every output of ``Acquisition.simulate`` with the stacked per-sample reference."""
    torch = b.torch

    def stack(k: int) -> Any:
        return torch.stack([r[k] for r in ref])

    def complex_stack(k: int) -> Any:
        return torch.view_as_complex(stack(k).contiguous())

    pairs = [
        ("hr_target", ours.hr_target[:, 0], stack(0)),
        ("lr_kspace", ours.lr_kspace, complex_stack(1)),
        ("lr_observed", ours.lr_observed, complex_stack(2)),
        ("lr_clean", ours.lr_clean[:, 0], stack(3)),
        ("lr_input", ours.lr_input[:, 0], stack(4)),
    ]
    for j in range(len(ref[0][5])):
        pairs.append(
            (
                f"stage_target_{j}",
                ours.stage_targets[j][:, 0],
                torch.stack([r[5][j] for r in ref]),
            )
        )
    return {name: b.diff("degradation", label, name, a, r) for name, a, r in pairs}
