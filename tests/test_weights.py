"""Weights: safe loading, clear mismatch errors, and torchvision checkpoints loading key for key."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import lightdeploy
from lightdeploy.errors import UsageError

LOCAL_KEYS = Path(__file__).parent / "data" / "torchvision_keys"
# torchvision architecture (key file) -> lightdeploy model with the same layout
TORCHVISION = {
    "mobilenet_v2": "mobilenetv2",
    "mobilenet_v2_width0.5": "mobilenetv2_x0.5",
    "shufflenet_v2_x0_5": "shufflenetv2_x0.5",
    "shufflenet_v2_x1_0": "shufflenetv2",
    "shufflenet_v2_x1_5": "shufflenetv2_x1.5",
    "shufflenet_v2_x2_0": "shufflenetv2_x2.0",
}


def _keys(arch: str) -> dict:
    path = LOCAL_KEYS / f"{arch}.json"
    return json.loads(path.read_text())["keys"]


@pytest.mark.parametrize("arch,name", sorted(TORCHVISION.items()))
def test_torchvision_layout_loads_key_for_key(arch, name, tmp_path):
    """A state dict with torchvision's keys and shapes loads strictly and computes the same."""
    keys = _keys(arch)
    model = lightdeploy.create_model(name, calibrate_bn=False)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == keys
    # A checkpoint written in torchvision's layout (random values) round-trips through --weights.
    torch.manual_seed(3)
    ckpt = {k: torch.randn(v) if v else torch.tensor(7) for k, v in keys.items()}
    ckpt = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in ckpt.items()}
    path = tmp_path / f"{arch}.pth"
    torch.save(ckpt, path)
    loaded = lightdeploy.create_model(name, weights=path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ckpt[k].to(v.dtype)), k


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    from safetensors.torch import save_file

    src = lightdeploy.create_model("snet49", input_size=(64, 64))
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    for f in ("w.safetensors", "w.pth"):
        m = lightdeploy.create_model("snet49", weights=tmp_path / f)
        assert torch.equal(m(x), src(x))


def test_missing_file():
    with pytest.raises(UsageError, match="does not exist"):
        lightdeploy.create_model("snet49", weights="/nonexistent/w.pth")


def test_wrong_keys_are_listed(tmp_path):
    state = lightdeploy.create_model("snet146", calibrate_bn=False).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(UsageError) as exc:
        lightdeploy.create_model("snet49", weights=path)
    msg = str(exc.value)
    assert "missing from the file" in msg and "different shape" in msg and "conv5.0.weight" in msg


def test_num_classes_hint(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(lightdeploy.create_model("snet49", num_classes=10, calibrate_bn=False).state_dict(), path)
    with pytest.raises(UsageError, match="--num-classes 10"):
        lightdeploy.create_model("snet49", weights=path)
    assert lightdeploy.create_model("snet49", num_classes=10, weights=path).fc.out_features == 10


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/lightdeploy-pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    marker = Path("/tmp/lightdeploy-pwned")
    marker.unlink(missing_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"conv1.0.weight": _Evil()}, f)
    with pytest.raises(UsageError, match="Refused to load"):
        lightdeploy.create_model("snet49", weights=path)
    assert not marker.exists()
