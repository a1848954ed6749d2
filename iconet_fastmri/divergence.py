"""Non-finite numbers stop the run: a diverged fit, NaN weights, a NaN reconstruction.

A fit whose loss turns NaN or infinite used to run to its end and exit 0,
with every weight of ``best`` and ``last`` NaN ("PSNR nan dB").
:class:`StopOnNonFinite` (registered by the CLI, ``--divergence.*``) stops it
at the first non-finite number, naming the step:

* the training loss of every batch, and the gradients, are checked before the
  optimiser applies them (``on_before_optimizer_step``, one device sync per
  step): the weights are still the last finite ones, and
  :class:`~iconet_fastmri.callbacks.IconetCheckpoint` saves them to
  ``last.ckpt`` as the run ends. Under fp16 with a gradient scaler,
  non-finite gradients are the scaler's business (it skips that step) and
  only the loss is checked;
* the weights the previous step left, in the same sync (every
  ``check_weights_every_n_steps`` steps), when training starts (a resumed
  checkpoint) and when it ends. Weights that an overflowing update made
  non-finite are never saved (:class:`~iconet_fastmri.callbacks.IconetCheckpoint`
  refuses them, keeping the last finite ``last.ckpt``).

:func:`check_finite_state` refuses a checkpoint with NaN/Inf weights (inference
and the CLI's ``--ckpt_path``), and :func:`check_finite_reconstruction` a
NaN/Inf reconstruction before it is written (``run_inference`` and ``predict``),
each naming the file and the tensor or slice.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch

__all__ = [
    "NonFiniteError",
    "StopOnNonFinite",
    "TrainingDiverged",
    "check_finite_reconstruction",
    "check_finite_state",
    "non_finite_tensors",
]


class NonFiniteError(ValueError):
    """A loss, weight or reconstruction that is NaN or infinite (the message says which, and where)."""


class TrainingDiverged(NonFiniteError):
    """``fit`` stopped: its loss, gradients or weights became non-finite."""


def non_finite_tensors(named: Iterable[Tuple[str, Any]]) -> List[Tuple[str, int]]:
    """``(name, number of NaN/Inf values)`` of each floating-point tensor that holds any."""
    bad = []
    for name, value in named:
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append((name, count))
    return bad


def check_finite_state(state: Mapping[str, Any], where: str) -> None:
    """Refuse a state dict with NaN/Inf values, naming ``where`` (the file) and the tensors."""
    bad = non_finite_tensors(state.items())
    if bad:
        shown = ", ".join(f"{name} ({count} value(s))" for name, count in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteError(
            f"{where} holds non-finite (NaN/Inf) weights: {shown}{more}. The run that wrote it diverged; "
            f"use an earlier checkpoint of it"
        )


def check_finite_reconstruction(sr: Any, fnames: Sequence[str], slices: Any, method: str) -> None:
    """Refuse to write a NaN/Inf reconstruction ``(B, H, W)``: an error naming the method, file and slice."""
    sr = torch.as_tensor(sr)
    finite = torch.isfinite(sr.reshape(sr.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = [(str(fnames[i]), int(slices[i])) for i in torch.nonzero(~finite).flatten().tolist()]
    raise NonFiniteError(
        f"{method}: the reconstruction of {bad[0][0]} slice {bad[0][1]} is non-finite (NaN/Inf)"
        + (f" (and {len(bad) - 1} more slice(s) of this batch)" if len(bad) > 1 else "")
        + "; it was not written. The model's output overflows on this input, or its weights are broken"
    )


def _first_bad(named: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> Optional[str]:
    for name, tensor in named:
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _all_finite(tensors: List[torch.Tensor]) -> torch.Tensor:
    """One boolean tensor (no device sync yet): every element of every tensor is finite."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


class StopOnNonFinite(pl.Callback):
    """Stop ``fit`` at the first non-finite training loss, gradient or weight (see the module docstring).

    Args:
        check_weights_every_n_steps: check every weight every this many optimiser
            steps (1: every step, in the same device sync as the loss and gradients;
            0: only when training starts). The loss and gradients are checked at
            every step regardless.
    """

    def __init__(self, check_weights_every_n_steps: int = 1) -> None:
        if isinstance(check_weights_every_n_steps, bool) or int(check_weights_every_n_steps) < 0:
            raise ValueError(f"check_weights_every_n_steps must be >= 0, got {check_weights_every_n_steps!r}")
        self.check_weights_every_n_steps = int(check_weights_every_n_steps)
        self._losses: List[torch.Tensor] = []
        self._batch_idx = 0

    # ------------------------------------------------------------------ where we are
    def _where(self, trainer: "pl.Trainer") -> str:
        return (f"optimiser step {trainer.global_step + 1} (epoch {trainer.current_epoch}, "
                f"batch {self._batch_idx})")

    def _stop(self, trainer: "pl.Trainer", what: str) -> None:
        raise TrainingDiverged(
            f"training diverged at {self._where(trainer)}: {what}. Stopped before this step changed the "
            f"weights: they are still the finite ones of step {trainer.global_step} (the checkpoint callback saves "
            f"them to last.ckpt as the run stops). "
            f"Lower --model.lr, or check the data's scale and --data.noise_std"
        )

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        bad = non_finite_tensors(pl_module.named_parameters())
        if bad:
            name, count = bad[0]
            raise NonFiniteError(
                f"the weights training starts from are non-finite (NaN/Inf): {name} ({count} value(s))"
                + (f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else "")
                + (f"; they come from {trainer.ckpt_path}" if getattr(trainer, "ckpt_path", None) else "")
            )

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())  # checked with the gradients: one sync per optimiser step

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        # Before the optimiser applies this step: its loss(es) and gradients, and the weights the
        # previous step left (every n steps), all in one device sync.
        losses, self._losses = self._losses, []
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        params = list(pl_module.named_parameters())
        grads = [] if scaler is not None else [p.grad for _, p in params if p.grad is not None]
        n = self.check_weights_every_n_steps
        weights = [p.detach() for _, p in params] if n and trainer.global_step % n == 0 else []
        if bool(_all_finite(losses + grads + weights)):
            return
        if weights and not bool(_all_finite(weights)):
            self._weights_diverged(trainer, _first_bad((name, p.detach()) for name, p in params))
        bad_loss = [float(v) for v in losses if not bool(torch.isfinite(v).all())]
        if bad_loss:
            self._stop(trainer, f"the training loss is {bad_loss[0]}")
        name = _first_bad((name, p.grad) for name, p in params)
        self._stop(trainer, f"the gradient of {name} is non-finite (NaN/Inf) while the loss is finite")

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any,
                           **kwargs: Any) -> None:
        if self._losses:  # no optimiser step this batch (gradient accumulation): its loss alone
            losses, self._losses = self._losses, []
            if not bool(_all_finite(losses)):
                self._stop(trainer, f"the training loss is {float(losses[-1])}")

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        params = list(pl_module.named_parameters())  # the update of the last step
        if self.check_weights_every_n_steps and not bool(_all_finite([p.detach() for _, p in params])):
            self._weights_diverged(trainer, _first_bad((name, p.detach()) for name, p in params))

    def _weights_diverged(self, trainer: "pl.Trainer", name: Optional[str]) -> None:
        raise TrainingDiverged(
            f"training diverged: the update of optimiser step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}) made the weights non-finite (NaN/Inf), first {name}, although its loss "
            f"and gradients were finite: the update overflowed. No checkpoint is written from these weights; "
            f"lower --model.lr"
        )
