"""Named Vim configurations, registered with timm (``timm.create_model("vim_tiny_patch16_224")``).

Importing this module registers the names with timm's registry, as every timm model module does.
Keyword arguments override the configuration (``depth=2, img_size=64, num_classes=10``).
"""

from __future__ import annotations

from ..errors import InputError
from .family import (
    ModelFamily,
    check_overrides,
    constructor_keys,
    model_overrides,
    named_model,
    register_family,
    register_with_timm,
)
from .vim import Block, RMSNorm, VisionMamba

_BASE = dict(img_size=224, patch_size=16, stride=16, depth=24, d_state=16)
VIM_CONFIGS = {
    "vim_tiny_patch16_224": dict(_BASE, embed_dim=192),
    "vim_small_patch16_224": dict(_BASE, embed_dim=384),
    "vim_base_patch16_224": dict(_BASE, embed_dim=768),
    # the small model bundled with the package, trained on scikit-learn's 8x8 digits
    "vim_digits": dict(img_size=8, patch_size=2, stride=2, depth=4, embed_dim=48, d_state=16, channels=1,
                       num_classes=10, drop_path_rate=0.0),
}
# hustvl/Vim's names for the same models
OFFICIAL_ALIASES = {
    "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_tiny_patch16_224",
    "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_small_patch16_224",
    "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2":
        "vim_base_patch16_224",
}


def model_names() -> list[str]:
    return sorted(VIM_CONFIGS) + sorted(OFFICIAL_ALIASES)


def config_keys() -> list[str]:
    """The configuration keys a Vim accepts as overrides (VisionMamba's arguments, and ``in_chans``)."""
    return sorted([*constructor_keys(VisionMamba), "in_chans"])


def create_vim(name: str, pretrained: bool = False, **overrides) -> VisionMamba:
    """Build a named Vim. ``in_chans`` is accepted as timm's name for ``channels``."""
    overrides = model_overrides(name, model_names(), pretrained, overrides)
    check_overrides(name, overrides)
    if "in_chans" in overrides:
        overrides["channels"] = overrides.pop("in_chans")
    canonical = OFFICIAL_ALIASES.get(name, name)
    config = dict(VIM_CONFIGS[canonical], **overrides)
    try:
        model = VisionMamba(**config)
    except (TypeError, ValueError, RuntimeError) as exc:
        if not overrides:
            raise
        raise InputError(f"{name} with {overrides} is not a valid configuration ({exc})") from exc
    return named_model(model, canonical, (config.get("channels", 3), *model.patch_embed.img_size))


for _name in model_names():
    register_with_timm(_name, create_vim, f"Vim model {_name!r}; keyword arguments override its configuration.")


FAMILY = register_family(ModelFamily(
    name="vim",
    model_class=VisionMamba,
    model_names=model_names,
    create=create_vim,
    config_keys=config_keys,
    block_classes=(Block,),
    leaf_classes=(RMSNorm,),
    fold_norms=(RMSNorm,),
    # the mixer's linears (docs/design.md section 4); the backward branch has its own x_proj_b / dt_proj_b
    linears=("in_proj", "x_proj", "dt_proj", "out_proj", "x_proj_b", "dt_proj_b"),
    alpha=0.5,
    scan_orders=("tokens 0..L-1 (forward branch)", "tokens L-1..0 (backward branch, reverse=True)"),
    image_size=lambda model: tuple(model.patch_embed.img_size),
    model_checks_size=True,
    # the official PTQ4VM code's Vim command (README.md, "JLSS"): --epochs 100 --batch-size 256 --train-batch 256
    # --lr-w 5e-4 --lr-a 5e-4 --lr-s 1e-2 (weight steps, activation steps, smoothing scales)
    official_jlss={"jlss_epochs": 100, "jlss_batch_size": 256, "jlss_lr": (5e-4, 5e-4, 1e-2)},
))
