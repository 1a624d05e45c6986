import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.data import bundled_model


def test_jlss_lowers_every_block_loss_and_trains_all_linears(float_model, digits):
    config = ptq4vm_fx.QuantConfig.preset_config("w4a4", "ptq4vm", jlss_epochs=3, grid_samples=64)
    images = digits["calib"].images[:64]
    prepared = ptq4vm_fx.prepare(float_model, images[:1], config)
    with torch.no_grad():
        prepared(images)
    sim = ptq4vm_fx.convert(prepared, simulate=True)
    stats = sim.meta["block_stats"]
    assert list(stats) == [f"layers.{i}" for i in range(4)]
    for block in stats.values():
        assert len(block["epoch_losses"]) == 3
        assert block["loss_after"] < block["loss_before"]


def test_every_quantized_linear_gets_gradients_through_the_scan(float_model):
    from ptq4vm_fx.capture import blocks
    from ptq4vm_fx.passes.jlss import cosine_loss, fake_quant_nodes
    images = torch.randn(8, 1, 8, 8)
    prepared = ptq4vm_fx.prepare(float_model, images[:1], ptq4vm_fx.QuantConfig(method="pts_smooth"))
    with torch.no_grad():
        prepared(images)
    sim = ptq4vm_fx.convert(prepared, simulate=True)
    _, block = blocks(sim)[0]
    h = torch.randn(8, 17, 48)
    out = block(h, torch.zeros_like(h))[0]
    cosine_loss(out, torch.randn_like(out)).backward()
    for target in fake_quant_nodes(block):
        fq = block.get_submodule(target)
        for p in (fq.log_smooth, fq.log_w_scale, fq.log_act_scale):
            assert p.grad is not None and p.grad.abs().sum() > 0, target


@pytest.mark.parametrize("name", ["vim_digits", "vmamba_digits"])
def test_block_replay_gives_block_inputs_bit_for_bit_and_runs_changed_blocks(name, digits):
    """Block after block, the replay's inputs equal running the captured model up to each block (VMamba:
    downsampling between stages), also after each block is changed before the replay moves past it."""
    from ptq4vm_fx.capture import blocks, capture
    from ptq4vm_fx.passes.jlss import BlockReplay, block_inputs
    gm = capture(bundled_model(name), (8, 8))
    images = digits["calib"].images[:20]
    replay = BlockReplay(gm, images, 8)
    for block_name, block in blocks(gm):
        got, expected = replay.inputs_of(block_name), block_inputs(gm, block_name, images, 8)
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
        with torch.no_grad():
            next(p for p in block.parameters() if p.dim() == 2).mul_(1.5)  # as JLSS changes a block
