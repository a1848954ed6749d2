#!/usr/bin/env python
"""Train / validate / test / predict ICONet on fastMRI data (a LightningCLI).

    python scripts/train_iconet_fastmri.py fit --config configs/demo.yaml

See ``python scripts/train_iconet_fastmri.py fit --help`` and README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iconet_fastmri.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
