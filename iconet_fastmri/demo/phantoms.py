"""Anatomy-like phantom volumes (knee and brain models) for the demo data.

:func:`make_phantom_volume` draws a noise-free complex volume on the
readout-oversampled image grid; :mod:`.acquisition` turns it into k-space.
The module is long because the knee and brain models are kept side by side
(they share one drawing recipe, and a change to one should be checked against
the other); their drawing helpers live in :mod:`.texture`.

Plain smooth ellipses make a poor training distribution (a model trained on
them loses about 1.5 dB on real anatomy), so the phantoms contain the
ingredients that matter for reconstruction and super-resolution:

* an outer body/head outline whose contour is a radial Fourier series, with
  a folded (gyri-like) inner organ boundary made of high harmonics;
* several tissue compartments with different contrasts (two contrast
  families per anatomy, e.g. T2/T1/FLAIR-like brain and PD/PD-FS-like knee);
* edges ranging from hard (binary) through anti-aliased to soft (Gaussian
  blur widths of 0.4 to 3 pixels), obtained from approximate signed
  distances to each contour;
* multiplicative, multi-scale texture inside tissue (log-Gaussian band-pass
  noise at 3 to about 48 cycles per field of view, isotropic and oriented);
* thin structures 1-2 pixels wide (vessel/fibre-like curves, bright and
  dark, hard and soft), drawn as zero-level sets of smooth random fields and
  as explicit curves (falx, joint line, growth plates);
* a smooth low-order (quadratic) phase map.

All shape, contrast and texture parameters are smooth functions of the
slice position ``t`` in ``[-0.8, 0.8]``, so neighbouring slices of one volume
resemble each other like real contiguous slices. The object lies inside the
centre ``recon_size`` region of the ``(H_k, W_k)`` image; the rest of the
readout-oversampled field of view is empty (only noise), like real data.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import special

from .texture import (
    _DTYPE,
    Harmonics,
    _bandpass_noise,
    _curve_distance,
    _edge,
    _EvolvingField,
    _Grid,
    _line,
    _make_grid,
    _paint,
    _star,
    _sum_radial,
)

__all__ = ["ACQUISITIONS", "ANATOMIES", "default_kspace_width", "make_phantom_volume"]

#: Anatomies understood by :func:`make_phantom_volume` ("mixed" picks one per volume).
ANATOMIES = ("knee", "brain", "mixed")

#: Acquisition names (fastMRI ``acquisition`` attribute) per anatomy.
ACQUISITIONS: Dict[str, Tuple[str, ...]] = {
    "knee": ("CORPD_FBK", "CORPDFS_FBK"),
    "brain": ("AXT2", "AXT1", "AXFLAIR"),
}

# Texture scales in cycles per reconstructed field of view (clipped below Nyquist).
_TEXTURE_CYCLES = (3.0, 8.0, 20.0, 48.0)


def default_kspace_width(recon_width: int) -> int:
    """Default phase-encode k-space width: a little wider than the reconstruction.

    ``recon_width + 2 * ceil(recon_width / 16)``, rounded up to an even number
    (128 -> 144, 320 -> 360, 32 -> 36), mimicking the phase oversampling of
    the fastMRI knee data (320 reconstructed from 368 columns).

    Args:
        recon_width: reconstructed width ``rw``.

    Returns:
        ``W_k >= recon_width``.
    """
    width = recon_width + 2 * math.ceil(recon_width / 16)
    return width + (width % 2)


class _PhantomModel:
    """Per-volume random state shared by the anatomy models."""

    def __init__(self, rng: np.random.Generator, grid: _Grid):
        self.rng = rng
        self.grid = grid
        shape = grid.shape
        nyquist = 0.45
        self.texture: List[_EvolvingField] = []
        for cycles in _TEXTURE_CYCLES:
            f0 = min(cycles / grid.recon_width, nyquist)
            omega = 0.6 + 0.05 * cycles  # fine texture decorrelates faster across slices
            self.texture.append(
                _EvolvingField(
                    _bandpass_noise(rng, shape, f0), _bandpass_noise(rng, shape, f0), omega
                )
            )
        # Oriented (fibre-like) texture.
        fibre_angle = rng.uniform(0, math.pi)
        f_fib = min(20.0 / grid.recon_width, nyquist)
        self.fibre_texture = _EvolvingField(
            _bandpass_noise(rng, shape, f_fib, orientation=fibre_angle),
            _bandpass_noise(rng, shape, f_fib, orientation=fibre_angle),
            1.2,
        )
        # Smooth fields whose zero-level sets are vessel/fibre-like curves.
        self.curve_fields: List[_EvolvingField] = []
        for cycles, orient in ((4.0, None), (6.0, None), (9.0, rng.uniform(0, math.pi))):
            f0 = min(cycles / grid.recon_width, nyquist)
            self.curve_fields.append(
                _EvolvingField(
                    _bandpass_noise(rng, shape, f0, 0.35, orient, 0.35),
                    _bandpass_noise(rng, shape, f0, 0.35, orient, 0.35),
                    rng.uniform(0.8, 1.6),
                    with_gradient=True,
                )
            )
        # Very smooth windows restricting each curve family to some regions.
        f_win = min(2.0 / grid.recon_width, nyquist)
        self.windows = [
            _EvolvingField(
                _bandpass_noise(rng, shape, f_win, 0.6),
                _bandpass_noise(rng, shape, f_win, 0.6),
                0.7,
            )
            for _ in range(3)
        ]
        # Quadratic phase: coefficients of 1, u, v, u^2, uv, v^2 and their slope in t.
        self.phase0 = [float(x) for x in rng.normal(0.0, [1.5, 0.5, 0.5, 0.4, 0.3, 0.4])]
        self.phase1 = [float(x) for x in rng.normal(0.0, [0.3, 0.15, 0.15, 0.15, 0.1, 0.15])]

    def tex(self, t: float, weights: Sequence[float], fibre: float = 0.0) -> np.ndarray:
        """Multiplicative texture ``1 + sum_k w_k T_k(t) (+ fibre)``, kept positive."""
        out = np.ones(self.grid.shape, dtype=_DTYPE)
        for w, field in zip(weights, self.texture):
            if w:
                out += w * field(t)
        if fibre:
            out += fibre * self.fibre_texture(t)
        return np.maximum(out, 0.05)

    def curves(
        self,
        t: float,
        family: int,
        width: float,
        soft: bool,
        window: int,
        threshold: float = 0.3,
    ) -> np.ndarray:
        """Thin curves (coverage in [0, 1]) from a zero-level set, kept where a window is high."""
        line = _line(self.curve_fields[family].level_set_distance(t), width, soft)
        region = special.ndtr((self.windows[window](t) - threshold) / 0.25)
        return line * region

    def phase(self, t: float) -> np.ndarray:
        """Smooth low-order phase map (radians)."""
        c = [a + b * t for a, b in zip(self.phase0, self.phase1)]
        u, v = self.grid.u, self.grid.v
        return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v

    def harmonics(self, ks: Sequence[int], scale: float) -> List[Tuple[int, float, float, float]]:
        """Random contour harmonics ``(k, amplitude, phase, phase drift per unit t)``."""
        return [
            (
                int(k),
                float(self.rng.normal(0.0, scale)),
                float(self.rng.uniform(0, 2 * math.pi)),
                float(self.rng.normal(0.0, 0.8)),
            )
            for k in ks
        ]

    @staticmethod
    def at(
        harm: Sequence[Tuple[int, float, float, float]], t: float, gain: float = 1.0
    ) -> Harmonics:
        """Evaluate drifting harmonics at slice position ``t``."""
        return [(k, gain * a, ph + dph * t) for k, a, ph, dph in harm]

    def render(self, t: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class _Folds:
    """Inward folds of a contour (sulci), a 2*pi-periodic radial perturbation.

    ``r(theta) -= depth(theta) * ((1 + cos phi(theta)) / 2) ** sharpness`` with a
    frequency-modulated fold phase ``phi = k theta + sum_m a_m sin(m theta + psi_m)``
    (irregular fold spacing) and a slowly varying depth. Large ``sharpness``
    gives narrow sulci between broad gyri. Phases drift with ``t`` so the
    folds move smoothly from slice to slice.
    """

    def __init__(self, rng: np.random.Generator, k_range: Tuple[int, int], depth: float,
                 sharpness: float):
        self.k = int(rng.integers(k_range[0], k_range[1] + 1))
        self.depth = depth
        self.sharpness = sharpness
        self.fm = [
            (m, rng.uniform(0.3, 1.0) * 3.0 / m, rng.uniform(0, 2 * math.pi)) for m in (1, 2, 3, 5)
        ]
        self.phi0 = rng.uniform(0, 2 * math.pi)
        self.drift = float(rng.normal(0.0, 1.5))
        self.depth_mod = [
            (m, rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)) for m in (1, 2, 3)
        ]

    def at(self, t: float, gain: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
        """Radial perturbation function of ``theta`` at slice position ``t``."""

        def radial(theta: np.ndarray) -> np.ndarray:
            phi = self.k * theta + self.phi0 + self.drift * t
            for m, a, psi in self.fm:
                phi = phi + a * np.sin(m * theta + psi + 0.3 * t)
            depth = np.full_like(theta, self.depth * gain)
            for m, a, psi in self.depth_mod:
                depth = depth * (1.0 + a * np.cos(m * theta + psi - 0.5 * t))
            return -depth * (0.5 + 0.5 * np.cos(phi)) ** self.sharpness

        return radial


class _BrainModel(_PhantomModel):
    """Axial head slice: scalp, skull, CSF, folded cortex, white matter, ventricles, nuclei."""

    CONTRASTS = {
        "AXT2": dict(scalp=0.75, skull=0.05, csf=1.0, gm=0.55, wm=0.40, nuclei=0.47, lesion=0.9,
                     vessel_bright=0.85),
        "AXT1": dict(scalp=0.95, skull=0.05, csf=0.12, gm=0.45, wm=0.62, nuclei=0.52, lesion=0.3,
                     vessel_bright=0.9),
        "AXFLAIR": dict(scalp=0.7, skull=0.05, csf=0.08, gm=0.62, wm=0.45, nuclei=0.55, lesion=1.0,
                        vessel_bright=0.8),
    }

    def __init__(self, rng: np.random.Generator, grid: _Grid, acquisition: str):
        super().__init__(rng, grid)
        self.c = self.CONTRASTS[acquisition]
        r = rng
        self.center = [float(x) for x in r.normal(0.0, 0.02, size=2)]
        self.center_drift = [float(x) for x in r.normal(0.0, 0.02, size=2)]
        self.ru = r.uniform(0.70, 0.80)
        self.rv = r.uniform(0.84, 0.92)
        self.rot = float(r.normal(0.0, 0.06))
        self.shrink = r.uniform(0.15, 0.35)  # head radius ~ sqrt(1 - shrink t^2)
        self.outline = self.harmonics([2, 3, 4], 0.015)
        self.scalp = r.uniform(0.04, 0.06)
        self.skull = r.uniform(0.035, 0.05)
        self.gap = self.scalp + self.skull + r.uniform(0.01, 0.02)
        # Many shallow-to-medium sulci plus a few deep, narrow fissures.
        self.sulci = _Folds(r, (16, 26), r.uniform(0.09, 0.14), r.uniform(5.0, 9.0))
        self.fissures = _Folds(r, (4, 8), r.uniform(0.15, 0.22), r.uniform(12.0, 20.0))
        self.gm_thickness = r.uniform(0.045, 0.065)  # cortical ribbon, units of half FOV
        self.vent = dict(
            t0=r.uniform(-0.3, 0.3), width=r.uniform(0.6, 0.9), sep=r.uniform(0.07, 0.11),
            ru=r.uniform(0.045, 0.07), rv=r.uniform(0.22, 0.30), rot=r.uniform(0.1, 0.25),
            harm=self.harmonics([2, 3], 0.12),
        )
        self.nuclei = [
            (r.uniform(0.17, 0.24), r.uniform(-0.05, 0.08), r.uniform(0.08, 0.11),
             r.uniform(0.11, 0.15), r.uniform(0.2, 0.5), r.uniform(1.5, 3.0)),
            (r.uniform(0.07, 0.11), r.uniform(0.12, 0.2), r.uniform(0.06, 0.08),
             r.uniform(0.07, 0.1), r.uniform(-0.3, 0.3), r.uniform(2.0, 3.0)),
        ]
        n_lesions = int(r.integers(0, 4))
        self.lesions = [
            (r.uniform(-0.45, 0.45), r.uniform(-0.5, 0.5), r.uniform(0.02, 0.05),
             r.uniform(-0.8, 0.8), r.uniform(0.3, 0.6), r.uniform(0.4, 1.2))
            for _ in range(n_lesions)
        ]
        self.falx = [float(x) for x in r.normal(0.0, [0.05, 0.02, 0.01])]

    def render(self, t: float) -> np.ndarray:
        g, c = self.grid, self.c
        size = math.sqrt(1.0 - self.shrink * t * t)
        cu, cv = (c0 + c1 * t for c0, c1 in zip(self.center, self.center_drift))
        ru, rv = self.ru * size, self.rv * size
        outline = self.at(self.outline, t)

        d_head = _star(g, cu, cv, ru, rv, self.rot, outline)
        px = g.px
        img = np.zeros(g.shape, dtype=_DTYPE)
        img = _paint(img, _edge(d_head, 0.7), c["scalp"] * self.tex(t, (0.05, 0.08, 0.06, 0.0)))
        img = _paint(img, _edge(d_head + self.scalp * px, 0.5), c["skull"])
        img = _paint(img, _edge(d_head + (self.scalp + self.skull) * px, 1.0),
                     c["csf"] * self.tex(t, (0.03, 0.0, 0.0, 0.02)))

        # Brain surface: outline scaled inwards and folded (gyri and sulci);
        # the CSF painted before fills the sulci.
        scale_b = 1.0 - self.gap / min(ru, rv)
        folds = _sum_radial(self.sulci.at(t), self.fissures.at(t))
        d_brain = _star(g, cu, cv, ru * scale_b, rv * scale_b, self.rot, outline, radial=folds)
        in_brain = _edge(d_brain, 0.6)
        img = _paint(img, in_brain, c["gm"] * self.tex(t, (0.04, 0.05, 0.04, 0.03)))

        # White matter: the cortical ribbon has a roughly constant thickness,
        # so WM is the brain shrunk by it (WM "fingers" reach into the gyri).
        img = _paint(img, _edge(d_brain + self.gm_thickness * px, 1.3) * in_brain,
                     c["wm"] * self.tex(t, (0.03, 0.04, 0.03, 0.02), fibre=0.04))

        # Deep grey nuclei (soft edges), symmetric pairs.
        for nu, nv, nru, nrv, nrot, sigma in self.nuclei:
            for side in (-1.0, 1.0):
                d = _star(g, cu + side * nu * size, cv + nv, nru * size, nrv * size, side * nrot)
                value = c["nuclei"] * self.tex(t, (0.02, 0.04, 0.03, 0.0))
                img = _paint(img, _edge(d, sigma), value)

        # Lateral ventricles (sharp), appear and vanish smoothly with t.
        vt = self.vent
        vis = max(0.0, 1.0 - ((t - vt["t0"]) / vt["width"]) ** 2)
        if vis > 0.02:
            for side in (-1.0, 1.0):
                harm = [(k, a, ph + side) for k, a, ph in self.at(vt["harm"], t)]
                d = _star(g, cu + side * vt["sep"] * size, cv - 0.05, vt["ru"] * vis,
                          vt["rv"] * math.sqrt(vis), side * vt["rot"], harm)
                img = _paint(img, _edge(d, 0.4 if side > 0 else 0.0), c["csf"])

        # Focal lesions (white-matter hyperintensities), soft.
        for lu, lv, lr, lt, lw, sigma in self.lesions:
            rad = lr * max(0.0, 1.0 - ((t - lt) / lw) ** 2)
            if rad > 0.004:
                d = _star(g, cu + lu * size, cv + lv * size, rad, rad * 1.3)
                img = _paint(img, _edge(d, sigma) * in_brain, c["lesion"])

        # Thin structures: falx (hard, 1 px), vessels bright/dark, hard/soft.
        falx = _line(_curve_distance(g, [self.falx[2], self.falx[1], cu + self.falx[0]], True),
                     1.0, soft=False)
        falx *= in_brain * (np.abs(g.v - cv) > 0.35 * rv)
        img = _paint(img, falx, c["csf"] * 0.9)
        bright = c["vessel_bright"]
        img = _paint(img, 0.7 * self.curves(t, 0, 1.0, False, 0, 1.0) * in_brain, bright)
        img = _paint(img, 0.6 * self.curves(t, 1, 1.6, True, 1, 1.0) * in_brain, bright)
        img = img * (1.0 - 0.5 * self.curves(t, 2, 1.4, True, 2, 0.9) * in_brain)
        return img


class _KneeModel(_PhantomModel):
    """Coronal knee slice: fat, muscle, femur/tibia/fibula, cartilage, menisci, ligaments."""

    CONTRASTS = {
        "CORPD_FBK": dict(fat=0.95, muscle=0.38, marrow=0.80, cortex=0.05, cartilage=0.62,
                          meniscus=0.06, ligament=0.12, fluid=0.78),
        "CORPDFS_FBK": dict(fat=0.16, muscle=0.42, marrow=0.22, cortex=0.04, cartilage=0.66,
                            meniscus=0.05, ligament=0.10, fluid=1.0),
    }

    def __init__(self, rng: np.random.Generator, grid: _Grid, acquisition: str):
        super().__init__(rng, grid)
        self.c = self.CONTRASTS[acquisition]
        r = rng
        self.leg = dict(cu=r.normal(0, 0.02), ru=r.uniform(0.78, 0.88), rv=r.uniform(0.9, 0.95),
                        p=r.uniform(2.4, 3.2), rot=r.normal(0, 0.03))
        self.outline = self.harmonics([2, 3, 4], 0.015) + self.harmonics([9, 12, 15], 0.004)
        self.fat = r.uniform(0.08, 0.14)
        self.fat_harm = self.harmonics([1, 2, 3], 0.02)
        self.joint = dict(v=r.normal(0, 0.04), tilt=r.normal(0, 0.04), drift=r.normal(0, 0.03))
        self.femur = dict(cu=r.normal(0, 0.03), ru=r.uniform(0.26, 0.32), rv=r.uniform(0.45, 0.55),
                          cond_sep=r.uniform(0.17, 0.22), cond_r=r.uniform(0.17, 0.21),
                          notch=r.uniform(0.04, 0.07))
        self.tibia = dict(cu=r.normal(0, 0.03), ru=r.uniform(0.40, 0.46), rv=r.uniform(0.42, 0.5),
                          p=r.uniform(3.0, 4.5))
        self.fibula_side = float(r.choice([-1.0, 1.0]))
        self.cart = r.uniform(0.03, 0.045)
        self.cortex = r.uniform(0.02, 0.035)
        self.bone_harm = self.harmonics([3, 5, 7], 0.01)
        self.physis = [[float(x) for x in row] for row in r.normal(0.0, [0.1, 0.02], size=(2, 2))]
        self.collateral = [float(x) for x in r.uniform(0.02, 0.06, size=2)]

    def render(self, t: float) -> np.ndarray:
        g, c = self.grid, self.c
        px = g.px
        lg = self.leg
        ru = lg["ru"] * (1.0 - 0.08 * t * t)
        outline = self.at(self.outline, t)
        d_leg = _star(g, lg["cu"], 0.0, ru, lg["rv"], lg["rot"], outline, lg["p"])
        in_leg = _edge(d_leg, 0.6)
        img = np.zeros(g.shape, dtype=_DTYPE)
        img = _paint(img, in_leg, c["fat"] * self.tex(t, (0.04, 0.06, 0.05, 0.03)))

        # Muscle/soft tissue inside a fat layer of varying thickness.
        fat_scale = 1.0 - self.fat
        d_muscle = _star(g, lg["cu"], 0.0, ru * fat_scale, lg["rv"] * (1 - 0.4 * self.fat),
                         lg["rot"], list(outline) + list(self.at(self.fat_harm, t)), lg["p"])
        in_muscle = _edge(d_muscle, 1.2) * in_leg
        muscle = c["muscle"] * self.tex(t, (0.03, 0.05, 0.04, 0.03), fibre=0.08)
        img = _paint(img, in_muscle, muscle)
        # Fat septa (bright, soft) and fascia (dark, hard) inside muscle.
        img = _paint(img, 0.7 * self.curves(t, 2, 1.5, True, 0, 0.6) * in_muscle, c["fat"])
        img = img * (1.0 - 0.5 * self.curves(t, 1, 1.0, False, 1, 0.9) * in_muscle)

        # Bones: union of femur shaft + condyles minus notch; tibia; fibula.
        vj = self.joint["v"] + self.joint["drift"] * t
        fm, tb = self.femur, self.tibia
        bone_h = self.at(self.bone_harm, t)
        sep = fm["cond_sep"] * (1.0 + 0.25 * t)
        d_femur = _star(g, fm["cu"], vj - 0.08 - fm["rv"], fm["ru"], fm["rv"], 0.0, bone_h, 3.0)
        for side in (-1.0, 1.0):
            d_cond = _star(g, fm["cu"] + side * sep, vj - 0.04 - 0.85 * fm["cond_r"],
                           fm["cond_r"], 0.85 * fm["cond_r"], 0.0, bone_h)
            d_femur = np.minimum(d_femur, d_cond)
        d_notch = _star(g, fm["cu"], vj - 0.02, fm["notch"] * (1.0 + 0.6 * t), 0.14)
        d_femur = np.maximum(d_femur, -d_notch)
        d_tibia = _star(g, tb["cu"], vj + 0.04 + tb["rv"], tb["ru"], tb["rv"], self.joint["tilt"],
                        bone_h, tb["p"])
        d_spine = _star(g, tb["cu"], vj + 0.045, 0.06, 0.05)
        d_tibia = np.minimum(d_tibia, d_spine)
        fib_r = 0.08 * max(0.0, 1.0 - ((t - 0.4) / 0.8) ** 2)
        d_fib = _star(g, self.fibula_side * 0.5, vj + 0.62, max(fib_r, 1e-3), 0.3, 0.0, bone_h)
        d_bone = np.minimum(np.minimum(d_femur, d_tibia), d_fib if fib_r > 0.005 else np.inf)

        # Articular cartilage: a band around the bone ends near the joint line.
        near_joint = np.exp(-(((g.v - vj) / 0.22) ** 2))
        cart = _edge(np.minimum(d_femur, d_tibia) - self.cart * px, 0.5) * near_joint * in_muscle
        img = _paint(img, cart, c["cartilage"] * self.tex(t, (0.0, 0.03, 0.03, 0.0)))
        # Joint fluid line between the cartilage surfaces (thin, bright, hard).
        joint_line = _line(
            _curve_distance(g, [0.03 * t, self.joint["tilt"], vj], vertical=False), 1.0, soft=False
        )
        img = _paint(img, joint_line * (np.abs(g.u) < 0.38) * in_muscle, c["fluid"])

        # Cortical bone (dark, sharp) and trabecular marrow (strong fine texture).
        img = _paint(img, _edge(d_bone, 0.0) * in_muscle, c["cortex"])
        marrow = _edge(d_bone + self.cortex * px, 0.5) * in_muscle
        img = _paint(img, marrow, c["marrow"] * self.tex(t, (0.04, 0.05, 0.07, 0.04)))
        # Growth plates (physes): soft dark curves across femur and tibia.
        plates = ((self.physis[0], d_femur, -0.33), (self.physis[1], d_tibia, 0.3))
        for (a1, a2), bone_d, off in plates:
            dist = _curve_distance(g, [a2, a1 * 0.3, vj + off], vertical=False)
            inside = _edge(bone_d + self.cortex * px, 0.5)
            img = img * (1.0 - 0.55 * _line(dist, 1.8, soft=True) * inside)

        # Menisci: dark triangles at the joint margins (hard edges).
        for side in (-1.0, 1.0):
            d = _star(g, side * (sep + fm["cond_r"] * 0.75), vj + 0.005, 0.08, 0.04, 0.0,
                      [(3, 0.22, math.pi / 2 if side < 0 else -math.pi / 2)])
            img = _paint(img, _edge(d, 0.0) * in_muscle, c["meniscus"])
        # Cruciate ligaments in the notch (dark, soft).
        for k, (du, rot) in enumerate(((0.015, 0.35), (-0.02, -0.45))):
            vis = max(0.0, 1.0 - ((t + 0.3 - 0.6 * k) / 0.9) ** 2)
            if vis > 0.02:
                d = _star(g, fm["cu"] + du, vj - 0.04, 0.035 * vis, 0.16, rot)
                img = _paint(img, _edge(d, 1.0), c["ligament"])
        # Collateral ligaments: dark bands along both sides of the joint.
        for side, width in zip((-1.0, 1.0), self.collateral):
            u0 = side * (fm["cond_sep"] + fm["cond_r"] + 0.07)
            dist = _curve_distance(g, [side * 0.3, 0.0, u0], vertical=True)
            band = _line(dist, width * px, soft=True) * (np.abs(g.v - vj) < 0.3) * in_muscle
            img = _paint(img, 0.8 * band, c["ligament"])
        # Vessels: bright soft curves in the soft tissue.
        img = _paint(img, 0.6 * self.curves(t, 0, 1.8, True, 2, 0.9) * in_muscle, c["fluid"])
        return img


def _t_positions(num_slices: int) -> np.ndarray:
    """Slice positions ``t`` in ``[-0.8, 0.8]`` (0 for a single slice)."""
    if num_slices == 1:
        return np.zeros(1)
    return np.linspace(-0.8, 0.8, num_slices)


def make_phantom_volume(
    num_slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    anatomy: str = "mixed",
    acquisition: Optional[str] = None,
    seed: Union[int, Sequence[int], np.random.Generator] = 0,
) -> Tuple[np.ndarray, str]:
    """Noise-free complex phantom volume on the readout-oversampled image grid.

    Args:
        num_slices: number of slices ``S``.
        recon_size: ``(rh, rw)``; the object lies inside the centre ``(rh, rw)`` box.
        kspace_width: ``W_k`` (default :func:`default_kspace_width` of ``rw``).
        anatomy: "knee", "brain" or "mixed" (chosen at random).
        acquisition: contrast (one of :data:`ACQUISITIONS` of the anatomy);
            default chosen at random.
        seed: integer, integer sequence or ``numpy.random.Generator``.

    Returns:
        ``(image, acquisition)`` where ``image`` is complex64 of shape
        ``(S, 2 * rh, W_k)`` with maximum magnitude 1 and a smooth phase.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if anatomy == "mixed":
        anatomy = str(rng.choice(["knee", "brain"]))
    if acquisition is None:
        choices = ACQUISITIONS[anatomy]
        probs = (0.5, 0.5) if anatomy == "knee" else (0.5, 0.25, 0.25)
        acquisition = str(rng.choice(choices, p=probs))
    elif acquisition not in ACQUISITIONS[anatomy]:
        raise ValueError(f"acquisition {acquisition!r} not in {ACQUISITIONS[anatomy]}")

    rh, rw = recon_size
    H = 2 * rh
    W = default_kspace_width(rw) if kspace_width is None else int(kspace_width)
    if W < rw:
        raise ValueError(f"kspace_width {W} < recon width {rw}")
    # Draw only the rows around the reconstruction box (the rest stays empty).
    margin = max(4, rh // 8)
    row0 = max(0, (H - rh) // 2 - margin)
    rows = min(H, rh + 2 * margin + 1) if row0 > 0 else H
    rows = min(rows, H - row0)
    grid = _make_grid(rows, W, row0, H, W, rh, rw)
    model_cls = _KneeModel if anatomy == "knee" else _BrainModel
    model = model_cls(rng, grid, acquisition)

    image = np.zeros((num_slices, H, W), dtype=np.complex64)
    for s, t in enumerate(_t_positions(num_slices)):
        magnitude = np.clip(model.render(float(t)), 0.0, None)
        image[s, row0 : row0 + rows] = magnitude * np.exp(1j * model.phase(float(t)))
    peak = np.abs(image).max()
    if peak > 0:
        image *= float(1.0 / peak)
    return image, acquisition
