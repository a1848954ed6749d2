"""A generic per-volume MRI Lightning module: validation, test and prediction scored by volume.

fastMRI's ``MriModule`` idea, written for Lightning 2 (fastmri 0.3.0's own
relies on the removed ``validation_epoch_end`` / ``validation_step_end``
hooks). A subclass implements :meth:`MriModule.evaluate_batch`; this base

* accumulates slices into whole volumes and scores each with
  fastmri.evaluate's NMSE / PSNR / SSIM (volume maximum as data range) as
  soon as it is complete (:class:`~iconet_fastmri.metrics.VolumeAccumulator`),
* merges the per-rank results so each volume counts once under DDP
  (validation gives each rank whole volumes),
* logs ``{val,test}/{psnr,ssim,nmse}``, the same for each baseline
  (``val/psnr_bicubic`` ...), ``{val,test}/loss`` and ``num_volumes``,
* logs a background diagnostic beside them, for the method and each baseline
  (:func:`~iconet_fastmri.metrics.region_metrics`; object = target > 10 % of
  the volume maximum): ``psnr_object``, ``ssim_object``, ``psnr_background``,
  ``ssim_background``, ``background_bias`` and ``negative_fraction``, so a
  negative bias painted over the background shows up in TensorBoard,
* keeps the last epoch's per-volume results in :attr:`volume_results`.

What a run reports besides the logs (JSON files, image panels, the
end-of-fit summary) are callbacks (:mod:`iconet_fastmri.reports`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ..data.lr_dataset import AcquiredChunk
from ..divergence import check_finite_reconstruction
from ..metrics import VolumeAccumulator, merge_rank_results, summarize
from ..models.measured import reconstruct_chunk

__all__ = ["EvalBatch", "MriModule"]


@dataclass
class EvalBatch:
    """One evaluated batch.

    Attributes:
        loss: the training loss on this batch (logged as ``<stage>/loss``).
        reconstruction: ``(B, H, W)`` float32 magnitudes, the method's output.
        target: ``(B, H, W)`` float32, what it is scored against.
        baselines: other reconstructions ``(B, H, W)`` scored alongside, by name.
        images: named ``(B, H, W)`` images for panels (callbacks draw them).
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    target: torch.Tensor
    baselines: Dict[str, torch.Tensor] = field(default_factory=dict)
    images: Dict[str, Optional[torch.Tensor]] = field(default_factory=dict)


class MriModule(pl.LightningModule):
    """Per-volume evaluation for slice-wise reconstruction (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._accumulator: Optional[VolumeAccumulator] = None
        self._stage_results: Dict[str, Dict[str, Dict[str, float]]] = {}
        self.eval_summary: Dict[str, Dict[str, float]] = {}

    def evaluate_batch(self, batch: Any) -> EvalBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def reconstruct(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """The method's ``(B, H, W)`` float32 magnitudes alone (prediction: no loss, no baselines)."""
        raise NotImplementedError

    def _expected_slices(self, split: str) -> Dict[str, int]:
        # Volumes are scored as soon as complete when the data module says how many slices each has.
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "slices_per_volume"):
            try:
                return dm.slices_per_volume(split)
            except Exception:  # pragma: no cover - volumes are then scored at epoch end
                return {}
        return {}

    def _eval_step(self, batch: Any, prefix: str) -> EvalBatch:
        result = self.evaluate_batch(batch)
        # A NaN/Inf output would be scored as "PSNR nan" with exit code 0: an error naming the file and slice.
        check_finite_reconstruction(result.reconstruction, batch.fname, batch.slice_num,
                                    getattr(self, "method_name", type(self).__name__))
        bs = result.reconstruction.shape[0]
        self.log(f"{prefix}/loss", result.loss, batch_size=bs, sync_dist=True)
        target = result.target.float().cpu().numpy()
        preds = {"": result.reconstruction.float().cpu().numpy()}
        preds.update({name: image.float().cpu().numpy() for name, image in result.baselines.items()})
        for i in range(bs):
            self._accumulator.add(batch.fname[i], int(batch.slice_num[i]), target[i],
                                  {name: p[i] for name, p in preds.items()})
        return result

    def _end_eval(self, prefix: str) -> Dict[str, float]:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank's scored volumes and unfinished slices; every volume scored once, on all its slices.
            parts: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self._accumulator.partial())
            results = merge_rank_results(parts)
        else:
            results = self._accumulator.finalize()
        summary = summarize(results)
        for name, value in summary.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name in ("psnr", "ssim"), sync_dist=False)
        self.log(f"{prefix}/num_volumes", float(len(results)), sync_dist=False)
        self._stage_results[prefix] = results
        self.eval_summary[prefix] = summary
        self._accumulator = None
        return summary

    def on_validation_epoch_start(self) -> None:
        self._accumulator = VolumeAccumulator(self._expected_slices("val"))

    def validation_step(self, batch: Any, batch_idx: int) -> EvalBatch:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._accumulator = VolumeAccumulator(self._expected_slices("test"))

    def test_step(self, batch: Any, batch_idx: int) -> EvalBatch:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """Reconstructions keyed by (file name, slice): ``{"fname", "slice_num", "reconstruction"}``.

        A batch of a real low-resolution scan (:class:`~iconet_fastmri.data.lr_dataset.AcquiredChunk`)
        goes through :func:`~iconet_fastmri.models.measured.reconstruct_chunk` (the module must offer
        ``in_chans``, ``uses_dc``, ``map_estimator`` and ``magnitude``) and adds ``dc_residual``.
        A NaN/Inf reconstruction is an error naming its file and slice, never written.
        """
        extras: Dict[str, Any] = {}
        if isinstance(batch, AcquiredChunk):  # a real low-resolution scan: no simulation, a DC residual
            reconstruction, extras = reconstruct_chunk(self, batch)
            fnames = [batch.fname] * int(batch.slice_num.numel())
        else:
            reconstruction, fnames = self.reconstruct(batch), list(batch.fname)
        reconstruction = reconstruction.float().cpu()
        check_finite_reconstruction(reconstruction, fnames, batch.slice_num,
                                    getattr(self, "method_name", type(self).__name__))
        return {"fname": fnames, "slice_num": batch.slice_num.cpu(), "reconstruction": reconstruction,
                **{key: value.cpu() for key, value in extras.items()}}

    @property
    def volume_results(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """Per-volume metrics of the last validation/test epoch, by stage prefix."""
        return self._stage_results
