"""The bundled model of each family runs out of the box on the bundled data (quantize, eval, sweep), and
bad input about families (another family's or size's checkpoint or quantized file, an unsupported
option, data that fits no bundled model) is one line on stderr and exit code 2."""

import json

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.cli import main
from ptq4vm_fx.data.bundled import checkpoint_path
from ptq4vm_fx.models.family import create_model

FAMILY_MODELS = ["vmamba_digits", "local_vssm_digits", "local_vim_digits"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """{name: (quantized file, metrics)} of each new family's bundled model (W8A8 PTS + smoothing, 64
    calibration images), written by ``ptq4vm quantize`` with no data or checkpoint argument."""
    files = {}
    for name in FAMILY_MODELS:
        folder = tmp_path_factory.mktemp(name)
        q, metrics = folder / "q.pt", folder / "m.json"
        argv = ["quantize", "--model", name, "--method", "pts_smooth", "--calib-images", "64", "--output", str(q),
                "--json", str(metrics), "--quiet"]  # fmt: skip
        assert main(argv) == 0
        files[name] = q, json.loads(metrics.read_text())
    return files


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_a_bundled_model_quantizes_and_evaluates_on_the_bundled_data(name, quantized, capsys):
    q, metrics = quantized[name]
    assert metrics["model"] == name and metrics["data"] == "bundled digits" and metrics["eval_images"] == 360
    assert metrics["float_top1"] >= 95.0 and metrics["quant_top1"] >= metrics["float_top1"] - 1.0
    assert main(["eval", "--quantized", str(q), "--quiet"]) == 0
    assert f"{name} on bundled digits: 360 images" in capsys.readouterr().out


def test_sweep_runs_on_a_bundled_model(capsys):
    assert main(["sweep", "--model", "local_vim_digits", "--methods", "minmax", "--presets", "w8a8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "local_vim_digits: float top-1" in out and out.count("| minmax") == 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Float checkpoints the bundled ones are not: local_vim_digits with another width, vmamba_digits with
    other depths and widths, vmamba_tiny_s1l8 shrunk to the digits' shape (no bundled model), and the
    bundled vmamba_digits checkpoint cut in half."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    narrow = create_model("local_vim_digits", embed_dim=16)
    torch.save({"model": narrow.state_dict()}, folder / "narrow.pt")
    smaller = create_model("vmamba_digits", depths=[2, 1], dims=[16, 32])
    torch.save({"model": smaller.state_dict()}, folder / "smaller.pt")
    whole = checkpoint_path("vmamba_digits").read_bytes()
    (folder / "cut.pt").write_bytes(whole[: len(whole) // 2])
    tiny = create_model("vmamba_tiny_s1l8", depths=[1], dims=8, in_chans=1, num_classes=10, imgsize=8)
    torch.save({"model": tiny.state_dict()}, folder / "tiny.pt")
    return folder


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--model", "vmamba_digits", "--checkpoint", "{vim}"],
     "checkpoint {vim} does not fit vmamba_digits (it holds a vim model, not a vmamba one): missing keys"),
    (["quantize", "--model", "vim_digits", "--checkpoint", "{vmamba}"],
     "checkpoint {vmamba} does not fit vim_digits (it holds a vmamba model, not a vim one): missing keys"),
    (["quantize", "--model", "vmamba_digits", "--checkpoint", "{ckpt}/smaller.pt"],
     "checkpoint {ckpt}/smaller.pt does not fit vmamba_digits: missing keys (18): layers.1.blocks.1.mlp.fc1.bias"),
    (["quantize", "--model", "vmamba_digits", "--checkpoint", "{ckpt}/cut.pt"],
     "{ckpt}/cut.pt is not a float checkpoint (not a readable torch.save archive of tensors and plain data)"),
    (["quantize", "--model", "local_vim_digits", "--checkpoint", "{ckpt}/narrow.pt"],
     "checkpoint {ckpt}/narrow.pt does not fit local_vim_digits: wrong shapes"),
    (["quantize", "--model", "vmamba_digits", "--checkpoint", "{vmamba}", "--model-kwargs", "forward_type='v2'"],
     "VSSM: forward_type='v2' is not supported; supported: v05_noz, v05, v04_noz"),
    (["quantize", "--model", "vmamba_digits", "--model-kwargs", "forward_type='v2'"],
     "VSSM: forward_type='v2' is not supported; supported: v05_noz, v05, v04_noz"),
    (["quantize", "--model", "local_vim_digits", "--model-kwargs", "directions=None"],
     "LocalVim: directions=None (the direction-search supernet) is not supported"),
    (["quantize", "--model", "local_vssm_digits", "--model-kwargs", "dims=[16, 32]"],
     "the bundled local_vssm_digits weights fit its own configuration only: give --checkpoint"),
    (["quantize", "--model", "vmamba_tiny_s1l8"], "--checkpoint is required for vmamba_tiny_s1l8"),
    (["eval", "--model", "vmamba_tiny_s1l8", "--checkpoint", "{ckpt}/tiny.pt", "--model-kwargs", "depths=[1]", "dims=8",
      "in_chans=1", "num_classes=10", "imgsize=8"],
     "the bundled digits data fits only the bundled models (vim_digits, vmamba_digits, local_vssm_digits, "
     "local_vim_digits); this model is vmamba_tiny_s1l8: give --data DIR"),
    (["eval", "--quantized", "{vmamba_q}", "--model", "local_vssm_digits"],
     "{vmamba_q} holds a quantized vmamba_digits, not local_vssm_digits"),
    (["eval", "--quantized", "{ckpt}/local_vssm_12.pt"],
     "input image size 8x8 does not match the model's 12x12: the captured model runs at the size it was calibrated"),
    (["eval", "--quantized", "{ckpt}/vmamba_12.pt"],
     "{ckpt}/vmamba_12.pt does not match the model it describes: it records image size 12x12, the model is built "
     "for 8x8"),
    (["eval", "--quantized", "{ckpt}/local_vim_12.pt"],
     "{ckpt}/local_vim_12.pt does not match the model it describes: it records image size 12x12, the model is "
     "built for 8x8"),
    (["eval", "--quantized", "{ckpt}/local_vim_cut.pt"],
     "{ckpt}/local_vim_cut.pt is not a ptq4vm_fx quantized model file (not a readable torch.save archive"),
])  # fmt: skip
def test_family_problems_exit_2(argv, message, quantized, checkpoints, capsys):
    """<family>_12: a file edited to record 12x12 images; a LocalVSSM (any size in float) runs at the size its
    file records, here not the data's; the other families' models are built for a size, which the file must
    record."""
    paths = {"vim": checkpoint_path("vim_digits"), "vmamba": checkpoint_path("vmamba_digits"), "ckpt": checkpoints,
             "vmamba_q": quantized["vmamba_digits"][0]}
    for name in FAMILY_MODELS:
        obj = torch.load(quantized[name][0], weights_only=True)
        torch.save(dict(obj, img_size=[12, 12]), checkpoints / f"{name.removesuffix('_digits')}_12.pt")
    whole = quantized["local_vim_digits"][0].read_bytes()
    (checkpoints / "local_vim_cut.pt").write_bytes(whole[: len(whole) // 3])
    assert main([*(a.format(**paths) for a in argv), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptq4vm: error: " + message.format(**paths)) and err.count("\n") == 1, err


def test_eval_reads_images_at_the_size_the_quantized_file_records(image_folder, tmp_path, capsys):
    """A LocalVSSM takes any size, so the size its scales fit is the calibration size (here 16x16, not the
    224 of its data config): eval resizes the folder's images to the size the file records."""
    torch.manual_seed(0)
    model = create_model("local_vssm_tiny", depths=[1], dims=8, num_classes=3, directions=[["h", "w7_flip"]]).eval()
    config = ptq4vm_fx.QuantConfig.preset_config("w8a8", "minmax")
    prepared = ptq4vm_fx.prepare(model, torch.randn(1, 3, 16, 16), config)
    with torch.no_grad():
        prepared(torch.randn(4, 3, 16, 16))
    ptq4vm_fx.save(ptq4vm_fx.convert(prepared), tmp_path / "q.pt")
    assert main(["eval", "--quantized", str(tmp_path / "q.pt"), "--data", str(image_folder), "--workers", "0",
                 "--quiet"]) == 0
    assert "local_vssm_tiny on " in capsys.readouterr().out
