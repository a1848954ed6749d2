"""The ``iconet-fastmri`` command: a LightningCLI with ``fit / validate / test / predict``.

Examples::

    iconet-fastmri fit --config configs/demo.yaml
    iconet-fastmri fit --config configs/knee_singlecoil_x2.yaml --data.data_path /data/knee
    iconet-fastmri fit --config configs/demo.yaml --data.mask.name poisson --data.mask.accelerations [6]
    iconet-fastmri fit --config configs/demo.yaml --ckpt_path last      # resume

What the CLI adds to Lightning's:

* ``data.scale`` is linked to ``model.scale`` (set it once);
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
from .pl_modules import IconetDataModule, IconetModule

__all__ = ["IconetCLI", "main"]


class IconetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.scale", "model.scale")
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
            load_checkpoint(ckpt)
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
