import argparse
import re

import pytest
import torch

from ptq4vm_fx.data.bundled import BUNDLED_MODELS, checkpoint_path
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models import load_checkpoint, read_state_dict
from ptq4vm_fx.models.family import create_model, family_of, family_of_name

from ..conftest import tiny_vim
from ..test_serialization import refuses_hostile_files


def write_official_style(path, state_dict):
    """Same structure as hustvl/Vim's released files (vim_t_midclstok_76p1acc.pth)."""
    torch.save({
        "model": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "lr_scheduler": {"base_lrs": [1e-3], "last_epoch": 300},
        "epoch": 299,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(
            model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
            input_size=224, batch_size=128),
    }, path)


def test_official_style_checkpoint_loads_strictly(tmp_path):
    source, target = tiny_vim(), tiny_vim()
    torch.nn.init.normal_(source.head.weight)
    write_official_style(tmp_path / "vim.pth", source.state_dict())
    load_checkpoint(target, tmp_path / "vim.pth")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_wrong_keys_and_shapes_are_named(tmp_path):
    sd = tiny_vim().state_dict()
    sd["layers.0.mixer.extra"] = torch.zeros(1)
    del sd["norm_f.weight"]
    sd["head.weight"] = torch.zeros(5, 32)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(InputError) as err:
        load_checkpoint(tiny_vim(), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys (1): norm_f.weight" in msg
    assert "unexpected keys (1): layers.0.mixer.extra" in msg
    assert "wrong shapes (1): head.weight (5, 32) vs model (10, 32)" in msg
    assert "\n" not in msg and "it holds a" not in msg  # a Vim's keys: no other family named


@pytest.mark.parametrize("model_name", BUNDLED_MODELS)
def test_another_familys_checkpoint_names_the_family_it_holds(model_name):
    """Each bundled checkpoint loaded into each other family's model: the message names both families."""
    model = create_model(model_name)
    own = family_of(model).name
    for other in BUNDLED_MODELS:
        held = family_of_name(other).name
        if held == own:
            continue
        message = f"does not fit {model_name} (it holds a {held} model, not a {own} one): missing keys"
        with pytest.raises(InputError, match=rf"^checkpoint .*{re.escape(message)}"):
            load_checkpoint(model, checkpoint_path(other))
        with pytest.raises(InputError, match=rf"^state dict {re.escape(message)}"):  # every family's model
            model.load_state_dict(read_state_dict(checkpoint_path(other)))


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth is not a float checkpoint .not a readable torch.save archive"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(InputError, match="no such file: .*nothing.pth .expected a float checkpoint"):
        read_state_dict(tmp_path / "nothing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds no state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_garbage_truncated_and_code_carrying_checkpoints_are_refused(tmp_path):
    write_official_style(tmp_path / "real.pth", tiny_vim().state_dict())
    refuses_hostile_files(read_state_dict, tmp_path, (tmp_path / "real.pth").read_bytes(), "a float checkpoint")
