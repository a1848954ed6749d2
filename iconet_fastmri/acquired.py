"""Reconstruct real low-resolution acquisitions: no ground truth, a data-consistency residual instead.

``run_inference.py --acquired`` (:func:`reconstruct_acquired`) reads low-resolution
acquisition files (:mod:`iconet_fastmri.data.lr_files`, e.g. made by
``scripts/make_lr_acquisition.py``), puts each slice on the model's grid in training's
intensity convention, feeds the network the input it was trained on
(:func:`~iconet_fastmri.models.network_input.measured_input`, with data consistency
on the file's own samples and mask where the model has it), and writes fastMRI-format
reconstructions on the s-times grid plus a table (``acquired.csv``) with, per volume:

* the acquired acceleration on the LR grid and the effective one against the HR grid (s²·R);
* the k-space data-consistency residual ``‖M·F·T·x̂ − y‖ / ‖y‖`` of the output against
  the measured samples (complex models only: a magnitude output has no phase to
  compare; multi-coil outputs go through the coil maps, sinc-interpolated to the
  output grid and renormalised).

A scan whose phase encode is oversampled (fastMRI's files: 368 columns for 320) keeps
its samples on its own wider grid for data consistency
(:func:`~iconet_fastmri.models.measured.oversampled_input`,
:class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`; docs/ACQUIRED.md).
The files are read through :class:`~iconet_fastmri.data.lr_dataset.AcquiredChunks`
and reconstructed by the module's ``predict_step``
(:func:`~iconet_fastmri.models.measured.reconstruct_chunk`), as the CLI's ``predict`` on
such a folder does.

Refused before any work, naming the file and the numbers: a file written for another
scale (its ``lr_scale``), a header that disagrees with the array (see
:func:`~iconet_fastmri.data.lr_files.read_lr_file`), a 2D sampling pattern for a model
trained on 1D masks or the reverse. An acceleration far from training's is a warning
stating both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from .data.lr_dataset import AccelerationWarning, AcquiredChunks
from .inference import load_method
from .io import check_outputs_apart
from .models.measured import dc_residual
from .predictions import VolumeAssembler, acquired_attributes, check_writable, write_acquired_table

__all__ = ["reconstruct_acquired", "dc_residual", "AccelerationWarning"]


def reconstruct_acquired(
    checkpoint: Union[str, Path],
    data_path: Union[str, Path],
    out_dir: Union[str, Path],
    batch_size: int = 8,
    device: Optional[str] = None,
    overwrite: bool = False,
) -> Tuple[List[Path], List[Dict[str, object]]]:
    """Reconstruct every low-resolution acquisition file of ``data_path`` into ``out_dir``.

    Returns the written files and the table's rows (also written to ``out_dir/acquired.csv``).
    """
    out_dir, data_path = Path(out_dir), Path(data_path)
    check_outputs_apart({"out_dir": out_dir}, {"data_path": data_path})
    check_writable(out_dir)
    files = sorted(data_path.glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"{data_path}: no .h5 files")
    existing = [f.name for f in files if (out_dir / f.name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds results for {len(existing)} volume(s) "
                              f"(e.g. {existing[0]}); pass --overwrite to replace them")
    module, trained, method = load_method(checkpoint, None, None)
    scale = int(module.scale)
    dataset = AcquiredChunks.for_module(data_path, module, batch_size)  # every file checked, before any work
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device_t).eval()
    assembler = VolumeAssembler(out_dir, dataset.slices_per_volume(), acquired_attributes(method, str(checkpoint), scale),
                                {v.fname: str(v.attrs.get("acquisition", "")) for v in dataset.volumes})
    with torch.inference_mode():
        for i, chunk in enumerate(dataset):  # the CLI's predict step: reconstruct_chunk, finite or refused
            out = module.predict_step(chunk.to(device_t), i)
            extras = {k: v.float().numpy() for k, v in out.items() if k not in ("fname", "slice_num", "reconstruction")}
            assembler.add_acquired(chunk, out["reconstruction"].numpy(), extras)
    written = assembler.finish()
    return written, write_acquired_table(out_dir, dataset.volumes, assembler.volume_attrs, scale)
