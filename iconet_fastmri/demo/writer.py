"""Write simulated volumes as fastMRI HDF5 files, and the demo train/val splits.

:func:`write_fastmri_dataset` writes one file per volume atomically (through
:func:`iconet_fastmri.io.atomic_write`); :func:`make_demo_splits` writes or
reuses ``{challenge}_train`` / ``{challenge}_val`` folders for the demo.

File layout (one HDF5 file per volume, identical to fastMRI):

* ``kspace``: complex64, ``(slices, H_k, W_k)`` (singlecoil) or
  ``(slices, coils, H_k, W_k)`` (multicoil). Dim -2 is the readout
  direction, oversampled twice like the real scans, so ``H_k = 2 * rh``;
  dim -1 is the phase-encode direction, a little wider than the
  reconstruction (default :func:`default_kspace_width`, e.g. 128 -> 144,
  like the 320 -> 368 of the knee data). Every phase-encode line is sampled
  (no zero padding), so fastMRI's ``padding_left == 0`` and
  ``padding_right == W_k``.
* ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss`` (multicoil):
  float32 ``(slices, rh, rw)``, the centre crop of ``|x|`` or of the
  root-sum-of-squares over coils of the coil images ``x`` reconstructed
  from the *stored* (noisy, complex64) k-space.
* ``ismrmrd_header``: an ISMRMRD XML document (bytes) carrying
  ``encodedSpace``/``reconSpace`` matrix sizes and fields of view and the
  ``kspace_encoding_step_1`` limits that ``SliceDataset`` parses.
* File attributes ``acquisition`` (``CORPD_FBK``, ``CORPDFS_FBK``,
  ``AXT2``, ``AXT1``, ``AXFLAIR``), ``max`` and ``norm`` (maximum and
  Frobenius norm of the target volume) and ``patient_id``.

The k-space convention (centred, orthonormal FFT) and the noise model are
described in :mod:`.acquisition`.

Everything is deterministic given ``seed``: volume ``i`` draws from
``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from ..io import atomic_write, remove_stale_partials
from .acquisition import _RECON_KEYS, SyntheticVolume, ismrmrd_header, simulate_volume
from .phantoms import default_kspace_width

log = logging.getLogger(__name__)

__all__ = ["make_demo_splits", "write_fastmri_dataset"]

PathLike = Union[str, os.PathLike]


def _volume_path(out_dir: pathlib.Path, prefix: str, index: int) -> pathlib.Path:
    return out_dir / f"{prefix}{index:03d}.h5"


def _write_volume(path: pathlib.Path, vol: SyntheticVolume, header: bytes, patient_id: str) -> None:
    """Create the HDF5 file ``path`` holding one volume in fastMRI's layout."""
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=vol.kspace)
        hf.create_dataset(vol.recon_key, data=vol.target)
        hf.create_dataset("ismrmrd_header", data=np.bytes_(header))
        hf.attrs["acquisition"] = vol.acquisition
        hf.attrs["max"] = float(vol.target.max())
        hf.attrs["norm"] = float(np.linalg.norm(vol.target.astype(np.float64)))
        hf.attrs["patient_id"] = patient_id


def write_fastmri_dataset(
    out_dir: PathLike,
    challenge: str,
    num_volumes: int,
    slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    num_coils: int = 8,
    noise_level: float = 0.005,
    seed: int = 0,
    prefix: str = "file_demo_",
    anatomy: str = "mixed",
    image_scale: float = 1e-4,
    first_index: int = 0,
    progress: bool = False,
) -> List[pathlib.Path]:
    """Write ``num_volumes`` synthetic volumes as fastMRI HDF5 files.

    Volume ``i`` (``first_index <= i < first_index + num_volumes``) is drawn
    from ``numpy.random.default_rng([seed, i])`` and written atomically to
    ``out_dir / f"{prefix}{i:03d}.h5"`` with ``patient_id`` ``"synthetic-{seed}-{i:04d}"``.
    The file layout is described in the module docstring; the files are
    readable by ``fastmri.data.SliceDataset(root=out_dir, challenge=challenge)``.

    Args:
        out_dir: destination folder (created if missing).
        challenge: "singlecoil" or "multicoil".
        num_volumes: number of files.
        slices: slices per volume ``S``.
        recon_size: ``(rh, rw)``; k-space has ``H_k = 2 * rh`` rows.
        kspace_width: ``W_k`` (default :func:`default_kspace_width` of ``rw``).
        num_coils: coils ``C`` (multicoil only).
        noise_level: k-space noise std relative to the maximum image magnitude.
        seed: base seed.
        prefix: file-name prefix.
        anatomy: "knee", "brain" or "mixed".
        image_scale: maximum image magnitude before noise.
        first_index: index of the first volume (to keep names and draws
            distinct across splits).
        progress: a progress bar over volumes.

    Returns:
        Paths of the written files, in index order.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rh, rw = (int(n) for n in recon_size)
    Wk = default_kspace_width(rw) if kspace_width is None else int(kspace_width)
    paths = []
    indices: Any = range(first_index, first_index + num_volumes)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"demo data {out.name}", unit="volume")
    for index in indices:
        vol = simulate_volume(
            challenge, slices, (rh, rw), Wk, num_coils, noise_level, anatomy, image_scale,
            seed=np.random.default_rng([seed, index]),
        )
        header = ismrmrd_header((2 * rh, Wk), (rh, rw), slices,
                                num_coils if challenge == "multicoil" else 1, vol.acquisition)

        path = _volume_path(out, prefix, index)
        patient_id = f"synthetic-{seed}-{index:04d}"
        atomic_write(path, lambda tmp: _write_volume(tmp, vol, header, patient_id))
        paths.append(path)
    return paths


#: Marks a data_path whose split folders :func:`make_demo_splits` wrote (kept beside the
#: split folders, not in them: fastmri's own SliceDataset opens every file of a split folder).
DEMO_MARKER = ".iconet_demo"


def _check_root(root: pathlib.Path) -> bool:
    """The demo writes only into a folder that does not exist, is entirely empty, or that it marked itself.

    Returns whether ``root`` is marked. Anything else (a real dataset's folder,
    a folder of unrelated files, even a single hidden file) is a
    ``FileExistsError`` naming the folder, raised before anything is written.
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise NotADirectoryError(f"refusing to write demo data into {root}: it is a file, not a folder")
    if (root / DEMO_MARKER).is_file():
        return True
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return False
    raise FileExistsError(
        f"refusing to write demo data into {root}: it holds files the demo did not write "
        f"({', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}) and no {DEMO_MARKER} marker. "
        f"The demo writes only into a folder that does not exist, is empty, or that it marked itself. "
        f"Is data_path a real dataset? Point --data.data_path at a new folder for the demo, or turn "
        f"--data.demo off to train on {root}"
    )


def _check_ours(folder: pathlib.Path, prefix: str) -> None:
    """In a marked ``data_path``, a split folder may hold our ``{prefix}*.h5`` files and non-HDF5 files only."""
    foreign = [p.name for p in folder.iterdir() if p.suffix == ".h5" and not p.name.startswith(prefix)]
    if foreign:
        raise FileExistsError(
            f"refusing to write demo data into {folder}: it holds files the demo did not write "
            f"({', '.join(sorted(foreign)[:5])}{' ...' if len(foreign) > 5 else ''}). Move them out, or point "
            f"--data.data_path at a new folder for the demo"
        )


def _split_is_complete(
    folder: pathlib.Path,
    expected: Sequence[pathlib.Path],
    kspace_shape: Tuple[int, ...],
    prefix: str,
) -> bool:
    """True if exactly the expected `{prefix}*.h5` files exist with the expected k-space shape."""
    if not folder.is_dir():
        return False
    prefix_files = {p.name for p in folder.glob(f"{prefix}*.h5")}
    if prefix_files != {p.name for p in expected}:
        return False
    for path in expected:
        try:
            with h5py.File(path, "r") as hf:
                if hf["kspace"].shape != kspace_shape:
                    return False
        except (OSError, KeyError):
            return False
    return True


def make_demo_splits(
    root: PathLike,
    challenge: str = "singlecoil",
    train_volumes: int = 10,
    val_volumes: int = 3,
    slices: int = 8,
    recon_size: Tuple[int, int] = (128, 128),
    seed: int = 0,
    overwrite: bool = False,
    num_coils: int = 8,
    prefix: str = "file_demo_",
    progress: bool = False,
    **kwargs: object,
) -> Tuple[pathlib.Path, pathlib.Path]:
    """Write (or reuse) ``root/{challenge}_train`` and ``root/{challenge}_val``.

    Train volumes have indices ``0 .. train_volumes - 1`` and validation
    volumes the following ones, so names and random draws never coincide.
    A split is skipped if all its expected files exist with the expected
    k-space shape (cheap, so this can run at the start of every demo); it is
    not detected if only the seed, the anatomy or the noise level changed:
    pass ``overwrite=True`` then. Temporary files of interrupted writers are
    always removed and, when a split is (re)written (with a warning), so are
    our files (``{prefix}*.h5``) that are no longer expected, since
    ``SliceDataset`` reads every file in the folder.

    Demo data is written only into a ``root`` that does not exist, is entirely
    empty, or that the demo marked itself (:data:`DEMO_MARKER`, written first);
    any other folder, e.g. one holding real fastMRI folders that ``data_path``
    points at by mistake, or unrelated files, is a ``FileExistsError`` naming
    it, raised before anything is written. In a marked root, a split folder
    holding ``.h5`` files the demo did not write is refused the same way.

    Args:
        root: parent folder.
        challenge: "singlecoil" or "multicoil".
        train_volumes: number of training volumes.
        val_volumes: number of validation volumes.
        slices: slices per volume.
        recon_size: ``(rh, rw)``.
        seed: base seed.
        overwrite: rewrite even when complete.
        num_coils: coils (multicoil only).
        prefix: file-name prefix.
        **kwargs: forwarded to :func:`write_fastmri_dataset` (``kspace_width``,
            ``noise_level``, ``anatomy``, ``image_scale``).

    Returns:
        ``(train_dir, val_dir)``.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    root = pathlib.Path(root)
    rh, rw = (int(n) for n in recon_size)
    kspace_width = kwargs.get("kspace_width")
    Wk = default_kspace_width(rw) if kspace_width is None else int(kspace_width)  # type: ignore
    coil_dims: Tuple[int, ...] = (num_coils,) if challenge == "multicoil" else ()
    kspace_shape = (slices, *coil_dims, 2 * rh, Wk)

    if not _check_root(root):  # new or empty: ours from now on
        root.mkdir(parents=True, exist_ok=True)
        (root / DEMO_MARKER).write_text(
            "The *_train / *_val folders here hold demo data written by iconet_fastmri.demo; it "
            f"rewrites their {prefix}*.h5 files when the demo settings change, and nothing else.\n"
        )
    dirs = []
    first = 0
    for split, count in (("train", train_volumes), ("val", val_volumes)):
        folder = root / f"{challenge}_{split}"
        expected = [_volume_path(folder, prefix, i) for i in range(first, first + count)]
        if folder.is_dir():
            _check_ours(folder, prefix)
            remove_stale_partials(folder, suffix=".h5")
        if overwrite or not _split_is_complete(folder, expected, kspace_shape, prefix):
            if folder.is_dir() and any(folder.glob(f"{prefix}*.h5")):
                log.warning("demo settings changed: rewriting the demo data in %s (files written by us)", folder)
            folder.mkdir(parents=True, exist_ok=True)
            keep = {p.name for p in expected}
            for old in folder.glob(f"{prefix}*.h5"):
                if old.name not in keep:
                    old.unlink()
            start = time.perf_counter()
            write_fastmri_dataset(
                folder, challenge, count, slices, (rh, rw), num_coils=num_coils, seed=seed,
                prefix=prefix, first_index=first, progress=progress, **kwargs,  # type: ignore[arg-type]
            )
            log.info("wrote %d demo volume(s) to %s in %.1f s", count, folder, time.perf_counter() - start)
            if progress:
                print(f"[iconet-fastmri] wrote {count} demo volume(s) to {folder} in "
                      f"{time.perf_counter() - start:.1f} s")
        dirs.append(folder)
        first += count
    return dirs[0], dirs[1]
