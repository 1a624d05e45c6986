import copy
import os
import pickle

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.quant.linear import FakeQuantLinear, QuantizedLinear
from ptq4vm_fx.serialization import FORMAT, quantized_modules
from tests.conftest import calibrated, tiny_vim


@pytest.mark.parametrize("which", [1, 2])  # integer, simulated
def test_round_trip_is_exact(ptq4vm_w8a8, digits, tmp_path, which):
    model = ptq4vm_w8a8[which]
    ptq4vm_fx.save(model, tmp_path / "q.pt")
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    x = digits["test"].images[:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.meta["stage"] == model.meta["stage"]
    assert quantized_modules(loaded) == quantized_modules(model)


@pytest.fixture(scope="module")
def tiny_pair():
    """(integer, simulated) W8A8 pts_smooth models of a random 2-block Vim, calibrated on 8 images."""
    prepared = calibrated(tiny_vim(), torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                          ptq4vm_fx.QuantConfig.preset_config("w8a8", "pts_smooth"))
    return ptq4vm_fx.convert(prepared), ptq4vm_fx.convert(prepared, simulate=True)


def test_the_file_records_the_quantized_modules_read_from_the_model(tiny_pair, tmp_path):
    qmodel, sim = tiny_pair
    for model, kind in ((qmodel, "QuantizedLinear"), (sim, "FakeQuantLinear")):
        ptq4vm_fx.save(model, tmp_path / "q.pt")
        record = torch.load(tmp_path / "q.pt", weights_only=True)["modules"]
        assert len(record) == 12 and {e["kind"] for e in record} == {kind}
        in_proj = next(e for e in record if e["name"] == "layers.1.mixer.in_proj")
        assert in_proj["args"] == {"in_features": 32, "out_features": 128, "tokens": 17, "w_bits": 8, "a_bits": 8,
                                   "dynamic": False, "has_bias": False}
        assert next(e for e in record if e["name"] == "layers.0.mixer.dt_proj_b")["args"]["has_bias"]


def test_load_rebuilds_exactly_the_recorded_modules(tiny_pair, tmp_path):
    """A model whose quantized linears are not what its config says (one put back to float) round-trips:
    the file says what the model holds, nothing is re-derived from the config."""
    import copy

    model = copy.deepcopy(tiny_pair[0])
    block = model.get_submodule("layers.0")
    q = block.get_submodule("mixer.out_proj")
    block.set_submodule("mixer.out_proj", torch.nn.Linear(q.in_features, q.out_features, bias=False))
    ptq4vm_fx.save(model, tmp_path / "q.pt")
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    assert isinstance(loaded.get_submodule("layers.0.mixer.out_proj"), torch.nn.Linear)
    assert isinstance(loaded.get_submodule("layers.1.mixer.out_proj"), QuantizedLinear)
    assert len(quantized_modules(loaded)) == 11
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _rewrite(path, out, change):
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, out)
    return out


def _first_entry(*keys, value):
    """A change to a saved file's first module record: ``record[keys[0]]...[keys[-1]] = value``."""

    def change(obj):
        target = obj["modules"][0]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


_DISAGREE = "does not match the model it describes .*record and state dict disagree"


@pytest.mark.parametrize("change, message", [
    (lambda obj: obj.update(modules=[e for e in obj["modules"] if e["name"] != "layers.0.mixer.in_proj"]),
     _DISAGREE),
    (_first_entry("args", "tokens", value=5), _DISAGREE),
    (_first_entry("kind", value="FakeQuantLinear"), _DISAGREE),
    (_first_entry("name", value="layers.0.mixer.conv1d"), "layers.0.mixer.conv1d is not a linear of it"),
    (_first_entry("args", "in_features", value=7), "is recorded as 7->128, the model's linear is 32->128"),
    (_first_entry("kind", value="os.system"), "malformed ptq4vm_fx file .*unknown module kind 'os.system'"),
    (lambda obj: obj.pop("modules"), r"malformed ptq4vm_fx file \(no modules\)"),
], ids=["entry dropped", "tokens", "simulated kind", "not a linear", "features", "unknown kind", "no modules"])
def test_a_record_that_does_not_match_the_state_dict_is_refused(change, message, tiny_pair, tmp_path):
    ptq4vm_fx.save(tiny_pair[0], tmp_path / "q.pt")
    with pytest.raises(InputError, match=message):
        ptq4vm_fx.load(_rewrite(tmp_path / "q.pt", tmp_path / "bad.pt", change))


def test_older_and_unknown_formats_are_refused(tiny_pair, tmp_path):
    path = tmp_path / "q.pt"
    ptq4vm_fx.save(tiny_pair[0], path)
    for version in ("ptq4vm_fx.quantized/1", "ptq4vm_fx.quantized/99"):
        bad = _rewrite(path, tmp_path / "old.pt", lambda obj, v=version: obj.update(format=v))
        with pytest.raises(InputError, match=f"in format '{version}', which this version does not read "
                                             f"\\(it reads '{FORMAT}'\\): quantize the model again"):
            ptq4vm_fx.load(bad)
    torch.save({"model": {}}, tmp_path / "float.pt")
    with pytest.raises(InputError, match="float.pt is not a ptq4vm_fx quantized model file"):
        ptq4vm_fx.load(tmp_path / "float.pt")
    with pytest.raises(InputError, match="takes the module returned by ptq4vm_fx.convert"):
        ptq4vm_fx.save(tiny_vim(), tmp_path / "float_model.pt")


class _RunsCode:
    """Unpickling this calls os.mkdir(target): what a malicious model file would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def _hostile_files(tmp_path, real: bytes) -> dict:
    """{name: path} of garbage, a truncated real file, an empty file, a directory and two pickles that
    would run code (a torch.save archive and a bare pickle)."""
    files = {"garbage": tmp_path / "garbage.pt", "truncated": tmp_path / "cut.pt", "empty": tmp_path / "empty.pt",
             "directory": tmp_path / "dir.pt", "archive": tmp_path / "evil.pt", "pickle": tmp_path / "evil.pkl"}
    files["garbage"].write_bytes(os.urandom(2048))
    files["truncated"].write_bytes(real[: len(real) // 2])
    files["empty"].write_bytes(b"")
    files["directory"].mkdir()
    torch.save({"format": FORMAT, "state_dict": _RunsCode(tmp_path / "ran")}, files["archive"])
    files["pickle"].write_bytes(pickle.dumps({"format": FORMAT, "x": _RunsCode(tmp_path / "ran")}))
    return files


def refuses_hostile_files(read, tmp_path, real: bytes, what: str) -> None:
    """``read`` refuses every hostile file with one InputError line saying it is not ``what``, nothing of
    torch's message (which advises weights_only=False), no warning, and runs no code."""
    import traceback
    import warnings

    for name, path in _hostile_files(tmp_path, real).items():
        with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError) as info:
            warnings.simplefilter("always")
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not {what} ("), (name, message)
        assert "weights_only" not in message and "\n" not in message, name
        assert "weights_only" not in "".join(traceback.format_exception(info.value)), name  # no chained torch error
        assert not [w for w in caught if "weights_only" in str(w.message)], name
    assert not (tmp_path / "ran").exists()


def test_garbage_truncated_and_code_carrying_files_are_refused(tiny_pair, tmp_path):
    ptq4vm_fx.save(tiny_pair[0], tmp_path / "real.pt")
    refuses_hostile_files(ptq4vm_fx.load, tmp_path, (tmp_path / "real.pt").read_bytes(),
                          "a ptq4vm_fx quantized model file")
    with pytest.raises(InputError, match="no such file: .*nothing.pt"):
        ptq4vm_fx.load(tmp_path / "nothing.pt")


def test_fake_quant_modules_round_trip(tiny_pair, tmp_path):
    ptq4vm_fx.save(tiny_pair[1], tmp_path / "sim.pt")
    loaded = ptq4vm_fx.load(tmp_path / "sim.pt")
    assert all(isinstance(loaded.get_submodule(e["name"]), FakeQuantLinear) for e in quantized_modules(loaded))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_pair[1](x))


@pytest.fixture(scope="module")
def tiny_vq():
    """{method: model} of a random 2-block Vim: k-means VQ weights only (VQLinear), behind A8 (VQActLinear), rtn."""
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {(preset, method): ptq4vm_fx.convert(calibrated(tiny_vim(), images, ptq4vm_fx.QuantConfig.preset_config(
        preset, method))) for preset, method in (("w2a16", "vq_kmeans"), ("w2a8", "vq_kmeans"), ("w3a16", "rtn"))}


@pytest.mark.parametrize("which, kind", [(("w2a16", "vq_kmeans"), "VQLinear"), (("w2a8", "vq_kmeans"), "VQActLinear"),
                                         (("w3a16", "rtn"), None)])
def test_vq_and_rtn_models_round_trip(tiny_vq, tmp_path, which, kind):
    model = tiny_vq[which]
    ptq4vm_fx.save(model, tmp_path / "q.pt")
    record = torch.load(tmp_path / "q.pt", weights_only=True)["modules"]
    assert {e["kind"] for e in record} == ({kind} if kind else set()) and len(record) == (8 if kind else 0)
    if kind:
        args = next(e for e in record if e["name"] == "layers.0.mixer.x_proj")["args"]
        assert args == {"in_features": 64, "out_features": 34, "k": 256, "d": 4, "has_bias": False,
                        **({"tokens": 17, "a_bits": 8} if kind == "VQActLinear" else {})}
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    assert quantized_modules(loaded) == quantized_modules(model)
    assert loaded.meta["quant_config"] == model.meta["quant_config"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_vq_file_with_a_code_out_of_range_is_refused(tiny_vq, tmp_path):
    from ptq4vm_fx.kernels.vq_linear import pack_codes

    model = copy.deepcopy(tiny_vq["w2a16", "vq_kmeans"])
    layer = model.get_submodule("layers.1.mixer.out_proj")
    codes = layer.code_indices()
    small = type(layer).from_codes(codes % 200, layer.codebook[:200].float(), None)  # a 200-entry codebook
    model.set_submodule("layers.1.mixer.out_proj", small)
    ptq4vm_fx.save(model, tmp_path / "q.pt")
    obj = torch.load(tmp_path / "q.pt", weights_only=True)
    bad = small.code_indices()
    bad[3, 5] = 250  # fits in the 8-bit code, not in the codebook
    obj["state_dict"]["layers.1.mixer.out_proj.codes"] = pack_codes(bad, 8)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"bad.pt: VQLinear layers.1.mixer.out_proj: code 250 is out of range for a "
                                         r"200-entry codebook \(a corrupt file\?\)"):
        ptq4vm_fx.load(tmp_path / "bad.pt")
    obj["modules"][0]["args"]["k"] = 256.0
    torch.save(obj, tmp_path / "bad_args.pt")
    with pytest.raises(InputError, match="malformed ptq4vm_fx file .*constructor arguments"):
        ptq4vm_fx.load(tmp_path / "bad_args.pt")
