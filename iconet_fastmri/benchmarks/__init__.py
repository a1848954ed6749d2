"""Speed and memory of iconet_fastmri against the fastMRI reference (``scripts/benchmark.py``).

Every comparison is a ratio against the fastMRI reference measured in the same
run, on the same data, with the sides timed alternately (interleaved repeats
after warm-up, medians); each compared pair is also checked numerically
(``correctness`` in the JSON). Sections without a fastMRI counterpart (model,
inference) report absolute numbers.

* :mod:`.harness`: timing, peak memory, time budgets, machine-load detection, size profiles.
* :mod:`.kspace`: ``fft`` (centred FFTs vs ``fastmri.fft2c``) and ``degradation``
  (batched ``Acquisition.simulate`` vs per-sample fastMRI transforms), slices/s.
* :mod:`.model`: ``model`` (ICONet slices/s, FLOPs per slice) and ``memory`` (peak
  memory per case, ours next to fastMRI's).
* :mod:`.inference`: ``inference`` (the shipped ``run_inference``, HDF5 -> saved
  reconstruction, per volume and slice) and the targets of the run.
* :mod:`.report`: the printed markdown tables.
* :mod:`.cli`: the section registry and :func:`~.cli.main`.

No module imports torch at import time: ``--thp`` must set
``THP_MEM_ALLOC_ENABLE`` first; :class:`~.harness.Bench` imports it.
"""
