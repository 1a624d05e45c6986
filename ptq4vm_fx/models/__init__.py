"""Model zoo: the Visual Mamba families (Vim, VMamba, LocalMamba) with their official parameter names,
registered with timm and as ptq4vm_fx model families (models/family.py)."""

from .checkpoint import load_checkpoint, read_state_dict
from .family import FAMILIES, create_model, family_of, model_names
from .localmamba import LocalVim, LocalVSSM
from .vim import VisionMamba
from .vmamba import VSSM
from .zoo import OFFICIAL_ALIASES, VIM_CONFIGS, create_vim

__all__ = ["FAMILIES", "create_model", "family_of", "model_names", "load_checkpoint", "read_state_dict",
           "VisionMamba", "create_vim", "VIM_CONFIGS", "OFFICIAL_ALIASES", "VSSM", "LocalVSSM", "LocalVim"]
