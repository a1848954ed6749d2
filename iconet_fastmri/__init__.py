"""iconet-fastmri: ICONet joint reconstruction + super-resolution on fastMRI k-space."""

__version__ = "0.1.0"
