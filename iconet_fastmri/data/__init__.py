"""Data layer: fastMRI HDF5 -> samples (transforms, file checks, demo data)."""
