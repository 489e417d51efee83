"""Detectors (ThunderNet, Light-Head R-CNN): output contract, SAM in ONNX, raw heads, parity metric,
predict through the CLI, per-part MACs.

Small inputs keep the file quick: forward checks at 64-320 px without BN re-estimation; one
thundernet_snet49 ONNX artifact at 64x64 (with raw heads) is exported once and shared.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from lightdeploy.models import _detection as det
from lightdeploy.models import get_spec, list_models
from lightdeploy.parity.detection import detect_checks, iou_matrix
from lightdeploy.parity.tolerances import tolerance_for

DETECTORS = ("thundernet_snet49", "thundernet_snet146", "thundernet_snet535", "lighthead_rcnn")
K = det.MAX_DETECTIONS


def build(name: str, size=None, **kwargs) -> torch.nn.Module:
    spec = get_spec(name)
    torch.manual_seed(0)
    return spec.builder(
        num_classes=kwargs.pop("num_classes", spec.num_classes),
        input_size=size or spec.input_size,
        **{**spec.builder_kwargs, **kwargs},
    ).eval()


# ------------------------------------------------------------------------------------ registration
def test_registered():
    names = list_models("detect")
    for name in DETECTORS:
        assert name in names
    assert get_spec("thundernet").alias_of == "thundernet_snet146"
    for name in DETECTORS:
        spec = get_spec(name)
        assert spec.outputs == det.STANDARD_OUTPUTS and spec.num_classes == 80 and len(spec.class_names) == 80
        assert spec.export_wrapper is det.export_wrapper
        spec.check_input_size(spec.input_size)
    assert get_spec("thundernet").input_size == (320, 320) and get_spec("lighthead_rcnn").input_size == (512, 512)


# ------------------------------------------------------------------------------------- forward
def check_contract(outputs, batch: int, size, num_classes: int = 80):
    boxes, scores, labels, num = outputs
    assert boxes.shape == (batch, K, 4) and boxes.dtype == torch.float32
    assert scores.shape == (batch, K) and scores.dtype == torch.float32
    assert labels.shape == (batch, K) and labels.dtype == torch.int64
    assert num.shape == (batch,) and num.dtype == torch.int64
    for b in range(batch):
        n = int(num[b])
        assert 0 <= n <= K
        valid = scores[b, :n]
        assert (valid >= 0.05).all() and (valid <= 1).all()
        assert (valid[:-1] >= valid[1:]).all()  # decreasing score
        assert ((labels[b, :n] >= 0) & (labels[b, :n] < num_classes)).all()
        bx = boxes[b, :n]
        assert (bx[:, 0] <= bx[:, 2]).all() and (bx[:, 1] <= bx[:, 3]).all()
        assert (bx >= 0).all() and (bx[:, 0::2] <= size[1]).all() and (bx[:, 1::2] <= size[0]).all()
        # padding: box 0, score 0, label -1
        assert (scores[b, n:] == 0).all() and (labels[b, n:] == -1).all() and (boxes[b, n:] == 0).all()


@pytest.mark.parametrize(
    "name,size", [("thundernet_snet49", (320, 320)), ("thundernet_snet146", (128, 192)), ("lighthead_rcnn", (128, 128))]
)
def test_forward_contract(name, size):
    model = build(name, size)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    check_contract(out, 1, size)


def test_forward_batch_and_num_classes():
    model = build("thundernet_snet49", (64, 64), num_classes=3)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    check_contract(out, 2, (64, 64), num_classes=3)


def test_raw_heads_shapes():
    model = build("thundernet_snet49", (64, 64))
    with torch.no_grad():
        out = det.RawHeads(model)(torch.randn(1, 3, 64, 64))
    assert len(out) == len(det.STANDARD_OUTPUTS) + len(det.RAW_OUTPUTS)
    rpn_logits, rpn_deltas, proposals, logits, deltas = out[4:]
    n = 4 * 4 * 25  # C4 is 4x4 at 64 px, 25 anchors per cell
    assert rpn_logits.shape == (1, n) and rpn_deltas.shape == (1, n, 4)
    assert proposals.shape == (1, 200, 4) and logits.shape == (1, 200, 81) and deltas.shape == (1, 200, 320)


def test_dynamic_batch_is_refused_with_the_reason(tmp_path):
    """Before any tracing: the per-image NMS loop fixes the batch, and the error says what to use."""
    from lightdeploy.errors import UsageError
    from lightdeploy.pipeline import export

    with pytest.raises(UsageError, match=r"static batch .*--batch N"):
        export("thundernet_snet49", "onnx", input_size=(64, 64), dynamic_batch=True, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_wrapper_and_raw_output_names():
    from lightdeploy.exporters.base import ExportOptions
    from lightdeploy.jobs import output_names
    from lightdeploy.models.registry import get_spec

    model = build("thundernet_snet49", (64, 64))
    assert det.export_wrapper(model, {}) is model
    assert isinstance(det.export_wrapper(model, {"raw_heads": True}), det.RawHeads)
    spec = get_spec("thundernet_snet49")
    names = output_names(spec, ExportOptions(target="onnx", extra={"raw_heads": True}))
    assert names == det.STANDARD_OUTPUTS + det.RAW_OUTPUTS


def test_anchor_grid_order():
    anchors = det.grid_anchors(2, 3, 16, (32,), (0.5, 1.0, 2.0))
    assert anchors.shape == (2 * 3 * 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centres[:3], [[8, 8]] * 3)  # location-major, anchor-minor
    np.testing.assert_allclose(centres[3], [24, 8])
    wh = anchors[:3, 2:] - anchors[:3, :2]
    np.testing.assert_allclose(wh[:, 1] / wh[:, 0], [0.5, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(wh.prod(1), [32 * 32] * 3, rtol=1e-5)


def test_decode_inverts_identity():
    ref = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    np.testing.assert_allclose(det.decode(torch.zeros(1, 4), ref, (0.1, 0.1, 0.2, 0.2)), ref)


# ------------------------------------------------------------------------------------ complexity
def test_macs_by_part_thundernet():
    model = build("thundernet_snet146")
    parts = model.macs_by_part()
    total = parts.pop("total")
    assert set(parts) == {"backbone", "cem", "rpn", "sam", "head"}
    assert sum(parts.values()) == total  # every counted MAC belongs to one part
    # docs/models.md §4 "Head cost at 320x320, SNet146 [C] by hand"
    assert abs(parts["cem"] - 38.8e6) / 38.8e6 < 0.03
    assert abs(parts["sam"] - 25.1e6) / 25.1e6 < 0.03
    assert abs(parts["backbone"] - 328e6) / 328e6 < 0.03
    # RPN: dw5x5 2.45M + 1x1 25.1M + cls/reg 1x1 (256 -> 25 + 100 at 20x20)
    assert abs(parts["rpn"] - (2.45e6 + 25.1e6 + 256 * 125 * 400)) / 40e6 < 0.03
    assert parts["head"] == 200 * (245 * 1024 + 1024 * 81 + 1024 * 320)  # at 200 RoIs


def test_macs_by_part_lighthead():
    model = build("lighthead_rcnn", (128, 128))
    parts = model.macs_by_part()
    total = parts.pop("total")
    assert set(parts) == {"backbone", "rpn", "thin_map", "head"} and sum(parts.values()) == total
    # large separable conv at 4x4 (C5 of 128 px): 2 branches x (576*64*15 + 64*490*15) per cell
    assert parts["thin_map"] == 16 * 2 * (576 * 64 * 15 + 64 * 490 * 15)
    assert parts["head"] == 1000 * (490 * 2048 + 2048 * 81 + 2048 * 320)


# ------------------------------------------------------------------------ detection parity metric
def dets(boxes, scores, labels, k=8):
    """One image's outputs in the gate's format (lists of [1, K, ...] arrays)."""
    n = len(scores)
    b = np.zeros((1, k, 4), np.float32)
    s = np.zeros((1, k), np.float32)
    lab = np.full((1, k), -1, np.int64)
    b[0, :n], s[0, :n], lab[0, :n] = boxes, scores, labels
    return {"boxes": [b], "scores": [s], "labels": [lab], "num_detections": [np.array([n], np.int64)]}


FP32 = tolerance_for("onnxruntime", "fp32")
FP16 = tolerance_for("openvino", "fp16")
BOXES = [[10, 10, 60, 60], [100, 100, 180, 150], [5, 200, 90, 260]]


def test_identical_detections_pass():
    ref = dets(BOXES, [0.9, 0.7, 0.5], [1, 2, 3])
    checks, info = detect_checks(ref, ref, FP32, list(ref))
    assert all(c.passed for c in checks) and checks[0].value == 1.0 and info["pairs"] == 3 and info["near_ties"] == 0


def test_shifted_box_fails():
    ref = dets(BOXES, [0.9, 0.7, 0.5], [1, 2, 3])
    moved = [BOXES[0], [103, 100, 183, 150], BOXES[2]]  # 3 px shift of an 80 px box: IoU ~0.93
    out = dets(moved, [0.9, 0.69, 0.5], [1, 2, 3])
    checks, info = detect_checks(ref, out, FP32, list(ref))
    assert not checks[0].passed and 0.9 < checks[0].value < 0.99 and info["near_ties"] == 0
    checks, _ = detect_checks(ref, out, FP16, list(ref))
    assert all(c.passed for c in checks)  # F1 at fp16 pairs it (IoU >= 0.5)


def test_every_box_shifted_is_not_excused_as_ties():
    # scores kept exactly: each moved box "ties" with its partner, but so many ties are no noise
    ref = dets(BOXES, [0.9, 0.7, 0.5], [1, 2, 3])
    out = dets([[b[0] + 3, b[1], b[2] + 3, b[3]] for b in BOXES], [0.9, 0.7, 0.5], [1, 2, 3])
    checks, info = detect_checks(ref, out, FP32, list(ref))
    assert checks[1].metric == "near_ties" and not checks[1].passed and info["near_ties"] == 6


def test_missing_or_relabelled_detection_fails():
    ref = dets(BOXES, [0.9, 0.7, 0.5], [1, 2, 3])
    checks, info = detect_checks(ref, dets(BOXES[:2], [0.9, 0.7], [1, 2]), FP32, list(ref))
    assert not checks[0].passed and info["unmatched"][0]["eager_unmatched"] == [2]
    checks, info = detect_checks(ref, dets(BOXES, [0.9, 0.7, 0.5], [1, 2, 4]), FP16, list(ref))
    assert not checks[0].passed and info["box_match_f1"] == pytest.approx(2 * 2 / 6)


def test_near_tie_in_score_is_reported_not_failed():
    # Two overlapping same-class boxes (IoU 0.6 > the NMS threshold) score within 1e-6: eager keeps
    # one, the artifact the other (NMS visited them in the other order on float noise).
    a, b = [10, 10, 60, 60], [20, 10, 70, 60]
    ref = dets([a, BOXES[1]], [0.8000001, 0.7], [1, 2])
    out = dets([b, BOXES[1]], [0.8000004, 0.7], [1, 2])
    checks, info = detect_checks(ref, out, FP32, list(ref))
    assert all(c.passed for c in checks), info
    assert info["near_ties"] == 2 and info["pairs"] == 1


def test_near_ties_are_not_excused_at_reduced_precision():
    # Eager keeps a, the artifact b (IoU 0.25: no pair), with scores within 1e-6: a near-tie,
    # excused at fp32 (counted), but the fp16 / int8 F1 counts every detection: 2 of 4 unpaired.
    a, b = [10, 10, 60, 60], [40, 10, 90, 60]
    ref = dets([a, BOXES[1]], [0.8000001, 0.7], [1, 2])
    out = dets([b, BOXES[1]], [0.8000004, 0.7], [1, 2])
    checks, info = detect_checks(ref, out, FP16, list(ref))
    assert [c.metric for c in checks] == ["box_match_f1"] and not checks[0].passed
    assert info["box_match_f1"] == pytest.approx(0.5) and info["box_match_f1_untied"] == 1.0
    assert all(c.passed for c in detect_checks(ref, out, FP32, list(ref))[0])


def test_near_tie_at_nms_threshold_is_reported():
    # IoU(a, c) = 0.5 exactly (within 1e-4): whether c survives NMS 0.5 is float noise.
    a, c = [0, 0, 30, 10], [10, 0, 40, 10]
    assert iou_matrix(np.array([a], float), np.array([c], float), pad=0.0)[0, 0] == pytest.approx(0.5)
    ref = dets([a, c], [0.9, 0.6], [5, 5])
    out = dets([a], [0.9], [5])
    checks, info = detect_checks(ref, out, FP32, list(ref))
    assert all(c.passed for c in checks) and info["near_ties"] == 1


def test_no_tie_means_failure():
    # the same disagreement as above, but the competing scores are far apart and IoU far from 0.5
    ref = dets([[10, 10, 60, 60], BOXES[1]], [0.9, 0.7], [1, 2])
    out = dets([[40, 40, 90, 90], BOXES[1]], [0.5, 0.7], [1, 2])
    checks, info = detect_checks(ref, out, FP32, list(ref))
    assert not checks[0].passed and info["near_ties"] == 0


# ------------------------------------------------------------------------- export, ONNX, predict
@pytest.fixture(scope="module")
def raw_artifact(tmp_path_factory):
    """thundernet_snet49 at 64x64 with raw heads, exported once (gate run below, by hand; so the
    runtime tests load it with allow_unverified)."""
    from lightdeploy.pipeline import export

    out = tmp_path_factory.mktemp("detectors")
    return export(
        "thundernet_snet49", "onnx", input_size=(64, 64), out=out, parity=False, extra={"raw_heads": True}
    ).folder


def test_sam_is_conv_sigmoid_mul(raw_artifact):
    graph = onnx.load(str(raw_artifact / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops  # every BN folded, SAM's included
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    sigmoids = [n for n in graph.node if n.op_type == "Sigmoid"]
    assert len(sigmoids) == 1  # SAM's (the RPN ranks logits; scores come from LogSoftmax)
    sig = sigmoids[0]
    conv = producers[sig.input[0]]
    assert conv.op_type == "Conv"
    weight = next(i for i in graph.initializer if i.name == conv.input[1])
    assert list(weight.dims) == [245, 256, 1, 1]  # conv1x1 256 -> 245
    assert len(conv.input) == 3  # the folded BN's bias
    (mul,) = consumers[sig.output[0]]
    assert mul.op_type == "Mul"
    # the Mul's other operand is the CEM sum, and its product feeds PSRoIAlign's lowering
    other = producers[next(i for i in mul.input if i != sig.output[0])]
    assert other.op_type == "Add"


def test_raw_heads_artifact_and_parity(raw_artifact):
    manifest = json.loads((raw_artifact / "manifest.json").read_text())
    names = [o["name"] for o in manifest["outputs"]]
    assert names == list(det.STANDARD_OUTPUTS + det.RAW_OUTPUTS)
    assert manifest["export_options"]["extra"]["raw_heads"] is True
    shapes = {o["name"]: o["shape"] for o in manifest["outputs"]}
    assert shapes["boxes"] == [1, K, 4] and shapes["num_detections"] == [1] and shapes["rcnn_logits"] == [1, 200, 81]
    from lightdeploy.factory import eager_from_manifest
    from lightdeploy.parity import gate
    from lightdeploy.parity.inputs import parity_inputs, to_batches
    from lightdeploy.runtimes import open_runtime

    model = eager_from_manifest(manifest)
    batches = to_batches(parity_inputs(manifest), 1)
    eager = gate.run_eager(model, batches, names)
    art = gate.run_artifact(open_runtime(raw_artifact, manifest, allow_unverified=True), batches, manifest)
    checks, info = detect_checks(eager, art, FP32, names)
    assert all(c.passed for c in checks), info
    assert info["detections_eager"] > 0
    for name in ("rpn_logits", "rpn_deltas"):  # before any NMS: the fp32 table row holds
        from lightdeploy.parity.metrics import tensor_stats

        stats = tensor_stats(eager[name], art[name])
        assert stats["cosine"] >= 0.99999 and stats["max_abs"] <= 1e-4 * stats["ref_max_abs"] + 1e-5, stats


def test_predict_cli_draws_png(raw_artifact, tmp_path, cat_image):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(cat_image).save(image)
    result = run_cli("predict", str(raw_artifact), str(image), "--out", str(tmp_path / "pred"), "--allow-unverified")
    assert result.returncode == 0, result.stderr
    (png,) = (tmp_path / "pred").glob("*.png")
    with Image.open(png) as im:
        assert im.width == cat_image.shape[1] and im.height > cat_image.shape[0]


def test_detector_runtime_scales_boxes(raw_artifact, cat_image):
    from lightdeploy import runtimes

    model = runtimes.load(raw_artifact, allow_unverified=True)
    result = model.predict(cat_image)
    h, w = cat_image.shape[:2]
    assert result.boxes.shape == (len(result), 4) and len(result.names) == len(result)
    assert (result.boxes[:, 0::2] <= w).all() and (result.boxes[:, 1::2] <= h).all()
    raw = model.infer(model.prepare(cat_image)[1])
    n = int(raw["num_detections"][0])
    assert n == len(result)
    np.testing.assert_allclose(result.boxes, raw["boxes"][0, :n] * [w / 64, h / 64, w / 64, h / 64], rtol=1e-5)
