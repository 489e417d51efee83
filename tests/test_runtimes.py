"""The runtimes package: torch-free import, manifest verification, input checks, classifier wrapper."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightdeploy import runtimes
from lightdeploy.errors import ArtifactError, UsageError

RUNTIME_MODULES = sorted(p.stem for p in (Path(__file__).parents[1] / "runtimes").glob("*.py"))


def test_runtimes_import_without_torch_or_tensorflow():
    """Every runtimes module imports with torch and tensorflow blocked (an edge app has neither)."""
    mods = [f"lightdeploy.runtimes.{m}" for m in RUNTIME_MODULES if m != "__init__"]
    code = (
        "import sys\n"
        "for blocked in ('torch', 'tensorflow', 'torchvision'):\n"
        "    sys.modules[blocked] = None\n"
        "import importlib\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "import lightdeploy.runtimes\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k in sys.modules if sys.modules[k] is not None)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_load_runs_onnx_artifact_without_torch(classifier_artifact, cat_image):
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "from lightdeploy import runtimes\n"
        f"m = runtimes.load({str(classifier_artifact)!r})\n"
        "print(len(m.predict(sys.argv[1])))\n"
    )
    img = classifier_artifact.parent / "cat.png"
    from PIL import Image

    Image.fromarray(cat_image).save(img)
    result = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def test_classifier_predict_accepts_path_pil_and_array(classifier_artifact, cat_image):
    from PIL import Image

    model = runtimes.load(classifier_artifact)
    a = model.predict(cat_image)
    b = model.predict(Image.fromarray(cat_image))
    assert [p.index for p in a] == [p.index for p in b]
    assert len(a) == 5 and all(0 <= p.probability <= 1 for p in a)
    assert a[0].probability >= a[-1].probability


def test_tampered_artifact_is_refused(classifier_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(classifier_artifact, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    with pytest.raises(ArtifactError, match="modified or corrupted"):
        runtimes.load(copy)


def test_missing_file_and_manifest(classifier_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(classifier_artifact, copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        runtimes.load(copy)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        runtimes.load(tmp_path)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not JSON"):
        runtimes.load(copy)


def test_wrong_input_shape_and_dtype(classifier_artifact):
    model = runtimes.load(classifier_artifact)
    with pytest.raises(UsageError, match="must have shape 1x3x64x64"):
        model.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UsageError, match="dtype float32"):
        model.infer(np.zeros((1, 3, 64, 64), np.float64))
    with pytest.raises(UsageError, match="takes inputs"):
        model.infer({"x": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(UsageError, match="HxWx3 uint8"):
        model.predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(UsageError, match=r"run\(\) takes a dict .* got ndarray. Call run\(\{'image': array\}\)"):
        model.runtime.run(np.zeros((1, 3, 64, 64), np.float32))


def test_manifest_records_what_design_asks(classifier_artifact):
    m = json.loads((classifier_artifact / "manifest.json").read_text())
    for key in (
        "model",
        "task",
        "target",
        "precision",
        "inputs",
        "outputs",
        "preprocessing",
        "files",
        "versions",
        "export_options",
        "parity",
    ):
        assert key in m, key
    assert m["inputs"][0]["name"] == "image" and m["outputs"][0]["name"] == "logits"
    assert m["preprocessing"]["size"] == [64, 64] and m["preprocessing"]["channel_order"] == "RGB"
    assert set(m["files"]) == {"model.onnx"} and m["parity"]["passed"]
    assert {"torch", "onnx", "onnxruntime"} <= set(m["versions"])
