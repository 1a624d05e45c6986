"""Model zoo: Vision Mamba (Vim) with hustvl/Vim parameter names, registered with timm."""

from .checkpoint import load_checkpoint, read_state_dict
from .localmamba import LocalVim, LocalVSSM
from .vim import VisionMamba
from .vmamba import VSSM
from .zoo import OFFICIAL_ALIASES, VIM_CONFIGS, create_vim, model_names

__all__ = ["VisionMamba", "create_vim", "load_checkpoint", "read_state_dict", "model_names", "VIM_CONFIGS",
           "OFFICIAL_ALIASES", "VSSM", "LocalVSSM", "LocalVim"]
