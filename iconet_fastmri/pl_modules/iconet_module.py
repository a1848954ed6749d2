"""Lightning 2 module for ICONet and its baselines (fastMRI style, our own hooks).

fastmri's ``MriModule`` is not used: under Lightning 2 it relies on the
removed ``validation_epoch_end`` / ``validation_step_end`` hooks. This module
keeps its own per-volume outputs instead.

Per batch, on the device: :class:`~iconet_fastmri.physics.degradation.KSpaceDegradation`
turns the HR coil images and LR masks of the batch into the LR input and all
targets (the FFTs stay in float32 under ``bf16-mixed``), the model runs, and
:class:`~iconet_fastmri.losses.MultiStageLoss` compares every stage with its
target in per-slice normalised units.

Validation scores whole volumes with fastmri.evaluate's NMSE/PSNR/SSIM (volume
max as data range) on the de-normalised SR magnitude against the HR target,
merges the per-rank results so each volume counts once, and logs ``val/psnr``,
``val/ssim``, ``val/nmse``, ``val/loss`` and the bicubic-on-zero-filled
baseline ``val/psnr_bicubic`` (also ``val/ssim_bicubic``, ``val/nmse_bicubic``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from pytorch_lightning.utilities import rank_zero_info

from ..data.transforms import IconetSample
from ..io import atomic_write_json
from ..physics.degradation import Degraded, KSpaceDegradation, build_kspace_steps
from ..physics.fft import ifft2c
from ..physics.operators import lr_shape_for
from ..physics.sense import complex_targets, calibration_region, estimate_maps_rss, sense_combine
from ..losses import MultiStageLoss
from ..metrics import VolumeAccumulator, merge_results, summarize
from ..models import MODELS, BicubicSR, SRModel, model_spec
from ..models.coil_maps import LearnedMaps
from ..models.common import magnitude

__all__ = ["IconetModule"]

log = logging.getLogger(__name__)

class IconetModule(pl.LightningModule):
    """ICONet (or any :class:`~iconet_fastmri.models.SRModel`) trained on k-space-simulated LR acquisitions.

    Args:
        model: the network, an :class:`~iconet_fastmri.models.SRModel` of a
            registered class (``iconet_fastmri.models.MODELS``). In a config::

                model:
                  model:
                    class_path: iconet_fastmri.models.ICONet
                    init_args: {width: 32, blocks_per_stage: 2}

            The CLI fills the model's ``scale`` from ``data.scale`` and its
            ``in_chans`` from ``mode``. Checkpoints store
            ``{"class_path", "init_args"}`` (never the pickled object).
        mode: ``"magnitude"`` (1 channel, the paper's setting) or ``"complex"``
            (2 channels: the complex LR image, SENSE-combined for multi-coil data;
            needed for data consistency, multi-coil through the coil maps); must
            agree with the model's ``in_chans``.
        lambda_sr, lambda_rec, supervise: the multi-stage loss.
        lr, betas, weight_decay: Adam.
        lr_min: end of the cosine decay (over ``trainer.max_epochs``).
        scheduler: ``"cosine"`` or ``"none"``.
        noise_std: complex k-space noise added to the acquired LR samples
            (the CLI links it to ``data.noise_std``, with the rest of the acquisition model).
        kspace_steps: further acquisition effects on the acquired LR k-space,
            ``[{"name": ..., **options}]`` from the registry
            :data:`~iconet_fastmri.physics.degradation.KSPACE_STEPS` (linked to ``data.kspace_steps``).
        compile: ``torch.compile`` the model's forward (weights stay under ``model.``).
        channels_last: keep the model's weights and input in ``torch.channels_last``
            (NHWC), the layout cuDNN's bf16 kernels work in. On an H200 it took
            bf16 + compile training from 1.57x to 2.03x the slices/s of eager fp32
            (README, "GPU"); alone, without compile, it gained nothing there.
        num_log_images: validation slices drawn as image panels per epoch.
        volume_metrics_file: if set, rank 0 writes the per-volume metrics of
            every validation/test epoch there as JSON (``{"stage", "epoch", "volumes"}``).
        coil_maps: coil maps of complex multi-coil runs (SENSE input and DC):
            ``"rss"``, the on-device estimate from the calibration lines
            (:func:`~iconet_fastmri.physics.sense.estimate_maps_rss`), or
            ``"learned"``, that estimate refined by a U-Net trained end to end
            with the model (:class:`~iconet_fastmri.models.coil_maps.LearnedMaps`,
            weights under ``map_net.``; it starts equal to ``"rss"``).
        map_chans, map_pools: width and depth of the learned refinement's U-Net.
        lambda_phase: complex mode only: weight of a phase-aware term added to
            the loss, the same multi-stage L1 on the (real, imag) channels
            against the complex targets of every stage grid
            (:func:`~iconet_fastmri.physics.sense.complex_targets`; SENSE-combined
            with the run's coil maps for multi-coil data). The magnitude loss
            alone leaves the output's phase free, and data consistency then
            mixes measured samples with an estimate of the wrong phase
            (README, "Why DC lost SSIM"). 0 turns it off.
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        mode: Literal["magnitude", "complex"] = "magnitude",
        lambda_sr: float = 0.8,
        lambda_rec: float = 0.2,
        supervise: Literal["all_stages", "last_stage"] = "all_stages",
        lr: float = 2e-4,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        lr_min: float = 1e-6,
        scheduler: Literal["cosine", "none"] = "cosine",
        noise_std: float = 0.0,
        kspace_steps: Optional[List[Dict[str, Any]]] = None,
        compile: bool = False,
        channels_last: bool = False,
        num_log_images: int = 1,
        volume_metrics_file: Optional[str] = None,
        lambda_phase: float = 0.0,
        coil_maps: Literal["rss", "learned"] = "rss",
        map_chans: int = 8,
        map_pools: int = 4,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError(
                "IconetModule needs a model: name one (--model.model ICONet, or model.model.class_path "
                "in the config) or give --ckpt_path of a checkpoint, whose model is then used"
            )
        if not isinstance(model, SRModel):
            raise TypeError(
                f"model must be an iconet_fastmri.models.SRModel (got {type(model).__name__}); "
                f"see docs/ARCHITECTURE.md, 'Add a model'"
            )
        if mode not in ("magnitude", "complex"):
            raise ValueError(f"mode must be 'magnitude' or 'complex', got {mode!r}")
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.in_chans = 1 if mode == "magnitude" else 2
        if coil_maps not in ("rss", "learned"):
            raise ValueError(f"coil_maps must be 'rss' or 'learned', got {coil_maps!r}")
        if coil_maps == "learned" and mode != "complex":
            raise ValueError("coil_maps='learned' serves complex multi-coil runs: set mode: complex (or coil_maps: rss)")
        self.map_net = LearnedMaps(map_chans, map_pools) if coil_maps == "learned" else None
        if lambda_phase < 0:
            raise ValueError(f"lambda_phase must be >= 0, got {lambda_phase}")
        if lambda_phase > 0 and mode != "complex":
            raise ValueError("lambda_phase supervises the phase of a complex output: set mode: complex")
        self._maps: Optional[torch.Tensor] = None  # the last batch's coil maps (multi-coil complex mode)
        if model.in_chans != self.in_chans:
            raise ValueError(
                f"mode={mode!r} feeds {self.in_chans} channel(s) but the model has "
                f"in_chans={model.in_chans}; set the model's in_chans to {self.in_chans} "
                f"(the CLI does this from --model.mode)"
            )
        if volume_metrics_file:
            folder = Path(volume_metrics_file).expanduser().resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"volume_metrics_file {volume_metrics_file}: its folder {folder} does not exist"
                )
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = model_spec(model)
        self.model = model
        self.scale = model.scale
        self.method_name = MODELS.name_of(type(model)) or type(model).__name__
        self.uses_dc = bool(model.uses_kspace)
        self.degradation = KSpaceDegradation(
            self.scale, noise_std=noise_std, steps=build_kspace_steps(kspace_steps or [])
        )
        self._bicubic_baseline = BicubicSR(self.scale)  # no parameters, no state
        self.loss_fn = MultiStageLoss(lambda_sr=lambda_sr, lambda_rec=lambda_rec, supervise=supervise)
        self._compiled = None
        self._val_acc: Optional[VolumeAccumulator] = None
        self._stage_results: Dict[str, Dict[str, Dict[str, float]]] = {}

    # ------------------------------------------------------------------ forward
    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._compiled is None:
            if self.device.type == "cpu":
                log.warning(
                    "torch.compile on the CPU: its warm-up (inductor) took over 150 s for ICONet in our "
                    "measurement, more than a short CPU run saves; it pays on GPUs"
                )
            # Kept out of the module tree, so checkpoints keep the plain "model." keys.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def degrade(self, batch: IconetSample) -> Degraded:
        """Run the batched k-space degradation for a collated batch."""
        return self.degradation(batch.hr_images, batch.mask)

    def model_input(self, deg: Degraded) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The network input for this mode, and the DC arguments.

        Complex mode: the complex LR image as (real, imag) channels. For
        single-coil data that is the zero-filled LR image; for multi-coil data
        the SENSE combination ``Σ_c conj(S_c) x_c`` of the zero-filled coil
        images, with maps estimated on the device from the acquired
        calibration lines (:func:`~iconet_fastmri.physics.sense.estimate_maps_rss`).
        Targets and metrics stay fastMRI's: the magnitude of the complex output
        is compared with the RSS target.
        """
        maps = None
        if self.in_chans == 1:
            x = deg.lr_input
        else:
            z = deg.lr_input_complex
            if z is None:  # multi-coil
                with torch.autocast(device_type=deg.lr_observed.device.type, enabled=False):
                    if self.map_net is not None:
                        maps = self.map_net(deg.lr_observed, deg.mask)
                    else:
                        maps = estimate_maps_rss(deg.lr_observed, deg.mask)
                    z = sense_combine(ifft2c(deg.lr_observed), maps)
            x = torch.cat([z.real, z.imag], dim=1)
        self._maps = maps
        kwargs: Dict[str, torch.Tensor] = {}
        if self.uses_dc:
            kwargs = {"measured_kspace": deg.lr_observed, "mask": deg.mask}
            if maps is not None:
                kwargs["maps"] = maps
        return x, kwargs

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.map_net is not None and getattr(dm, "challenge", None) == "singlecoil":
            raise ValueError("coil_maps='learned' needs multicoil data; this run is singlecoil (use coil_maps: rss)")
        if self.in_chans == 2 and getattr(dm, "challenge", None) == "multicoil" and hasattr(dm, "mask"):
            # Complex multi-coil input needs coil maps from a fully sampled centre: check the mask now.
            lr = lr_shape_for(dm.patch_size or dm.hr_crop, self.scale)
            mask, _ = dm.mask.build()(lr, seed=0)
            try:
                calibration_region(torch.as_tensor(mask, dtype=torch.float32).expand(*lr)[None, None])
            except ValueError as err:
                raise ValueError(f"mode='complex' on multicoil data needs coil maps: mask {dm.mask.name!r}: {err}") from err

    def forward(self, deg: Degraded):
        x, kwargs = self.model_input(deg)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._compiled if self._compiled is not None else self.model
        return net(x, **kwargs)

    @staticmethod
    def magnitude(image: torch.Tensor) -> torch.Tensor:
        """(B, 1|2, H, W) -> (B, 1, H, W) magnitude, in float32 (no epsilon: this is for metrics)."""
        return magnitude(image.float(), eps=0.0)

    def bicubic(self, deg: Degraded) -> torch.Tensor:
        """The baseline: bicubic upsampling of the zero-filled LR magnitude (:class:`BicubicSR`)."""
        return self._bicubic_baseline(deg.lr_input).sr

    # ------------------------------------------------------------------ training
    def training_step(self, batch: IconetSample, batch_idx: int) -> torch.Tensor:
        deg = self.degrade(batch)
        out = self(deg)
        loss, terms = self.loss_fn(out, deg)
        if self.hparams.lambda_phase > 0:
            phase, _ = self.loss_fn(out.sr_stages or [out.sr], out.rec_stages,
                                    *self._complex_targets(batch, out), norm_scale=out.norm_scale)
            terms["phase"] = phase.detach()
            loss = loss + self.hparams.lambda_phase * phase
        self._maps = None  # do not keep the batch's maps (and a learned map net's graph) past the step
        bs = deg.hr_target.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for name, value in terms.items():
            if name != "total":
                self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _complex_targets(self, batch: IconetSample, out) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(SR, prior) complex targets as (real, imag) channels on the grids of ``out``'s stages."""
        sr_grids = [tuple(t.shape[-2:]) for t in (out.sr_stages or [out.sr])]
        rec_grids = [tuple(t.shape[-2:]) for t in out.rec_stages]
        grids = list(dict.fromkeys(sr_grids + rec_grids))
        with torch.autocast(device_type=batch.hr_images.device.type, enabled=False):
            images = dict(zip(grids, complex_targets(batch.hr_images, grids, self._maps)))
        as_channels = lambda z: torch.cat([z.real, z.imag], dim=1)  # noqa: E731
        return [as_channels(images[g]) for g in sr_grids], [as_channels(images[g]) for g in rec_grids]

    def on_train_epoch_start(self) -> None:
        optimizers = self.trainer.optimizers if self.trainer is not None else []
        if optimizers:
            self.log("train/lr", float(optimizers[0].param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None  # bicubic / sinc: nothing to train
        hp = self.hparams
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        epochs = self.trainer.max_epochs if self.trainer is not None and self.trainer.max_epochs else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=hp.lr_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ evaluation
    def _expected_slices(self, split: str) -> Dict[str, int]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "slices_per_volume"):
            try:
                return dm.slices_per_volume(split)
            except Exception:  # pragma: no cover - volumes are then scored at epoch end
                return {}
        return {}

    def _eval_step(self, batch: IconetSample, batch_idx: int, prefix: str) -> Dict[str, Any]:
        deg = self.degrade(batch)
        out = self(deg)
        loss, _ = self.loss_fn(out, deg)
        sr = self.magnitude(out.sr)
        bicubic = self.bicubic(deg)
        bs = sr.shape[0]
        self.log(f"{prefix}/loss", loss, batch_size=bs, sync_dist=True)
        targets = deg.hr_target[:, 0].float().cpu().numpy()
        sr_np = sr[:, 0].cpu().numpy()
        bic_np = bicubic[:, 0].float().cpu().numpy()
        for i in range(bs):
            self._val_acc.add(
                batch.fname[i], int(batch.slice_num[i]), targets[i], {"": sr_np[i], "bicubic": bic_np[i]}
            )
        if prefix == "val" and batch_idx == 0:
            self._log_panels(deg, out, sr)
        return {"fname": list(batch.fname), "slice_num": batch.slice_num, "reconstruction": sr[:, 0].cpu()}

    def _start_eval(self, split: str) -> None:
        self._val_acc = VolumeAccumulator(self._expected_slices(split))

    def _end_eval(self, prefix: str) -> Dict[str, float]:
        results = self._val_acc.finalize()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, results)
            results = merge_results(parts)
        summary = summarize(results)
        for name, value in summary.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name in ("psnr", "ssim"), sync_dist=False)
        self.log(f"{prefix}/num_volumes", float(len(results)), sync_dist=False)
        self._stage_results[prefix] = results
        self._val_acc = None
        path = self.hparams.volume_metrics_file
        if path and self.global_rank == 0 and not self.trainer.sanity_checking:
            payload = {"stage": prefix, "epoch": int(self.current_epoch), "summary": summary, "volumes": results}
            atomic_write_json(path, payload, indent=1, sort_keys=True)
        return summary

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def validation_step(self, batch: IconetSample, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch: IconetSample, batch_idx: int) -> Dict[str, Any]:
        return self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def predict_step(self, batch: IconetSample, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        """HR reconstructions keyed by (file name, slice): ``{"fname", "slice_num", "reconstruction"}``."""
        deg = self.degrade(batch)
        sr = self.magnitude(self(deg).sr)
        return {"fname": list(batch.fname), "slice_num": batch.slice_num.cpu(), "reconstruction": sr[:, 0].cpu()}

    @property
    def volume_results(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """Per-volume metrics of the last validation/test epoch, by stage prefix."""
        return self._stage_results

    # ------------------------------------------------------------------ images
    def _log_panels(self, deg: Degraded, out, sr: torch.Tensor) -> None:
        """Labelled panels (:func:`~iconet_fastmri.figures.validation_panel`) of the first slices, TensorBoard only."""
        logger = self.logger
        if logger is None or self.hparams.num_log_images <= 0 or self.global_rank != 0:
            return
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):  # only TensorBoard draws images
            return
        from ..figures import validation_panel

        for i in range(min(self.hparams.num_log_images, sr.shape[0])):
            prior = self.magnitude(out.rec_stages[0][i : i + 1])[0, 0].cpu().numpy() if out.rec_stages else None
            rgb, _ = validation_panel(
                deg.lr_input[i, 0].float().cpu().numpy(), prior, sr[i, 0].cpu().numpy(),
                deg.hr_target[i, 0].float().cpu().numpy(),
            )
            experiment.add_image(f"val/panel_{i}", rgb, global_step=self.global_step, dataformats="HWC")

    # ------------------------------------------------------------------ report
    def on_fit_end(self) -> None:
        started = getattr(self, "_fit_started", None)
        if started is not None:
            minutes, seconds = divmod(time.perf_counter() - started, 60)
            rank_zero_info(f"[iconet-fastmri] fit took {int(minutes)} min {seconds:.0f} s "
                           f"({self.trainer.global_step} steps)")
        metrics = self.trainer.callback_metrics
        if "val/psnr" not in metrics or "val/psnr_bicubic" not in metrics:
            return
        psnr, ssim = float(metrics["val/psnr"]), float(metrics.get("val/ssim", float("nan")))
        psnr_b, ssim_b = float(metrics["val/psnr_bicubic"]), float(metrics.get("val/ssim_bicubic", float("nan")))
        verdict = "beats" if psnr > psnr_b else "does NOT beat"
        rank_zero_info(
            f"\n[iconet-fastmri] final validation: PSNR {psnr:.2f} dB, SSIM {ssim:.4f} | "
            f"bicubic on zero-filled: PSNR {psnr_b:.2f} dB, SSIM {ssim_b:.4f} -> "
            f"{self.method_name} {verdict} the bicubic baseline by {psnr - psnr_b:+.2f} dB"
        )
