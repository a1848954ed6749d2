"""PNG panels comparing methods on one slice: LR input, each method, target, error maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import h5py
import numpy as np

from .data.transforms import IconetDataTransform
from .physics.acquisition import Acquisition
from .evaluation import load_prediction, load_target_volume
from .physics.masks import MaskConfig

__all__ = ["lr_input_for", "comparison_panel", "validation_panel", "save_figure"]


def lr_input_for(
    raw_file: Union[str, Path], slice_num: int, scale: int, mask: MaskConfig, hr_crop, pad_if_smaller: bool = False
) -> np.ndarray:
    """The zero-filled LR magnitude the methods saw (same seeded mask and HR grid rule as inference)."""
    raw_file = Path(raw_file)
    with h5py.File(raw_file, "r") as f:
        kspace = f["kspace"][slice_num]
    acquisition = Acquisition(scale, mask)
    transform = IconetDataTransform(acquisition, tuple(hr_crop), use_seed=True, pad_if_smaller=pad_if_smaller)
    sample = transform(kspace, None, None, {}, raw_file.name, slice_num)
    deg = acquisition.simulate(sample.hr_images[None], sample.mask[None])
    return deg.lr_input[0, 0].numpy()


def comparison_panel(
    target_dir: Union[str, Path],
    prediction_dirs: Sequence[Union[str, Path]],
    out_png: Union[str, Path],
    names: Optional[Sequence[str]] = None,
    fname: Optional[str] = None,
    slice_num: Optional[int] = None,
) -> Path:
    """Draw one slice across methods; error maps share one colour scale.

    The LR input is recomputed from the raw file with the first prediction's
    recorded scale and mask (masks are seeded per slice, so it is the input
    every method saw).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target_dir = Path(target_dir)
    first = Path(prediction_dirs[0])
    if fname is None:
        fname = sorted(p.name for p in first.glob("*.h5"))[0]
    preds, all_attrs = [], []
    for folder in prediction_dirs:
        recon, attrs = load_prediction(Path(folder) / fname)
        preds.append(recon)
        all_attrs.append(attrs)
    attrs0 = all_attrs[0]
    if slice_num is None:
        slice_num = preds[0].shape[0] // 2
    grid = tuple(int(v) for v in preds[0].shape[-2:])
    pad = bool(attrs0.get("pad_if_smaller", False))  # the run's HR grid rule, as the evaluation uses it
    target, _ = load_target_volume(target_dir / fname, grid, pad_if_smaller=pad)
    target = target[slice_num]
    scale = int(attrs0.get("scale", 2))
    mask = MaskConfig(name=str(attrs0.get("mask_name", "random")), **json.loads(attrs0.get("mask_args", "{}")))
    lr = lr_input_for(target_dir / fname, slice_num, scale, mask, grid, pad_if_smaller=pad)
    labels = list(names) if names else [Path(d).name for d in prediction_dirs]

    vmax = float(target.max())
    errors = [np.abs(p[slice_num] - target) for p in preds]
    emax = float(max(np.percentile(e, 99.5) for e in errors)) or 1.0
    cols = len(preds) + 2
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.6))
    from .metrics import volume_metrics

    def show(ax, img, title, cmap="gray", vmax_=vmax):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax_)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    show(axes[0, 0], lr, f"LR input x{scale} ({lr.shape[0]}x{lr.shape[1]})")
    for i, (p, label) in enumerate(zip(preds, labels)):
        m = volume_metrics(target[None], p[slice_num][None], maxval=vmax)
        show(axes[0, i + 1], p[slice_num], f"{label}\n{m['psnr']:.2f} dB / {m['ssim']:.3f}")
        show(axes[1, i + 1], errors[i], f"|error| {label}", cmap="inferno", vmax_=emax)
    show(axes[0, -1], target, "HR target")
    axes[1, 0].axis("off")
    axes[1, -1].axis("off")
    axes[1, 0].text(0.0, 0.5, f"{fname}\nslice {slice_num}\nerror scale 0..{emax:.3g}\n(shared)", fontsize=8)
    return save_figure(fig, out_png)


def save_figure(fig: Any, out_png: Union[str, Path], dpi: int = 110) -> Path:
    """Lay out, save (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


def validation_panel(
    lr_input: np.ndarray, prior: Optional[np.ndarray], sr: np.ndarray, target: np.ndarray, dpi: int = 80
) -> "tuple[np.ndarray, list[str]]":
    """A labelled RGB panel of one validation slice for TensorBoard: ``(H, W, 3) uint8`` and the tile titles.

    Tiles: LR input, reconstruction prior (both on their own LR grid), SR,
    HR target (all on the target's grey scale), and ``|SR - target|`` on its
    own scale (0 to its 99.5th percentile), which the title states as a
    fraction of the target maximum so the map is readable and comparable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(target.max()) or 1.0
    error = np.abs(sr - target)
    emax = float(np.percentile(error, 99.5)) or float(error.max()) or 1.0
    tiles = [("LR input", lr_input, vmax, "gray"), ("reconstruction prior", prior, vmax, "gray"),
             ("SR", sr, vmax, "gray"), ("HR target", target, vmax, "gray"),
             (f"|SR - target|, 0-{emax / vmax:.1%} of max", error, emax, "magma")]
    tiles = [t for t in tiles if t[1] is not None]
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.2 * len(tiles), 2.5), dpi=dpi)
    for ax, (title, image, top, cmap) in zip(axes, tiles):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=top)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb, [t[0] for t in tiles]
