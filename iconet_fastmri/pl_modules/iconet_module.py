"""ICONet (or any :class:`~iconet_fastmri.models.SRModel`) trained on k-space-simulated LR acquisitions.

Per batch, on the device: the run's :class:`~iconet_fastmri.physics.acquisition.Acquisition`
simulates the LR input and all targets (FFTs in float32 under ``bf16-mixed``), ``network_input``
forms the network's input (coil maps included), the model runs, ``MultiStageLoss`` compares every stage. Per-volume evaluation is :class:`~.mri_module.MriModule`'s;
the bicubic-on-zero-filled baseline is scored alongside (``val/psnr_bicubic`` ...).
"""

from __future__ import annotations

import logging
from typing import Literal, Optional, Tuple

import torch
from torch import nn

from ..data.transforms import IconetSample
from ..losses import MultiStageLoss, complex_stage_targets
from ..models import MODELS, BicubicSR, SRModel, model_spec
from ..models.coil_maps import LearnedMaps
from ..models.common import SROutput, magnitude
from ..models.network_input import NetworkInput, check_map_settings, network_input
from ..models.patches import cut_patches, warn_window_statistics
from ..physics.acquisition import Acquisition, Degraded
from ..physics.sense import estimate_maps_espirit
from .mri_module import EvalBatch, MriModule
from .optim import adam_with_cosine

__all__ = ["IconetModule"]

log = logging.getLogger(__name__)


class IconetModule(MriModule):
    """The training step of an SR network on simulated acquisitions.

    Args:
        model: the network, an :class:`~iconet_fastmri.models.SRModel` of a registered class
            (``model: {model: {class_path: iconet_fastmri.models.ICONet, init_args: {width: 32}}}``).
            The CLI fills its ``scale`` from ``data.scale`` and its ``in_chans`` from ``mode``.
            Checkpoints store ``{"class_path", "init_args"}`` (never the pickled object).
        acquisition: the :class:`~iconet_fastmri.physics.acquisition.Acquisition` that simulates
            each batch: the data module's own object (the CLI passes it; configured once, under
            ``data``). Default: the model's scale, the batches' masks, no noise. Checkpoints store its spec.
        mode: ``"magnitude"`` (1 channel, the paper's) or ``"complex"`` (2 channels: the complex LR
            image, SENSE-combined for multi-coil data; needed for DC); must match the model's ``in_chans``.
        lambda_sr, lambda_rec, supervise: the multi-stage loss.
        lr, betas, weight_decay: Adam.
        lr_min: end of the cosine decay (over ``trainer.max_epochs``).
        scheduler: ``"cosine"`` or ``"none"``.
        compile: ``torch.compile`` the model's forward (weights stay under ``model.``).
        channels_last: weights and input in ``torch.channels_last`` (NHWC), cuDNN's bf16 layout; on an
            H200 it took bf16 + compile from 1.57x to 2.03x eager fp32 (docs/GPU.md).
        coil_maps: maps of complex multi-coil runs (SENSE input, DC) from the calibration lines: ``"rss"``;
            ``"learned"``, refined by a U-Net trained with the model (``models/coil_maps.py``, ``map_net.``);
            ``"espirit"``, the batch's own when shards carry them, else computed per slice (sigpy, slow).
        map_chans, map_pools: width and depth of the learned refinement's U-Net.
        lambda_phase: complex mode only: weight of a phase-aware term, the same multi-stage
            L1 on the (real, imag) channels against complex targets
            (:func:`~iconet_fastmri.losses.complex_stage_targets`). The magnitude loss leaves
            the phase free, and DC then mixes measured samples with a wrong-phase estimate
            (docs/MULTICOIL.md). 0 turns it off.
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        acquisition: Optional[Acquisition] = None,
        mode: Literal["magnitude", "complex"] = "magnitude",
        lambda_sr: float = 0.8,
        lambda_rec: float = 0.2,
        supervise: Literal["all_stages", "last_stage"] = "all_stages",
        lr: float = 2e-4,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        lr_min: float = 1e-6,
        scheduler: Literal["cosine", "none"] = "cosine",
        compile: bool = False,
        channels_last: bool = False,
        lambda_phase: float = 0.0,
        coil_maps: Literal["rss", "learned", "espirit"] = "rss",
        map_chans: int = 8,
        map_pools: int = 4,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError("IconetModule needs a model: name one (--model.model ICONet, or model.model.class_path"
                             " in the config) or give --ckpt_path of a checkpoint, whose model is then used")
        if not isinstance(model, SRModel):
            raise TypeError(f"model must be an iconet_fastmri.models.SRModel (got {type(model).__name__}); "
                            f"see docs/ARCHITECTURE.md, 'Add a model'")
        for name, value, choices in (("mode", mode, ("magnitude", "complex")),
                                     ("scheduler", scheduler, ("cosine", "none")), ("coil_maps", coil_maps, ("rss", "learned", "espirit"))):
            if value not in choices:  # the CLI checks these Literals; direct construction is checked here
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if coil_maps != "rss" and mode != "complex":
            raise ValueError(f"coil_maps={coil_maps!r} serves complex multi-coil runs: set mode: complex (or coil_maps: rss)")
        if lambda_phase < 0 or (lambda_phase > 0 and mode != "complex"):
            raise ValueError(f"lambda_phase must be >= 0 (got {lambda_phase}) and supervises a complex output: set mode: complex")
        self.in_chans = 1 if mode == "magnitude" else 2
        if model.in_chans != self.in_chans:
            raise ValueError(f"mode={mode!r} feeds {self.in_chans} channel(s) but the model has in_chans="
                             f"{model.in_chans} (the CLI sets it from --model.mode)")
        self.save_hyperparameters(ignore=["model", "acquisition"])
        self.hparams["model"] = model_spec(model)
        self.model = model
        self._use_acquisition(acquisition if acquisition is not None else Acquisition(model.scale))
        self._own_acquisition = acquisition is not None
        self.map_net = LearnedMaps(map_chans, map_pools) if coil_maps == "learned" else None
        self.scale = model.scale
        self.method_name = MODELS.name_of(type(model)) or type(model).__name__
        self.uses_dc = bool(model.uses_kspace)
        self._bicubic_baseline = BicubicSR(self.scale)  # no parameters, no state
        self.loss_fn = MultiStageLoss(lambda_sr=lambda_sr, lambda_rec=lambda_rec, supervise=supervise)
        self._compiled = None

    # ------------------------------------------------------------------ forward path
    def configure_model(self) -> None:  # after the weights are placed on the device
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._compiled is None:
            if self.device.type == "cpu":  # measured: inductor's warm-up took over 150 s for ICONet
                log.warning("torch.compile on the CPU: its warm-up costs more than a short CPU run saves")
            object.__setattr__(self, "_compiled", torch.compile(self.model))  # not a child: keys stay "model."

    def _use_acquisition(self, acquisition: Acquisition) -> None:
        if acquisition.scale != self.model.scale:  # the one place where network and acquisition meet
            raise ValueError(f"the model upsamples x{self.model.scale} but the acquisition is x{acquisition.scale}")
        self.acquisition = acquisition
        self.hparams["acquisition"] = acquisition.spec()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not self._own_acquisition and isinstance(getattr(dm, "acquisition", None), Acquisition):
            self._use_acquisition(dm.acquisition)  # built without the CLI: the data module's, as the CLI passes it
        warn_window_statistics(self.model, getattr(dm, "patch_size", None) if stage == "fit" else None)
        check_map_settings(self.hparams.coil_maps, getattr(dm, "challenge", None), self.in_chans, self.acquisition,
                           getattr(dm, "hr_crop", None), self.hparams.lambda_phase, getattr(dm, "stores_images", True))

    def degrade(self, batch: IconetSample) -> Degraded:  # the acquisition of a collated batch
        return self.acquisition.simulate(batch.hr_images, batch.mask, batch.compact)

    def map_estimator(self, maps: Optional[torch.Tensor] = None):  # (kspace, mask) -> maps; ``maps``: stored
        if maps is not None and self.hparams.coil_maps == "espirit":
            return lambda kspace, mask: maps.to(kspace.device)
        return {"rss": self.acquisition.estimate_maps, "learned": self.map_net, "espirit": estimate_maps_espirit}[
            self.hparams.coil_maps]

    def model_input(self, deg: Degraded, maps: Optional[torch.Tensor] = None) -> NetworkInput:  # maps travel in it
        return network_input(deg, self.in_chans, self.uses_dc, self.map_estimator(maps))

    def forward(self, inputs: NetworkInput) -> SROutput:
        x = inputs.image.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else inputs.image
        net = self._compiled if self._compiled is not None else self.model
        return net(x, norm_scale=inputs.norm_scale, **inputs.dc)

    @staticmethod
    def magnitude(image: torch.Tensor) -> torch.Tensor:  # (B, 1|2, H, W) -> (B, 1, H, W) float32, for metrics
        return magnitude(image.float(), eps=0.0)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: IconetSample, batch_idx: int) -> torch.Tensor:
        deg = self.degrade(batch)  # whole slices, also with data.patch_size (models/patches.py)
        inputs = self.model_input(deg, batch.maps)
        phase_targets = complex_stage_targets(batch.hr_images, deg, inputs.maps) if self.hparams.lambda_phase > 0 else ()
        deg, inputs, phase_targets = cut_patches(deg, inputs, batch.patch, self.model.norm_eps, phase_targets)
        out = self(inputs)
        loss, terms = self.loss_fn(out, deg.stage_targets, deg.rec_targets)
        if phase_targets:
            phase, _ = self.loss_fn(out, *phase_targets)
            terms["phase"] = phase.detach()
            loss = loss + self.hparams.lambda_phase * phase
        bs = deg.hr_target.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log_dict({f"train/{name}": value for name, value in terms.items() if name != "total"}, batch_size=bs)
        return loss

    def on_train_epoch_start(self) -> None:
        for optimizer in self.trainer.optimizers[:1]:
            self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        hp, epochs = self.hparams, (self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1)
        return adam_with_cosine(self.parameters(), hp.lr, hp.betas, hp.weight_decay, hp.scheduler, hp.lr_min, epochs)

    # ------------------------------------------------------------------ evaluation (MriModule)
    def evaluate_batch(self, batch: IconetSample) -> EvalBatch:
        deg = self.degrade(batch)
        out = self(self.model_input(deg, batch.maps))
        loss, _ = self.loss_fn(out, deg.stage_targets, deg.rec_targets)
        prior = self.magnitude(out.rec_stages[0])[:, 0] if out.rec_stages else None
        return EvalBatch(
            loss=loss, reconstruction=self.magnitude(out.sr)[:, 0], target=deg.hr_target[:, 0].float(),
            baselines={"bicubic": self._bicubic_baseline(deg.lr_input).sr[:, 0].float()},
            images={"lr_input": deg.lr_input[:, 0].float(), "prior": prior},
        )

    def reconstruct(self, batch: IconetSample) -> torch.Tensor:
        return self.magnitude(self(self.model_input(self.degrade(batch), batch.maps)).sr)[:, 0]
