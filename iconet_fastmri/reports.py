"""What a run reports besides its logged metrics: callbacks over a :class:`~iconet_fastmri.pl_modules.mri_module.MriModule`.

* :class:`VolumeMetricsFile`: the per-volume metrics of every validation / test
  epoch as JSON (``--volume_metrics.path val.json`` on the CLI).
* :class:`ValidationPanels`: labelled image panels (LR input, prior, output,
  target) of the first validation slices, TensorBoard only
  (``--panels.num_images``).
* :class:`FitSummary`: at the end of ``fit``, how long it took and whether the
  method beat the bicubic-on-zero-filled baseline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from .io import atomic_write_json

__all__ = ["VolumeMetricsFile", "ValidationPanels", "FitSummary"]


class VolumeMetricsFile(pl.Callback):
    """Rank 0 writes ``{"stage", "epoch", "summary", "volumes"}`` of each validation / test epoch to ``path``.

    Args:
        path: the JSON file (``None``: write nothing). Its folder must exist: checked at start-up.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        if path:
            folder = Path(path).expanduser().resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(f"volume metrics file {path}: its folder {folder} does not exist")

    def _write(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if not self.path or trainer.global_rank != 0 or trainer.sanity_checking:
            return
        volumes = pl_module.volume_results.get(stage)
        if volumes is None:
            return
        payload = {"stage": stage, "epoch": int(pl_module.current_epoch),
                   "summary": pl_module.eval_summary.get(stage, {}), "volumes": volumes}
        atomic_write_json(self.path, payload, indent=1, sort_keys=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "test")


class ValidationPanels(pl.Callback):
    """Panels (:func:`~iconet_fastmri.figures.validation_panel`) of the first ``num_images`` slices of each validation epoch."""

    def __init__(self, num_images: int = 1) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = num_images

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or self.num_images <= 0 or trainer.global_rank != 0 or outputs is None:
            return
        experiment = getattr(pl_module.logger, "experiment", None) if pl_module.logger is not None else None
        if not hasattr(experiment, "add_image"):  # only TensorBoard draws images
            return
        from .figures import validation_panel

        images = outputs.images
        prior = images.get("prior")
        for i in range(min(self.num_images, outputs.reconstruction.shape[0])):
            rgb, _ = validation_panel(
                images["lr_input"][i].float().cpu().numpy(),
                None if prior is None else prior[i].float().cpu().numpy(),
                outputs.reconstruction[i].float().cpu().numpy(), outputs.target[i].float().cpu().numpy(),
            )
            experiment.add_image(f"val/panel_{i}", rgb, global_step=trainer.global_step, dataformats="HWC")


class FitSummary(pl.Callback):
    """Prints how long ``fit`` took and the final validation against the bicubic baseline."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        started = getattr(self, "_started", None)
        if started is not None:
            minutes, seconds = divmod(time.perf_counter() - started, 60)
            rank_zero_info(f"[iconet-fastmri] fit took {int(minutes)} min {seconds:.0f} s "
                           f"({trainer.global_step} steps)")
        metrics = trainer.callback_metrics
        if "val/psnr" not in metrics or "val/psnr_bicubic" not in metrics:
            return
        psnr, ssim = float(metrics["val/psnr"]), float(metrics.get("val/ssim", float("nan")))
        psnr_b, ssim_b = float(metrics["val/psnr_bicubic"]), float(metrics.get("val/ssim_bicubic", float("nan")))
        verdict = "beats" if psnr > psnr_b else "does NOT beat"
        name = getattr(pl_module, "method_name", type(pl_module).__name__)
        rank_zero_info(
            f"\n[iconet-fastmri] final validation: PSNR {psnr:.2f} dB, SSIM {ssim:.4f} | "
            f"bicubic on zero-filled: PSNR {psnr_b:.2f} dB, SSIM {ssim_b:.4f} -> "
            f"{name} {verdict} the bicubic baseline by {psnr - psnr_b:+.2f} dB"
        )
