"""The ``iconet-fastmri`` command: a LightningCLI with ``fit / validate / test / predict``.

Examples::

    iconet-fastmri fit --config configs/demo.yaml
    iconet-fastmri fit --config configs/knee_singlecoil_x2.yaml --data.data_path /data/knee
    iconet-fastmri fit --config configs/demo.yaml --data.mask.name poisson --data.mask.accelerations [6]
    iconet-fastmri fit --config configs/demo.yaml --ckpt_path last      # resume

What the CLI adds to Lightning's:

* the network is injected: ``model.model`` takes any registered model by
  ``class_path``/``init_args`` (``--model.model ICONet --model.model.init_args.width 32``;
  ``--model.model.help ICONet`` lists its arguments);
* the acquisition model lives under ``data``: ``data.scale`` is linked to the
  network's ``scale``, and ``data.noise_std`` / ``data.kspace_steps`` to the
  Lightning module (set each once), and ``model.mode`` sets the network's ``in_chans``;
* a checkpoint callback (``checkpoint.*``, :class:`~iconet_fastmri.callbacks.IconetCheckpoint`)
  keeping the best ``val/psnr`` and an always-current ``last.ckpt`` in a fixed
  folder, so ``--ckpt_path last`` resumes;
* the resolved config is saved with every run (``config.yaml`` in the log folder);
* ``use_distributed_sampler`` is off: the data module gives validation whole
  volumes per rank with fastmri's ``VolumeSampler``;
* unknown config keys are errors (jsonargparse), never silently ignored;
* checkpoints (``--ckpt_path``) are loaded with ``weights_only=True`` and
  checked against :mod:`iconet_fastmri.checkpoints`' allow-list first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .callbacks import IconetCheckpoint
from .checkpoints import load_checkpoint
from .models import registered_name
from .pl_modules import IconetDataModule, IconetModule

__all__ = ["IconetCLI", "main"]


def mode_channels(mode: str) -> int:
    """Input channels of a ``model.mode``: 1 for magnitude, 2 for complex (real, imag)."""
    return 1 if mode == "magnitude" else 2


class IconetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.scale", "model.model.init_args.scale")
        parser.link_arguments("data.noise_std", "model.noise_std")
        parser.link_arguments("data.kspace_steps", "model.kspace_steps")
        parser.link_arguments("model.mode", "model.model.init_args.in_chans", compute_fn=mode_channels)
        parser.add_lightning_class_args(IconetCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/psnr",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.use_distributed_sampler": False,
                "trainer.gradient_clip_val": 1.0,
            }
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters while parsing; check the file
        # with our allow-list first, so a crafted checkpoint gets our clear refusal.
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            hparams = load_checkpoint(ckpt).get("hyper_parameters") or {}
            spec = hparams.get("model")
            if isinstance(spec, dict) and "class_path" in spec:
                # Lightning would import the checkpoint's class path: only registered models pass.
                try:
                    registered_name(spec["class_path"])
                except ValueError as err:
                    raise ValueError(f"checkpoint {ckpt}: {err}") from None
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        # A fixed checkpoint folder under the run folder, so that `--ckpt_path last` finds last.ckpt.
        if config.get("checkpoint") is not None and not config["checkpoint"].get("dirpath"):
            root = config["trainer"].get("default_root_dir") or "runs/default"
            config["checkpoint"]["dirpath"] = f"{root}/checkpoints"
        # Checkpoints are loaded with weights_only=True unless the user says otherwise, and
        # checked first with our allow-list, so that a crafted file is refused with a clear error.
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True
        ckpt = config.get("ckpt_path")
        if ckpt and config.get("weights_only", True):
            if ckpt == "last" and config.get("checkpoint") is not None:
                ckpt = str(Path(config["checkpoint"]["dirpath"]) / "last.ckpt")
            if ckpt not in ("best", "last", "hpc", "registry") and Path(ckpt).is_file():
                load_checkpoint(ckpt)


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of ``iconet-fastmri`` and ``scripts/train_iconet_fastmri.py``."""
    IconetCLI(
        IconetModule,
        IconetDataModule,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
