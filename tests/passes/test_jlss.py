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


def test_official_options_train_the_parameters_themselves_and_leave_log_parameters(float_model, digits):
    """jlss_param "linear" (with the official rates, clipping, no shuffling, float-input grid search,
    midpoint search): the loss still falls, and each trained value is a plain log-parameter again, finite,
    that no longer requires grad."""
    from ptq4vm_fx.capture import blocks
    from ptq4vm_fx.passes.jlss import fake_quant_nodes
    from ptq4vm_fx.quant.linear import FakeQuantLinear
    config = ptq4vm_fx.QuantConfig.preset_config(
        "w4a4", jlss_epochs=3, jlss_batch_size=32, jlss_lr=(5e-4, 5e-4, 1e-2), jlss_param="linear",
        jlss_grad_clip=2.0, jlss_shuffle=False, jlss_weight_decay=1e-5, grid_inputs="float",
        act_search="midpoint", jlss_loss="cosine+mse", grid_samples=32)
    images = digits["calib"].images[:32]
    prepared = ptq4vm_fx.prepare(float_model, images[:1], config)
    with torch.no_grad():
        prepared(images)
    sim = ptq4vm_fx.convert(prepared, simulate=True)
    assert all(b["loss_after"] < b["loss_before"] for b in sim.meta["block_stats"].values())
    for _, block in blocks(sim):
        for target in fake_quant_nodes(block):
            fq = block.get_submodule(target)
            assert type(fq) is FakeQuantLinear  # the parametrization is gone
            for p in (fq.log_smooth, fq.log_w_scale, fq.log_act_scale):
                assert isinstance(p, torch.nn.Parameter) and not p.requires_grad and torch.isfinite(p).all()


def test_float_grid_inputs_search_every_linear_on_the_float_blocks_activations(float_model):
    """grid_inputs "float": each linear's token ranges come from its input in the float block (no quantized
    producer before it), so they equal a search on that input."""
    from ptq4vm_fx.capture import blocks
    from ptq4vm_fx.passes.jlss import _linear_input, fake_quant_nodes, grid_search_block
    from ptq4vm_fx.quant.grid_search import search_token_qparams
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    config = ptq4vm_fx.QuantConfig.preset_config("w4a4", grid_inputs="float", grid_samples=8, jlss_epochs=0)
    prepared = ptq4vm_fx.prepare(float_model, images[:1], config)
    with torch.no_grad():
        prepared(images)
    _, block = blocks(ptq4vm_fx.convert(prepared, simulate=True))[1]
    inputs = (torch.randn(8, 17, 48), torch.randn(8, 17, 48))
    grid_search_block(block, inputs, config, 8)
    fqs = {t: block.get_submodule(t) for t in fake_quant_nodes(block)}
    for fq in fqs.values():
        fq.quant_enabled = False
    for target, fq in fqs.items():
        x = _linear_input(block, target, inputs, 8)
        scale, _ = search_token_qparams(x, fq.inv_smooth, 4, shrink="zero")
        assert torch.equal(fq.log_act_scale, torch.log(scale)), target
