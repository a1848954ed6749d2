"""k-space physics: centred FFTs, sampling masks, operators and the LR acquisition model.

Layer 1 of the package (see ``docs/ARCHITECTURE.md``): it depends on torch,
numpy, fastmri's mask functions and sigpy only, never on the rest of the package.

* :mod:`.fft`: centred orthonormal FFTs on native complex tensors.
* :mod:`.masks`: the undersampling-mask registry (fastMRI's masks and 2D masks).
* :mod:`.operators`: scale rules, k-space truncation and its adjoint, RSS, data consistency.
* :mod:`.degradation`: the LR acquisition model as functions (a readable reference path, a fast path).
* :mod:`.acquisition`: :class:`~.acquisition.Acquisition`, the one configured acquisition object.
"""
