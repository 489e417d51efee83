"""``lightdeploy check --to trt|openvino|tflite``: what a backend cannot take, named with the module
that produced it, before any export (exit 2 when unsupported)."""

from __future__ import annotations

import onnx
import pytest
from conftest import ROOT, run_cli
from onnx import TensorProto, helper
from user_models import tiny_detector

from lightdeploy.checks import check, check_model
from lightdeploy.errors import UsageError
from lightdeploy.exporters.openvino.check import check_onnx as check_openvino
from lightdeploy.usermodel import from_factory

UNSUPPORTED = "tests/unsupported_op_model.py:build"


@pytest.mark.parametrize("target", ["openvino", "tflite", "trt"])
def test_an_op_no_backend_has_is_named_with_its_module(target):
    """A custom op with no ONNX translation, no decomposition and no TFLite lowering."""
    result = run_cli(
        "check", UNSUPPORTED, "--task", "classify", "--input-size", "32", "32", "--to", target, "--json", cwd=ROOT
    )
    assert result.returncode == 2, result.stdout + result.stderr
    named = result.stdout + result.stderr
    assert "lightdeploy_tests::double" in named and "head.1 (Doubler)" in named


def _unconvertible_graph():
    """Relu -> an op from a custom domain (no OpenVINO conversion rule) -> Sigmoid, with the module
    path metadata torch.onnx writes."""
    weird = helper.make_node("Frobnicate", ["a"], ["b"], name="frob", domain="com.example")
    for key, value in (
        ("pkg.torch.onnx.name_scopes", repr(["", "head", "head.post", "frobnicate"])),
        ("pkg.torch.onnx.class_hierarchy", repr(["Net", "Head", "Post", "com.example.Frobnicate"])),
    ):
        entry = weird.metadata_props.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), weird, helper.make_node("Sigmoid", ["b"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "unconvertible",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])


def test_openvino_check_names_what_its_onnx_frontend_cannot_convert(tmp_path):
    report = check_openvino(_unconvertible_graph(), subject="crafted")
    assert not report.supported
    (error,) = report.errors()
    assert error.node == "frob" and error.op_type == "com.example.Frobnicate" and error.module == "head.post (Post)"
    assert "no conversion rule" in error.message and "OpenVINO" in report.summary()
    path = tmp_path / "crafted.onnx"
    onnx.save(_unconvertible_graph(), str(path))
    result = run_cli("check", str(path), "--to", "openvino", "--json")
    assert result.returncode == 2 and '"module": "head.post (Post)"' in result.stdout


def test_tflite_is_checked_from_the_model_not_from_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_unconvertible_graph(), str(path))
    with pytest.raises(UsageError, match="converted from the PyTorch model"):
        check(str(path), "tflite")


@pytest.mark.parametrize("target", ["openvino", "tflite", "trt"])
def test_the_test_detector_built_from_lightdeploy_ops_passes_every_check(target):
    model = from_factory(tiny_detector, task="detect", input_size=(64, 64))
    report = check_model(model, target=target)
    assert report.supported, report.text()
    assert report.op_counts and not report.errors()
