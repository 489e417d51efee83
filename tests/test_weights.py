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


# ------------------------------------------------------------------------ checkpoints as users have them
def _tiny_state(seed: int) -> dict:
    from user_models import TinyClassifier

    torch.manual_seed(seed)
    return TinyClassifier().state_dict()


def _load(path, key=None):
    from user_models import TinyClassifier

    from lightdeploy.weights import load_weights

    model = TinyClassifier()
    load_weights(model, path, "tiny", key)
    return model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3}, id="lightning"),
        pytest.param(lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, id="ddp"),
        pytest.param(lambda sd: {"ema": {"module": {f"_orig_mod.{k}": v for k, v in sd.items()}}}, id="ema-compiled"),
        pytest.param(lambda sd: {k: v for k, v in sd.items() if "num_batches_tracked" not in k}, id="no-bn-counter"),
    ],
)
def test_checkpoints_load_as_training_scripts_save_them(wrap, tmp_path):
    state = _tiny_state(1)
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    loaded = _load(tmp_path / "ckpt.pth")
    assert all(torch.equal(loaded[k], state[k]) for k in state if "num_batches_tracked" not in k)


def test_a_checkpoint_with_model_and_ema_weights_needs_a_key(tmp_path):
    plain, ema = _tiny_state(1), _tiny_state(2)
    torch.save({"state_dict": plain, "state_dict_ema": ema}, tmp_path / "ckpt.pth")
    with pytest.raises(
        UsageError, match=r"several state dicts \(state_dict, state_dict_ema\).*--weights-key state_dict_ema"
    ):
        _load(tmp_path / "ckpt.pth")
    assert _same(_load(tmp_path / "ckpt.pth", "state_dict_ema"), ema)
    assert _same(_load(tmp_path / "ckpt.pth", "state_dict"), plain)
    with pytest.raises(UsageError, match="no state dict under 'ema'.*state_dict, state_dict_ema"):
        _load(tmp_path / "ckpt.pth", "ema")


def test_a_mismatch_lists_the_first_ten_keys_of_each_kind(tmp_path):
    """12 keys renamed (12 missing, 12 unexpected) and 12 reshaped: each kind shows 10 and counts the rest."""
    state = lightdeploy.create_model("snet49", calibrate_bn=False).state_dict()
    tensors = [k for k, v in state.items() if v.dim() > 0]
    renamed, reshaped = tensors[:12], tensors[12:24]
    broken = {(f"renamed.{k}" if k in renamed else k): v for k, v in state.items()}
    broken.update({k: torch.zeros(state[k].shape[0] + 1, *state[k].shape[1:]) for k in reshaped})
    torch.save(broken, tmp_path / "w.pth")
    with pytest.raises(UsageError) as exc:
        lightdeploy.create_model("snet49", weights=tmp_path / "w.pth")
    msg = str(exc.value)
    for kind in ("missing from the file", "not in the model", "with a different shape"):
        assert f"12 key(s) {kind}: " in msg, kind
        listed = msg.split(f"{kind}: ", 1)[1].split(" and 2 more")[0]
        assert len(listed.split(", ")) == 10 if kind != "with a different shape" else listed.count("(file") == 10
    assert msg.count(" and 2 more") == 3


def test_cli_factory_with_weights(tmp_path):
    """--weights applies to a factory: a DDP/EMA checkpoint loads (and is recorded); a checkpoint of
    another model exits 2 with the keys, and nothing is written."""
    from conftest import ROOT, run_cli

    good = {"model_ema": {f"module.{k}": v for k, v in _tiny_state(4).items()}}
    torch.save(good, tmp_path / "good.pth")
    torch.save(lightdeploy.create_model("snet49", calibrate_bn=False).state_dict(), tmp_path / "bad.pth")
    args = ("export", "tests/user_models.py:tiny_classifier", "--task", "classify", "--input-size", "64", "64")
    out = tmp_path / "o"
    result = run_cli(*args, "--to", "onnx", "--weights", str(tmp_path / "bad.pth"), "--out", str(out), cwd=ROOT)
    assert result.returncode == 2 and "does not fit" in result.stderr and "missing from the file" in result.stderr
    assert not out.exists()
    result = run_cli(*args, "--to", "onnx", "--weights", str(tmp_path / "good.pth"), "--out", str(out), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "tiny_classifier-onnx-fp32" / "manifest.json").read_text())
    assert manifest["source"]["weights"]["sha256"] and manifest["parity"]["passed"]
    # Re-checking needs the same weights: without them parity exits 2 and says which file to give.
    artifact = str(out / "tiny_classifier-onnx-fp32")
    result = run_cli("parity", artifact, "--quiet", cwd=ROOT)
    assert result.returncode == 2 and "good.pth" in result.stderr and "--weights" in result.stderr
    result = run_cli("parity", artifact, "--quiet", "--weights", str(tmp_path / "good.pth"), cwd=ROOT)
    assert result.returncode == 0, result.stderr
