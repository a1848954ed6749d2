#!/usr/bin/env python
"""Train / validate / test / predict ICONet on fastMRI data (a LightningCLI).

    python scripts/train_iconet_fastmri.py fit --config configs/demo.yaml

Your own masks, acquisition effects and models are named by dotted path,
``--data.mask.name my_masks.EveryOtherLine``,
``--data.kspace_steps '[{"name": "my_steps.GainDrift"}]'``,
``--model.model my_models.TinySR``: the module is looked for on
``PYTHONPATH`` and in the folder you run the command from (after the
installed packages), and imported because your command names it
(:mod:`iconet_fastmri.registry`; a checkpoint never makes us import one).
See docs/ARCHITECTURE.md, "Add a mask".

A refused run (a bad value, file or checkpoint) prints its message alone and
exits with status 1; set ``ICONET_DEBUG=1`` for the traceback.

See ``python scripts/train_iconet_fastmri.py fit --help`` and README.md.
"""

from iconet_fastmri.cli import run

if __name__ == "__main__":
    run()
