"""Tests of the synthetic fastMRI-format demo data (iconet_fastmri.demo)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import center_crop
from scipy import ndimage
from skimage.feature import canny

from iconet_fastmri.data.validation import ISMRMRD_NAMESPACE
from iconet_fastmri.demo import (
    center_crop_np,
    coil_sensitivities,
    default_kspace_width,
    fft2c_np,
    ifft2c_np,
    make_demo_splits,
    make_phantom_volume,
    simulate_volume,
    write_fastmri_dataset,
)

RECON = (32, 32)
SLICES = 3
COILS = 4
VOLUMES = 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    """One small folder per challenge: {challenge: (folder, [paths])}."""
    out = {}
    for challenge in ("singlecoil", "multicoil"):
        folder = tmp_path_factory.mktemp(challenge)
        paths = write_fastmri_dataset(folder, challenge, VOLUMES, SLICES, recon_size=RECON,
                                      num_coils=COILS, seed=3)
        out[challenge] = (folder, paths)
    return out


def _recon_key(challenge: str) -> str:
    return "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"


# ---------------------------------------------------------------------------
# Layout, as read by fastMRI itself
# ---------------------------------------------------------------------------


def test_default_kspace_width():
    assert default_kspace_width(128) == 144
    assert default_kspace_width(320) == 360
    assert default_kspace_width(32) == 36
    assert default_kspace_width(33) % 2 == 0


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_slice_dataset_reads_files(datasets, challenge):
    folder, paths = datasets[challenge]
    assert [p.name for p in paths] == ["file_demo_000.h5", "file_demo_001.h5"]
    dataset = SliceDataset(root=folder, challenge=challenge, transform=None)
    assert len(dataset) == VOLUMES * SLICES

    Hk, Wk = 2 * RECON[0], default_kspace_width(RECON[1])
    patient_ids = set()
    for i in range(len(dataset)):
        kspace, mask, target, attrs, fname, slice_num = dataset[i]
        expected_shape = (Hk, Wk) if challenge == "singlecoil" else (COILS, Hk, Wk)
        assert kspace.shape == expected_shape and kspace.dtype == np.complex64
        assert mask is None
        assert target.shape == RECON and target.dtype == np.float32
        assert attrs["encoding_size"] == (Hk, Wk, 1)
        assert attrs["recon_size"] == (RECON[0], RECON[1], 1)
        assert attrs["padding_left"] == 0 and attrs["padding_right"] == Wk
        assert attrs["acquisition"] in {"CORPD_FBK", "CORPDFS_FBK", "AXT2", "AXT1", "AXFLAIR"}
        with h5py.File(folder / fname, "r") as hf:
            volume_max = hf[_recon_key(challenge)][()].max()
        assert attrs["max"] == pytest.approx(float(volume_max), rel=1e-6)
        assert isinstance(attrs["patient_id"], str) and attrs["patient_id"]
        assert 0 <= slice_num < SLICES
        patient_ids.add(attrs["patient_id"])
    assert len(patient_ids) == VOLUMES


def test_header_has_ismrmrd_fields(datasets):
    folder, paths = datasets["multicoil"]
    with h5py.File(paths[0], "r") as hf:
        root = ET.fromstring(hf["ismrmrd_header"][()])
    ns = {"m": ISMRMRD_NAMESPACE}
    assert root.tag == f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader"
    enc_fov = root.find("m:encoding/m:encodedSpace/m:fieldOfView_mm", ns)
    rec_fov = root.find("m:encoding/m:reconSpace/m:fieldOfView_mm", ns)
    assert enc_fov is not None and rec_fov is not None
    # Square pixels: the readout-oversampled encoded FOV is twice the recon FOV.
    enc_x, rec_x = float(enc_fov.find("m:x", ns).text), float(rec_fov.find("m:x", ns).text)
    assert enc_x == pytest.approx(2 * rec_x)
    limits = root.find("m:encoding/m:encodingLimits/m:kspace_encoding_step_1", ns)
    Wk = default_kspace_width(RECON[1])
    assert [int(limits.find(f"m:{t}", ns).text) for t in ("minimum", "maximum", "center")] == [
        0, Wk - 1, Wk // 2,
    ]
    assert root.find("m:acquisitionSystemInformation/m:receiverChannels", ns).text == str(COILS)


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_target_matches_fastmri_recomputation(datasets, challenge):
    """Target == crop(|ifft2c(kspace)|) or crop(rss(ifft2c(kspace))) with fastMRI's torch code."""
    _, paths = datasets[challenge]
    for path in paths:
        with h5py.File(path, "r") as hf:
            kspace = hf["kspace"][()]
            target = hf[_recon_key(challenge)][()]
            attrs = dict(hf.attrs)
        image = fastmri.ifft2c(torch.view_as_real(torch.from_numpy(kspace)))
        if challenge == "singlecoil":
            magnitude = fastmri.complex_abs(image)
        else:
            magnitude = fastmri.rss(fastmri.complex_abs(image), dim=1)
        expected = center_crop(magnitude, RECON).numpy()
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(target, expected, rtol=1e-4, atol=1e-5 * scale)
        assert attrs["max"] == pytest.approx(float(target.max()), rel=1e-6)
        assert attrs["norm"] == pytest.approx(float(np.linalg.norm(target.astype(np.float64))),
                                              rel=1e-6)


def test_numpy_fft_convention_matches_fastmri():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 10, 7)) + 1j * rng.standard_normal((2, 10, 7))
    x = x.astype(np.complex64)
    k = fft2c_np(x)
    k_ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(torch.from_numpy(x)))).numpy()
    np.testing.assert_allclose(k, k_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ifft2c_np(k), x, rtol=1e-4, atol=1e-5)
    # Orthonormal.
    assert np.linalg.norm(k) == pytest.approx(np.linalg.norm(x), rel=1e-5)


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = write_fastmri_dataset(tmp_path / "a", "singlecoil", 2, 2, recon_size=RECON, seed=7)
    b = write_fastmri_dataset(tmp_path / "b", "singlecoil", 2, 2, recon_size=RECON, seed=7)
    c = write_fastmri_dataset(tmp_path / "c", "singlecoil", 2, 2, recon_size=RECON, seed=8)
    for pa, pb, pc in zip(a, b, c):
        with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb, h5py.File(pc, "r") as fc:
            np.testing.assert_array_equal(fa["kspace"][()], fb["kspace"][()])
            ta, tb = fa["reconstruction_esc"][()], fb["reconstruction_esc"][()]
            np.testing.assert_array_equal(ta, tb)
            assert fa["ismrmrd_header"][()] == fb["ismrmrd_header"][()]
            assert dict(fa.attrs) == dict(fb.attrs)
            tc = fc["reconstruction_esc"][()]
            assert np.abs(ta - tc).mean() > 0.05 * ta.mean()
    # Volumes of one call differ from each other too.
    with h5py.File(a[0], "r") as f0, h5py.File(a[1], "r") as f1:
        assert f0.attrs["patient_id"] != f1.attrs["patient_id"]
        assert not np.allclose(f0["reconstruction_esc"][()], f1["reconstruction_esc"][()])


# ---------------------------------------------------------------------------
# The phantom is not trivial
# ---------------------------------------------------------------------------

# Thresholds measured at recon 64x64 over 12 seeds x 3 slices (both anatomies,
# all contrasts): high-frequency energy fraction >= 0.050, Canny edge
# components >= 7, thin-structure pixel fraction >= 0.10. A sharp-edged
# uniform ellipse of the same size gives 0.030, 1 and 0.0.
_HF_MIN = 0.04
_EDGES_MIN = 5
_THIN_MIN = 0.02


def _high_frequency_fraction(image: np.ndarray) -> np.ndarray:
    """Energy fraction outside the central quarter band (|k_y| < H/8, |k_x| < W/8) per slice."""
    energy = np.abs(fft2c_np(image)) ** 2
    H, W = image.shape[-2:]
    central = np.zeros((H, W), dtype=bool)
    central[H // 2 - H // 8 : H // 2 + H // 8, W // 2 - W // 8 : W // 2 + W // 8] = True
    return energy[..., ~central].sum(-1) / energy.sum(axis=(-2, -1))


def _structure_metrics(image: np.ndarray, recon_size) -> list:
    """Per slice: (number of connected Canny edge structures, fraction of thin-structure pixels).

    Thin structures (<= 2 px wide) are what a 3x3 morphological opening/closing
    removes, i.e. large white/black top-hat values.
    """
    mag = center_crop_np(np.abs(image), recon_size)
    mag = mag / mag.max()
    out = []
    for s in mag:
        edges = canny(s, sigma=1.0, low_threshold=0.05, high_threshold=0.1)
        n_edges = ndimage.label(edges, structure=np.ones((3, 3)))[1]
        tophat = np.maximum(ndimage.white_tophat(s, size=3), ndimage.black_tophat(s, size=3))
        support = s > 0.05
        out.append((n_edges, (tophat > 0.15).sum() / max(support.sum(), 1)))
    return out


def _plain_ellipse(recon_size, slices: int) -> np.ndarray:
    rh, rw = recon_size
    H, W = 2 * rh, default_kspace_width(rw)
    y, x = np.mgrid[:H, :W]
    u, v = (x - W // 2) / (rw / 2), (y - H // 2) / (rh / 2)
    img = ((u / 0.7) ** 2 + (v / 0.85) ** 2 < 1) * np.exp(1j * (0.5 * u + 0.3 * v))
    return np.repeat(img[None].astype(np.complex64), slices, 0)


@pytest.mark.parametrize("anatomy,seed", [("knee", 0), ("knee", 1), ("brain", 0), ("brain", 1)])
def test_phantom_is_rich(anatomy, seed):
    recon = (64, 64)
    image, acquisition = make_phantom_volume(3, recon, anatomy=anatomy, seed=seed)
    assert image.shape == (3, 128, default_kspace_width(64)) and image.dtype == np.complex64
    assert np.abs(image).max() == pytest.approx(1.0, rel=1e-5)
    assert acquisition.startswith("COR" if anatomy == "knee" else "AX")
    # Smooth but non-trivial phase.
    inside = np.abs(image) > 0.1
    assert np.angle(image[inside]).std() > 0.05

    assert (_high_frequency_fraction(image) > _HF_MIN).all()
    for n_edges, thin in _structure_metrics(image, recon):
        assert n_edges >= _EDGES_MIN
        assert thin >= _THIN_MIN

    # The object lies in the centre recon box: outside it, the image is ~0.
    outside = np.abs(image).copy()
    outside[:, 32:96] = 0
    assert (outside**2).sum() < 1e-6 * (np.abs(image) ** 2).sum()


def test_plain_ellipse_fails_the_richness_criteria():
    ellipse = _plain_ellipse((64, 64), 1)
    assert _high_frequency_fraction(ellipse)[0] < _HF_MIN
    n_edges, thin = _structure_metrics(ellipse, (64, 64))[0]
    assert n_edges < _EDGES_MIN and thin < _THIN_MIN


def test_slices_vary_smoothly():
    image, _ = make_phantom_volume(8, (64, 64), anatomy="brain", seed=2)
    mag = np.abs(image)
    neighbour = np.abs(mag[1:] - mag[:-1]).mean()
    far = np.abs(mag[-1] - mag[0]).mean()
    assert 0 < neighbour < far


# ---------------------------------------------------------------------------
# Multicoil
# ---------------------------------------------------------------------------


def test_multicoil_coils_differ(datasets):
    _, paths = datasets["multicoil"]
    with h5py.File(paths[0], "r") as hf:
        kspace = hf["kspace"][()]
        target = hf["reconstruction_rss"][()]
    assert kspace.shape[1] == COILS
    coil_mags = center_crop_np(np.abs(ifft2c_np(kspace[SLICES // 2])), RECON)
    for c in range(1, COILS):
        ratio = np.abs(coil_mags[c] - coil_mags[0]).mean() / coil_mags[0].mean()
        assert ratio > 0.2
    # Each coil sees part of the signal only; together (RSS) they see it all.
    assert coil_mags.max(axis=(-2, -1)).max() < 0.95 * target[SLICES // 2].max()


def test_coil_sensitivities_unit_rss():
    maps = coil_sensitivities(COILS, (16, 12))
    assert maps.shape == (COILS, 16, 12)
    np.testing.assert_allclose(np.sqrt((np.abs(maps) ** 2).sum(0)), 1.0, rtol=1e-5)


def test_noise_level_controls_noise():
    clean = simulate_volume("singlecoil", 1, RECON, noise_level=0.0, seed=4)
    noisy = simulate_volume("singlecoil", 1, RECON, noise_level=0.01, seed=4)
    # Same phantom, the difference is the noise (std 0.01 * image max = 1e-6).
    diff = noisy.kspace - clean.kspace
    assert np.std(diff) == pytest.approx(0.01 * 1e-4, rel=0.1)
    # Outside the recon rows, the clean image is (numerically) empty.
    img = np.abs(ifft2c_np(clean.kspace))
    assert img[:, :4].max() < 1e-3 * img.max()


# ---------------------------------------------------------------------------
# Demo splits
# ---------------------------------------------------------------------------


def test_make_demo_splits_idempotent(tmp_path):
    kwargs = dict(challenge="multicoil", train_volumes=2, val_volumes=1, slices=2,
                  recon_size=(32, 32), num_coils=COILS)
    train, val = make_demo_splits(tmp_path, **kwargs)
    assert train == tmp_path / "multicoil_train" and val == tmp_path / "multicoil_val"
    train_files = sorted(p.name for p in train.iterdir())
    val_files = sorted(p.name for p in val.iterdir())
    assert train_files == ["file_demo_000.h5", "file_demo_001.h5"]
    assert val_files == ["file_demo_002.h5"]  # names (and draws) distinct from train
    assert len(SliceDataset(train, "multicoil")) == 4
    assert len(SliceDataset(val, "multicoil")) == 2

    files = sorted(train.iterdir()) + sorted(val.iterdir())
    # Backdate the files so that a rewrite would be visible even with coarse mtimes.
    for f in files:
        os.utime(f, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert make_demo_splits(tmp_path, **kwargs) == (train, val)
    assert {f: f.stat().st_mtime_ns for f in files} == before

    # A stale temporary file of a dead writer is removed, a live writer's is kept
    # (temporary names of iconet_fastmri.io: ".<name>.partial-<token>-<pid>"); a missing
    # file triggers a rewrite of its split only; overwrite=True always rewrites.
    (val / ".file_demo_002.h5.partial-0123abcd-999999999").write_bytes(b"junk")
    live = train / f".file_demo_000.h5.partial-4567cdef-{os.getpid()}"
    live.write_bytes(b"in progress")
    (train / "file_demo_001.h5").unlink()
    make_demo_splits(tmp_path, **kwargs)
    assert live.exists()
    live.unlink()
    assert sorted(p.name for p in train.iterdir()) == train_files
    assert sorted(p.name for p in val.iterdir()) == val_files
    assert (val / "file_demo_002.h5").stat().st_mtime_ns == before[val / "file_demo_002.h5"]
    assert (train / "file_demo_000.h5").stat().st_mtime_ns != before[train / "file_demo_000.h5"]
    make_demo_splits(tmp_path, overwrite=True, **kwargs)
    assert all(f.stat().st_mtime_ns != before[f] for f in files)


def test_make_demo_splits_changed_size_rewrites(tmp_path):
    train, _ = make_demo_splits(tmp_path, train_volumes=2, val_volumes=1, slices=2,
                                recon_size=(32, 32))
    assert train.name == "singlecoil_train"
    make_demo_splits(tmp_path, train_volumes=1, val_volumes=1, slices=2, recon_size=(32, 32))
    # Fewer volumes: the no-longer-expected file is removed (SliceDataset reads every file).
    assert sorted(p.name for p in train.iterdir()) == ["file_demo_000.h5"]
    make_demo_splits(tmp_path, train_volumes=1, val_volumes=1, slices=2, recon_size=(48, 48))
    with h5py.File(train / "file_demo_000.h5", "r") as hf:
        assert hf["kspace"].shape == (2, 96, default_kspace_width(48))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import iconet_fastmri.io as io_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_module.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_fastmri_dataset(tmp_path, "singlecoil", 1, 1, recon_size=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_cli_runs(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_demo_data.py"
    spec = importlib.util.spec_from_file_location("make_demo_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--out", str(tmp_path), "--train_volumes", "1", "--val_volumes", "1",
                      "--slices", "1", "--recon_size", "32", "32"])
    assert rc == 0
    assert (tmp_path / "singlecoil_train" / "file_demo_000.h5").exists()
    assert (tmp_path / "singlecoil_val" / "file_demo_001.h5").exists()
    assert "singlecoil_train" in capsys.readouterr().out
