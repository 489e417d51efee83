"""The gate itself: the table, the metrics, and that a wrong artifact really fails."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lightdeploy.artifact import write_manifest
from lightdeploy.errors import UsageError
from lightdeploy.parity import TABLE, compare, run_parity, tolerance_for, write_json, write_junit
from lightdeploy.parity.metrics import cosine, tensor_stats


def test_table_has_a_row_per_backend_and_precision():
    for backend in ("openvino", "tflite", "tensorrt"):
        for precision in ("fp32", "fp16", "int8"):
            assert (backend, precision) in TABLE
    assert TABLE[("onnxruntime", "fp32")].cosine_min == 0.99999  # docs/design.md#tolerance-table
    assert TABLE[("openvino", "fp16")].cosine_min == 0.999
    assert TABLE[("tflite", "int8")].cosine_min == 0.98
    with pytest.raises(UsageError, match="No tolerance row"):
        tolerance_for("onnxruntime", "int8")


def test_overrides_are_recorded():
    row = tolerance_for("onnxruntime", "fp32", overrides={"cosine_min": 0.9})
    assert row.cosine_min == 0.9 and "overridden" in row.reason
    with pytest.raises(UsageError, match="Unknown tolerance field"):
        tolerance_for("onnxruntime", "fp32", overrides={"cos": 0.9})


def test_metrics():
    a = np.array([1.0, 2.0, 3.0])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    s = tensor_stats([a], [a + np.array([0, 0, 0.3])])
    assert s["max_abs"] == pytest.approx(0.3) and s["max_rel"] == pytest.approx(0.1)


def _manifest(task="classify", precision="fp32"):
    return {"task": task, "model": "m", "backend": "onnxruntime", "precision": precision}


def test_compare_fails_on_top1_flip_and_error():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, 10)).astype(np.float32) for _ in range(4)]
    good = compare(
        {"logits": ref},
        {"logits": [r + 1e-7 for r in ref]},
        _manifest(),
        tolerance_for("onnxruntime", "fp32"),
        ["a", "b", "c", "d"],
    )
    assert good.passed
    flipped = [r.copy() for r in ref]
    flipped[0][0, ref[0].argmin()] = 100.0
    bad = compare({"logits": ref}, {"logits": flipped}, _manifest(), tolerance_for("onnxruntime", "fp32"), list("abcd"))
    assert not bad.passed
    failed = {(c.subject, c.metric) for c in bad.failures()}
    assert ("task", "top1_agreement") in failed and ("logits", "max_abs") in failed
    assert "logits max_abs" in bad.summary()


def test_int8_judges_top1_only_where_margin_is_clear():
    ref = [np.array([[5.0, 0.0, 0.0, 0.0]], np.float32), np.array([[1.0, 0.99, 0.0, 0.0]], np.float32)]
    out = [ref[0].copy(), np.array([[0.99, 1.0, 0.0, 0.0]], np.float32)]  # the close call flips
    report = compare(
        {"logits": ref},
        {"logits": out},
        _manifest(precision="int8"),
        tolerance_for("openvino", "int8"),
        ["clear", "close"],
    )
    assert report.passed and report.task_info["judged_inputs"] == 1


@pytest.mark.parametrize("precision,noise_role", [("fp32", "tensor"), ("fp16", "tensor"), ("int8", "reported")])
def test_noise_inputs_are_gated_except_at_int8(precision, noise_role):
    """int8 ranges are calibrated on photographs: N(0, 1) noise is reported there, gated elsewhere."""
    from lightdeploy.parity.inputs import RANDOM_INPUTS, parity_inputs

    pre = {"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "scale": 1 / 255}
    manifest = {"preprocessing": pre, "task": "segment", "precision": precision, "inputs": [{"shape": [1, 3, 32, 32]}]}
    roles = {p.name: p.role for p in parity_inputs(manifest)}
    assert [roles[f"random{i}"] for i in range(RANDOM_INPUTS)] == [noise_role] * RANDOM_INPUTS
    assert {r for n, r in roles.items() if not n.startswith("random")} == {"both"}


def test_reported_inputs_are_shown_but_not_judged():
    """A noise input far off at int8 leaves the verdict to the photographs, and is reported with a note;
    the same outputs with the noise gated fail."""
    rng = np.random.default_rng(1)
    ref = [rng.standard_normal((1, 10)).astype(np.float32) for _ in range(3)]
    out = [ref[0] + 1e-3, ref[1] + 1e-3, -ref[2]]  # the third input (noise) is badly off
    args = ({"logits": ref}, {"logits": out}, _manifest("classify", "int8"), tolerance_for("openvino", "int8"))
    report = compare(*args, ["photo", "photo2", "random0"], roles=["both", "both", "reported"])
    assert report.passed, report.summary()
    assert report.outputs["logits"]["cosine"] > 0.999
    assert report.outputs["logits"]["reported_inputs"]["cosine"] == pytest.approx(-1.0)
    assert report.notes == [
        "the N(0, 1) noise inputs are reported, not gated, at int8 (logits worst cosine -1.0000): "
        "its ranges are calibrated on photographs (docs/design.md#parity)"
    ]
    gated = compare(*args, ["photo", "photo2", "random0"], roles=["both", "both", "tensor"])
    assert not gated.passed and "reported_inputs" not in gated.outputs["logits"]


def test_reports_are_written(tmp_path):
    ref = [np.ones((1, 3), np.float32)]
    report = compare(
        {"logits": ref}, {"logits": [ref[0] * 2]}, _manifest(), tolerance_for("onnxruntime", "fp32"), ["x"]
    )
    write_json([report], tmp_path / "r.json")
    write_junit([report], tmp_path / "r.xml")
    assert json.loads((tmp_path / "r.json").read_text())[0]["passed"] is False
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert root.find("testsuite").get("failures") == "1"  # max_abs fails; cosine of x vs 2x is 1


def test_gate_catches_a_wrong_artifact(classifier_artifact, tmp_path):
    """Scale one conv weight in model.onnx, re-hash: the manifest is valid but parity must fail."""
    copy = tmp_path / "wrong"
    shutil.copytree(classifier_artifact, copy)
    model = onnx.load(str(copy / "model.onnx"))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "files"})
    counts = []
    report = run_parity(copy, count=lambda *c: counts.append(c))
    assert not report.passed
    assert any(c.metric == "max_abs" for c in report.failures())
    # one count per run: eager float64, eager float32 and the artifact on each input batch
    runs = counts[-1][1]
    assert runs % 3 == 0 and runs >= len(report.inputs) and counts == [(i, runs, "runs") for i in range(1, runs + 1)]
