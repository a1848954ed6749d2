"""The optimiser of a training run: Adam, with an optional per-epoch cosine decay."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

__all__ = ["adam_with_cosine"]


def adam_with_cosine(parameters: Iterable[torch.nn.Parameter], lr: float, betas: Sequence[float],
                     weight_decay: float, scheduler: str, lr_min: float, epochs: int) -> Any:
    """Lightning's ``configure_optimizers`` value: Adam on the trainable parameters, and with
    ``scheduler="cosine"`` a cosine decay from ``lr`` to ``lr_min`` over ``epochs`` (stepped per epoch).

    ``None`` when nothing is trainable (bicubic, sinc).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return None
    optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if scheduler == "none":
        return optimizer
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(epochs)), eta_min=lr_min)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
