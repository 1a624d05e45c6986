import pytest
import torch

import ptq4vm_fx


@pytest.mark.parametrize("which", [1, 2])  # integer, simulated
def test_round_trip_is_exact(ptq4vm_w8a8, digits, tmp_path, which):
    model = ptq4vm_w8a8[which]
    ptq4vm_fx.save(model, tmp_path / "q.pt")
    loaded = ptq4vm_fx.load(tmp_path / "q.pt")
    x = digits["test"].images[:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.meta["stage"] == model.meta["stage"]


def test_corrupt_mismatched_and_foreign_files(ptq4vm_w8a8, tmp_path):
    path = tmp_path / "q.pt"
    ptq4vm_fx.save(ptq4vm_w8a8[1], path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or not a ptq4vm_fx quantized model"):
        ptq4vm_fx.load(tmp_path / "cut.pt")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"].pop("layers.0.mixer.in_proj.wq")
    torch.save(obj, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not match the model it describes"):
        ptq4vm_fx.load(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "float.pt")
    with pytest.raises(ValueError, match="not a ptq4vm_fx quantized model"):
        ptq4vm_fx.load(tmp_path / "float.pt")
    with pytest.raises(ValueError, match="takes the module returned by ptq4vm_fx.convert"):
        ptq4vm_fx.save(ptq4vm_w8a8[0], tmp_path / "prepared.pt")
