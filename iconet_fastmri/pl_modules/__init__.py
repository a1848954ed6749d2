"""Lightning 2 modules: :class:`IconetModule` and :class:`IconetDataModule`."""

from .data_module import IconetDataModule
from .iconet_module import IconetModule

__all__ = ["IconetModule", "IconetDataModule"]
