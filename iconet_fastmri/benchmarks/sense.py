"""Multi-coil k-space section: the cost of the coil-map estimates and of one data-consistency step.

Per slice, on the device:

* ``maps_rss``: :func:`~iconet_fastmri.physics.sense.estimate_maps_rss` on a
  batch of acquired LR k-space (what training and inference run), against
  ``maps_espirit``: :func:`~iconet_fastmri.physics.sense.espirit_maps`
  (sigpy's ESPIRiT, CPU, one slice at a time; the reference estimate);
* ``dc``: :func:`~iconet_fastmri.physics.sense.sense_data_consistency` of a
  coil-combined image, on the LR grid (DC of the first reconstruction prior)
  and on the HR grid (DC of the SR output, maps moved to the HR grid), single-
  and multi-coil, against its floor, a batched ``fft2`` + ``ifft2`` of the
  coil images on that grid (the two transforms every DC step needs).

Correctness: single-coil hard DC reproduces the measured samples
(``M · T · F`` of the output against ``y``).
"""

from __future__ import annotations

from typing import Any, Dict, List

from .harness import Bench, loadavg
from .kspace import fastmri_masks


def section_sense(b: Bench) -> Dict[str, Any]:
    """Coil maps (RSS estimate vs ESPIRiT) and the DC step through ``A = M·F·T·S``."""
    torch = b.torch
    from fastmri.data.subsample import RandomMaskFunc

    from iconet_fastmri.physics.fft import fft2c
    from iconet_fastmri.physics.operators import crop_kspace
    from iconet_fastmri.physics.sense import calibration_region, espirit_maps, estimate_maps_rss, sense_data_consistency

    p = b.profile
    repeats = b.args.repeats or p["deg_repeats"]
    B, h, coils_list = p["sense_batch"], p["sense_lr"], p["sense_coils"]
    gen = torch.Generator().manual_seed(2)
    mask = fastmri_masks(RandomMaskFunc(center_fractions=[0.08], accelerations=[4], seed=0), B, (h, h),
                         list(range(B))).to(b.device)
    rows: List[Dict[str, Any]] = []
    for coils in coils_list:
        kspace = torch.randn(B, coils, h, h, dtype=torch.complex64, generator=gen).to(b.device) * mask
        if coils > 1:
            t = b.compare({"maps_rss": lambda: estimate_maps_rss(kspace, mask)}, repeats)
            rss_ms = t["maps_rss"]["median_ms"] / B
            calib = int(calibration_region(mask[:1]).sum(dim=-2).amax())  # calibration columns
            k0 = kspace[0].cpu().numpy()
            te = b.compare({"maps_espirit": lambda: espirit_maps(k0, calib, check=False)}, 1, warmup=0)
            esp_ms = te["maps_espirit"]["median_ms"]
            rows.append(b.row(case=f"coil maps, {coils} coils, LR {h}x{h}", op="maps", coils=coils, grid=[h, h],
                              ours_ms_per_slice=rss_ms, reference="ESPIRiT (sigpy, CPU, per slice)",
                              reference_ms_per_slice=esp_ms, reference_over_ours=esp_ms / rss_ms,
                              foreign_load_cores=t["maps_rss"]["foreign_load_cores"], loadavg=loadavg()))
        maps = estimate_maps_rss(kspace, mask) if coils > 1 else None
        for label, factor in (("prior (LR grid)", 1), ("SR output (HR grid, x2)", 2)):
            H = h * factor
            image = torch.randn(B, 1, H, H, dtype=torch.complex64, generator=gen).to(b.device)
            coil_images = torch.empty(B, coils, H, H, dtype=torch.complex64, device=b.device)
            if coils == 1:
                out = sense_data_consistency(image, kspace, mask)
                b.diff("sense", f"1 coil, {label}", "M T F (hard DC) vs measured",
                       crop_kspace(fft2c(out), (h, h)) * mask, kspace)
            t = b.compare(
                {
                    "dc": lambda: sense_data_consistency(image, kspace, mask, maps),
                    "floor": lambda: torch.fft.ifft2(torch.fft.fft2(coil_images, norm="ortho"), norm="ortho"),
                },
                repeats,
            )
            dc_ms, floor_ms = t["dc"]["median_ms"] / B, t["floor"]["median_ms"] / B
            rows.append(b.row(case=f"DC of the {label}, {coils} coil{'s' if coils > 1 else ''}, {H}x{H}", op="dc",
                              coils=coils, grid=[H, H], ours_ms_per_slice=dc_ms, reference="fft2+ifft2 of the coil images",
                              reference_ms_per_slice=floor_ms, reference_over_ours=floor_ms / dc_ms,
                              foreign_load_cores=t["dc"]["foreign_load_cores"], loadavg=loadavg()))
        del kspace
    return {
        "rows": rows,
        "repeats": repeats,
        "batch": B,
        "notes": "per slice; maps_rss and dc run batched (batch size above); ESPIRiT runs one slice on the CPU "
        "(sigpy.mri.app.EspiritCalib), timed once; random k-space under fastMRI's RandomMaskFunc(0.08, 4x).",
    }
