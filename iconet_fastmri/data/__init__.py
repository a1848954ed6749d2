"""Data layer: fastMRI HDF5 -> samples (file checks, the SliceDataset, per-slice transforms)."""
