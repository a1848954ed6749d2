#!/usr/bin/env python
"""Train / validate / test / predict ICONet on fastMRI data (a LightningCLI).

    python scripts/train_iconet_fastmri.py fit --config configs/demo.yaml

See ``python scripts/train_iconet_fastmri.py fit --help`` and README.md.
"""

from iconet_fastmri.cli import main

if __name__ == "__main__":
    main()
