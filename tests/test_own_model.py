"""Your own model through the gate (issue 15): ``export_module`` and ``lightdeploy export file.py:factory``.

The models are defined here in tests/ only (``user_models.py``: a small classifier, and a small
two-stage detector built from ``lightdeploy.ops``), never registered.  Each goes to ONNX, OpenVINO,
TFLite and a TensorRT plan (gated on its CPU estimate here), passes the gate, and is re-checked from
the factory its manifest records.  At 64x64 the detector's TFLite conversion takes about a minute.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from user_models import TinyClassifier, tiny_classifier, tiny_detector

from lightdeploy import export_module, references
from lightdeploy.errors import UsageError
from lightdeploy.pipeline import parity
from lightdeploy.usermodel import from_factory

TARGETS = ("onnx", "openvino", "tflite", "trt")
SIZE = (64, 64)
DETECTOR_CLASSES = ("cat", "rocket", "coffee")


def _state(module: torch.nn.Module) -> tuple:
    """What export must leave alone: the state dict's bytes, every training flag, BN momenta."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    flags = tuple((name, m.training) for name, m in module.named_modules())
    momenta = tuple(m.momentum for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return digest.hexdigest(), flags, momenta


def _global_rng() -> tuple:
    numpy_state = np.random.get_state()
    return (
        hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
        (numpy_state[0], numpy_state[1].tobytes(), *numpy_state[2:]),
        random.getstate(),
    )


def test_export_module_leaves_the_module_and_the_global_rngs_untouched(tmp_path):
    torch.manual_seed(11)
    model = TinyClassifier()  # training mode, as a model is after training ...
    model.features[0].eval()  # ... with one block frozen: the mix must survive
    np.random.seed(3)
    random.seed(4)
    before, rng_before = _state(model), _global_rng()
    outcomes = export_module(
        model, task="classify", input_size=SIZE, name="tiny_cls", targets=("onnx", "tflite"), out=tmp_path
    )
    assert [o.report.passed for o in outcomes] == [True, True]
    assert _state(model) == before
    assert _global_rng() == rng_before
    assert model.training and not model.features[0].training
    source = outcomes[0].manifest["source"]
    assert source["kind"] == "module" and source["factory"] is None
    assert source["class"] == "user_models:TinyClassifier" and len(source["state_dict_sha256"]) == 64
    with pytest.raises(UsageError, match="module object.*assert_parity"):
        parity(outcomes[0].folder)  # nothing to rebuild the module from


@pytest.mark.parametrize(
    "factory,task,describe",
    [
        pytest.param(tiny_classifier, "classify", {}, id="classifier"),
        pytest.param(tiny_detector, "detect", {"class_names": DETECTOR_CLASSES}, id="detector"),
    ],
)
def test_api_exports_to_every_backend_and_parity_rebuilds_from_the_factory(factory, task, describe, tmp_path):
    outcomes = export_module(factory, task=task, input_size=SIZE, targets=TARGETS, out=tmp_path, **describe)
    assert [o.folder.name for o in outcomes] == [f"{factory.__name__}-{t}-fp32" for t in TARGETS]
    for outcome in outcomes:
        report, manifest = outcome.report, outcome.manifest
        assert report.passed, report.summary()
        assert report.estimated == (manifest["target"] == "trt")  # no GPU here: the plan's CPU estimate
        source = manifest["source"]
        assert source["kind"] == "factory" and source["factory"] == f"user_models:{factory.__name__}"
        assert manifest["task"] == task and manifest["family"] == "user"
        if task == "detect":
            assert manifest["class_names"] == list(DETECTOR_CLASSES) and source["returns"] == "dict"
            assert [o["name"] for o in manifest["outputs"]] == ["boxes", "scores", "labels", "num_detections"]
            assert report.task_info["detections_eager"] > 0 and report.task_info["pairs"] > 0
            # lightdeploy.ops lowered as for the zoo's detectors: ONNX RoiAlign and NonMaxSuppression
            # (every ONNX-based target), the plain-tensor decompositions for TFLite
            ops = manifest["backend_info"]["onnx"]["op_types"]
            assert {"RoiAlign", "NonMaxSuppression", "Gather"} <= set(ops)
            if manifest["target"] == "tflite":
                decomposed = manifest["backend_info"]["converter"]["decompositions"]
                assert {"lightdeploy.nms_fixed.default", "lightdeploy.ps_roi_align.default"} <= set(decomposed)
        again = parity(outcome.folder)  # eager built again from the recorded factory
        assert again.passed, again.summary()
    # `lightdeploy parity DIR` in a fresh process: the recorded "user_models:..." imports from tests/
    result = run_cli("parity", *(str(o.folder) for o in outcomes), "--quiet", cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PASSED") == len(TARGETS)


def _cli_export(factory: str, task: str, out, *extra: str):
    to = [arg for t in TARGETS for arg in ("--to", t)]
    args = ("export", f"tests/user_models.py:{factory}", "--task", task, "--input-size", "64", "64", *to)
    return run_cli(*args, "--out", str(out), "--quiet", *extra, cwd=ROOT)


@pytest.mark.parametrize(
    "factory,task,extra",
    [
        pytest.param("tiny_classifier", "classify", ("--num-classes", "7"), id="classifier"),
        # the same exports as the API test above, through the CLI; a minute of TFLite conversion
        pytest.param("tiny_detector", "detect", ("--num-classes", "3"), id="detector", marks=pytest.mark.slow),
    ],
)
def test_cli_exports_a_factory_file_to_every_backend_and_parity_rebuilds_it(factory, task, extra, tmp_path):
    result = _cli_export(factory, task, tmp_path, *extra)
    assert result.returncode == 0, result.stderr
    folders = [tmp_path / f"{factory}-{t}-fp32" for t in TARGETS]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in folders)  # nothing else left
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["parity"]["passed"], manifest["parity"]["checks"]
        source = manifest["source"]
        # the reference as given, relative to the folder the export ran in: no absolute path
        assert source["factory"] == f"tests/user_models.py:{factory}"
        assert source["factory_kwargs"]["num_classes"] == int(extra[1])
        assert manifest["num_classes"] == int(extra[1])
    result = run_cli("parity", *map(str, folders), "--quiet", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    result = run_cli("bench", str(folders[0]), "--runs", "2", "--warmup", "0", cwd=ROOT)
    assert result.returncode == 0 and "eager" in result.stdout, result.stderr
    # run from elsewhere, the recorded file is not there: parity says which import failed
    result = run_cli("parity", str(folders[0]), cwd=tmp_path)
    assert result.returncode == 2 and "tests/user_models.py" in result.stderr and "does not exist" in result.stderr


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "factory,message",
    [
        ("bad_factories:returns_a_state_dict", r"returned a collections\.OrderedDict, not a torch\.nn\.Module"),
        ("bad_factories:needs_arguments", r"needs argument\(s\) depth"),
        ("bad_factories:raises", "raised RuntimeError: checkpoint server unreachable"),
        ("bad_factories:no_such_factory", "has no attribute 'no_such_factory'.*needs_arguments"),
        ("no_such_package.models:build", "could not import no_such_package.models: ModuleNotFoundError"),
        ("tests/no_such_file.py:build", "does not exist"),
        (
            "bad_factories:float_labels_detector",
            "labels is torch.float32 .*torch.int64 of rank 2; num_detections is missing",
        ),
        ("bad_factories:torchvision_style_detector", "returns a list.*boxes \\[B, K, 4\\] float32"),
        ("bad_factories:unnamed_extra_output", "returns 2 outputs for 1 names.*outputs=\\(...\\)"),
    ],
)
def test_bad_factories_are_refused_with_the_reason(factory, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    task = "detect" if "detector" in factory else "classify"
    with pytest.raises(UsageError, match=message):
        from_factory(factory, task=task, input_size=SIZE)


def test_a_file_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken.py").write_text("import torch\ndef build(:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"could not load broken\.py: SyntaxError"):
        from_factory("broken.py:build", task="classify", input_size=SIZE)


def test_cli_bad_factory_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    result = run_cli(
        "export", "tests/bad_factories.py:float_labels_detector", "--task", "detect", "--input-size", "64", "64",
        "--to", "onnx", "--to", "tflite", "--out", str(out), cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "do not meet the detect contract" in result.stderr
    assert not out.exists()
    result = run_cli("export", "tests/user_models.py:tiny_classifier", "--to", "onnx", "--out", str(out), cwd=ROOT)
    assert result.returncode == 2 and "--task classify --input-size" in result.stderr and not out.exists()


def test_parity_refuses_when_the_factory_builds_other_weights(tmp_path, monkeypatch):
    """The recorded state-dict hash tells "your model changed" apart from "the artifact is wrong"."""
    (tmp_path / "net.py").write_text(
        "from user_models import TinyClassifier\n\ndef build():\n    return TinyClassifier(3)\n"
    )
    monkeypatch.chdir(tmp_path)
    (outcome,) = export_module("net.py:build", task="classify", input_size=SIZE, targets="onnx", out="art")
    assert outcome.manifest["source"]["factory"] == "net.py:build"
    assert parity(outcome.folder).passed
    # the model changes (retrained, say) while the artifact stays
    loaded = sys.modules[references.resolve("net.py:build").__module__]
    monkeypatch.setattr(loaded, "build", lambda: TinyClassifier(3).apply(_shift_weights))
    with pytest.raises(UsageError, match="now builds a model with other weights.*re-export"):
        parity(outcome.folder)


def _shift_weights(module):
    if isinstance(module, torch.nn.Linear):
        with torch.no_grad():
            module.weight.add_(1.0)
