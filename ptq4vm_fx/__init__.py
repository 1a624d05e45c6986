"""ptq4vm_fx: PTQ4VM post-training quantization of Visual Mamba models, as an FX compiler."""

from . import models  # noqa: F401  (registers the Vim models with timm)
from .api import convert, prepare
from .config import QuantConfig
from .serialization import load, save

__all__ = ["prepare", "convert", "QuantConfig", "save", "load"]
__version__ = "0.1.0"
