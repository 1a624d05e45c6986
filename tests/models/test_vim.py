import math

import pytest
import timm
import torch
import torch.nn.functional as F

from ptq4vm_fx import scan
from ptq4vm_fx.models import OFFICIAL_ALIASES, create_vim

from ..conftest import tiny_vim


def hustvl_state_shapes(embed_dim, depth=24, num_classes=1000, tokens=197, d_state=16):
    """Parameter names and shapes of hustvl/Vim's VisionMamba (bimamba v2, middle cls token)."""
    d_inner, dt_rank = 2 * embed_dim, math.ceil(embed_dim / 16)
    shapes = {
        "cls_token": (1, 1, embed_dim), "pos_embed": (1, tokens, embed_dim),
        "patch_embed.proj.weight": (embed_dim, 3, 16, 16), "patch_embed.proj.bias": (embed_dim,),
        "head.weight": (num_classes, embed_dim), "head.bias": (num_classes,), "norm_f.weight": (embed_dim,),
    }
    for i in range(depth):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (embed_dim,)
        shapes[p + "mixer.in_proj.weight"] = (2 * d_inner, embed_dim)
        shapes[p + "mixer.out_proj.weight"] = (embed_dim, d_inner)
        for s in ("", "_b"):
            shapes[p + f"mixer.A{s}_log"] = (d_inner, d_state)
            shapes[p + f"mixer.D{s}"] = (d_inner,)
            shapes[p + f"mixer.conv1d{s}.weight"] = (d_inner, 1, 4)
            shapes[p + f"mixer.conv1d{s}.bias"] = (d_inner,)
            shapes[p + f"mixer.x_proj{s}.weight"] = (dt_rank + 2 * d_state, d_inner)
            shapes[p + f"mixer.dt_proj{s}.weight"] = (d_inner, dt_rank)
            shapes[p + f"mixer.dt_proj{s}.bias"] = (d_inner,)
    return shapes


@pytest.mark.parametrize("name,embed_dim,params_m", [
    ("vim_tiny_patch16_224", 192, 7), ("vim_small_patch16_224", 384, 26), ("vim_base_patch16_224", 768, 98)])
def test_state_dict_matches_hustvl(name, embed_dim, params_m):
    with torch.device("meta"):
        model = create_vim(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == hustvl_state_shapes(embed_dim)
    # the Vim paper's parameter counts, in millions, rounded
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == params_m


def test_timm_create_model_with_overrides_and_official_alias():
    model = timm.create_model("vim_tiny_patch16_224", depth=2, img_size=64, num_classes=10)
    assert len(model.layers) == 2 and model.num_tokens == 17 and model.head.out_features == 10
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    alias = next(iter(OFFICIAL_ALIASES))
    with torch.device("meta"):
        official = timm.create_model(alias)
    assert official.embed_dim == 192 and official.model_name == "vim_tiny_patch16_224"


def test_unknown_model_and_pretrained_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vim_huge'"):
        create_vim("vim_huge")
    with pytest.raises(ValueError, match="no weights are downloaded"):
        create_vim("vim_tiny_patch16_224", pretrained=True)


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="input image size 16x16 does not match the model's 32x32"):
        tiny_vim()(torch.randn(1, 3, 16, 16))


def test_backward_branch_equals_hustvl_flip_formulation():
    """hustvl runs the backward branch as flip -> causal conv -> scan -> flip; ours scans in reverse."""
    model = tiny_vim()
    mixer = model.layers[0].mixer
    h = torch.randn(3, model.num_tokens, model.embed_dim)
    with torch.no_grad():
        x, z = mixer.in_proj(h).chunk(2, dim=-1)
        x, z = x.transpose(1, 2), z.transpose(1, 2)

        def branch(x, z, conv, x_proj, dt_proj, A_log, D):
            u = F.silu(conv(x)[..., : x.shape[-1]])
            dbl = x_proj(u.transpose(1, 2))
            r, n = mixer.dt_rank, mixer.d_state
            delta = dt_proj(dbl[..., :r]).transpose(1, 2)
            B, C = dbl[..., r:r + n].transpose(1, 2), dbl[..., r + n:].transpose(1, 2)
            return scan.selective_scan_ref(u, delta, -torch.exp(A_log), B, C, D, z, None, True, False)

        y_f = branch(x, z, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
        y_b = branch(x.flip(-1), z.flip(-1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b)
        expected = mixer.out_proj(((y_f + y_b.flip(-1)) / 2).transpose(1, 2))
        torch.testing.assert_close(mixer(h), expected, rtol=1e-5, atol=1e-6)


def test_forward_backward_is_differentiable_everywhere():
    model = tiny_vim()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
