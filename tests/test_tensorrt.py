"""TensorRT: the operator check, FP16 pinning, the INT8 QDQ model, the build plan and its estimates,
and the missing-TensorRT errors.  The builder and runtime code, run against a simulated TensorRT, and the
GPU tests are in test_tensorrt_engine.py.

Everything here runs without a GPU.  The operator check exports every registered model; the dynamo
exports of the segmenters take tens of seconds each on 2 cores, so those are marked ``slow``
(``-m "not slow"`` keeps this file near 3 min).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from tensorrt_plans import GPU_OK, SMALL, export_plan, fp16_dynamic_plan
from torch import nn

from lightdeploy.checks import check_model
from lightdeploy.errors import MissingDependencyError, ParityError, UsageError
from lightdeploy.exporters.tensorrt import EXPORTER
from lightdeploy.exporters.tensorrt import support as trt_support
from lightdeploy.exporters.tensorrt.check import check_onnx
from lightdeploy.exporters.tensorrt.fp16 import FP16_LIMIT, activation_ranges, fp16_onnx, fp16_pins
from lightdeploy.exporters.tensorrt.plan import BUILD_SCRIPT, read_plan
from lightdeploy.exporters.tensorrt.qdq import QDQ_FILE
from lightdeploy.models.registry import get_spec, list_models
from lightdeploy.runtimes._tensorrt_env import PLAN_FILE
from lightdeploy.runtimes.onnxruntime import OnnxRuntimeBackend

# The estimates in every run: both precisions once and the shuffle family's fp16 (an int8 estimate
# calibrates 198 crops at 224x224, about a minute beside the other worker).
FAST_ESTIMATES = {("mobilenetv2", "fp16"), ("mobilenetv2", "int8"), ("shufflenetv2", "fp16")}


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory):
    return fp16_dynamic_plan(tmp_path_factory)


# ------------------------------------------------------------------------------ operator check
def test_operator_table_is_data_with_its_source():
    assert trt_support.SOURCE["tensorrt_version"].startswith("10.")
    assert trt_support.SOURCE["opset_range"] == [9, 24]
    assert not set(trt_support.SUPPORTED) & trt_support.UNSUPPORTED
    for op in ("Conv", "Resize", "RoiAlign", "NonMaxSuppression", "Gather", "Loop", "If", "TopK"):
        assert op in trt_support.SUPPORTED
    assert "Unique" in trt_support.UNSUPPORTED and "Unique" in trt_support.REWRITES


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if get_spec(n).task == "classify" else pytest.mark.slow)
        for n in list_models()
        if not get_spec(n).alias_of
    ],
)
def test_every_registered_model_is_supported(name):
    spec = get_spec(name)
    size = (max(SMALL[0], 2 * spec.stride),) * 2
    report = check_model(name, input_size=size)
    assert report.supported, report.text()
    assert report.op_counts.get("Conv", 0) > 0
    assert report.source["tensorrt_version"] == trt_support.SOURCE["tensorrt_version"]


# ------------------------------------------------------------------------ plan estimates, every model
def _estimate_params():
    """Every model at fp16 and int8 (issue 7: every plan's CPU estimates pass their rows); those in
    FAST_ESTIMATES run every time, the rest in the slow set."""
    params = []
    for n in (n for n in list_models() if not get_spec(n).alias_of):
        for p in ("fp16", "int8"):
            marks = [] if (n, p) in FAST_ESTIMATES else [pytest.mark.slow]
            if p == "int8" and n in INT8_ESTIMATE_FAILURES:
                marks.append(pytest.mark.xfail(raises=ParityError, strict=True, reason=INT8_ESTIMATE_FAILURES[n]))
            params.append(pytest.param(n, p, id=f"{n}-{p}", marks=marks))
    return params


# Measured at quant_size (the model's own input size; row: int8 box match F1 0.85).  The detectors fail
# on int8 rounding alone, in eager PyTorch with no export (test_conditioning:
# test_int8_rounding_alone_fails_a_random_detectors_box_f1): a random RPN ranks 10^4 near-tied anchors.
# The segmenters' QDQ estimates pass (slow set).
INT8_ESTIMATE_FAILURES = {
    "thundernet_snet49": "box match F1 0.653 at 320x320 (0.836 at 64x64)",
    "thundernet_snet146": "box match F1 0.672 at 320x320",
    "thundernet_snet535": "box match F1 0.693 at 320x320 (0.839 at 64x64)",
    # At 512x512 the proposal layer's TopK K=6000 and its NMS over 6000 boxes exceed TensorRT's limits
    # (K < 3840, 5000 boxes); the plan's ONNX has them rewritten exactly (test_tensorrt_prepare).
    "lighthead_rcnn": "box match F1 0.703 at 512x512 (0.667 at 64x64)",
}


@pytest.mark.parametrize("name,precision", _estimate_params())
def test_plan_estimates_pass_their_rows(name, precision, tmp_path):
    from conftest import quant_size, small_size

    spec = get_spec(name)
    size = (quant_size if precision == "int8" else small_size)(spec)
    folder, manifest, report = export_plan(tmp_path, name=name, precision=precision, input_size=size)
    assert report.precision == precision and report.estimated and report.passed
    assert report.task_info["float_graph"]["passed"]  # the plan's ONNX itself, at the fp32 row
    assert read_plan(folder)["check"]["supported"]


def _node(op, inputs, outputs, name, scope=None, domain="", **attrs):
    node = helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs)
    if scope:
        for key, value in (
            ("pkg.torch.onnx.name_scopes", repr(["", *scope.split("/"), op.lower()])),
            ("pkg.torch.onnx.class_hierarchy", repr(["Net", "Head", "Block", f"aten.{op}"])),
        ):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    return node


def crafted_graph():
    f = TensorProto.FLOAT
    nodes = [
        _node("Resize", ["x", "", "scales"], ["r"], "up_cubic", scope="head/head.up", mode="cubic"),
        _node(
            "Resize",
            ["x", "", "scales"],
            ["r2"],
            "up_ok",
            scope="head/head.up2",
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        _node("Flatten", ["r2"], ["flat"], "flat"),
        _node("Unique", ["flat"], ["u"], "uniq", scope="head/head.post"),
        _node(
            "RoiAlign",
            ["x", "rois", "idx"],
            ["pooled"],
            "roi",
            scope="head/head.pool",
            coordinate_transformation_mode="half_pixel",
            mode="avg",
            output_height=2,
            output_width=2,
        ),
        _node("TopK", ["flat", "k"], ["tv", "ti"], "topk_big", scope="head/head.topk"),
        _node("MyPlugin", ["x"], ["custom"], "plugin", scope="head/head.custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "crafted",
        [
            helper.make_tensor_value_info("x", f, [1, 3, 8, 8]),
            helper.make_tensor_value_info("rois", f, [2, 4]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info(n, f, None) for n in ("r", "u", "pooled", "tv", "custom")],
        initializer=[
            helper.make_tensor("scales", f, [4], [1, 1, 2, 2]),
            helper.make_tensor("k", TensorProto.INT64, [1], [5000]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])


def test_unsupported_nodes_report_module_and_rewrite(tmp_path):
    path = tmp_path / "crafted.onnx"
    onnx.save(crafted_graph(), str(path))
    report = check_onnx(path)
    assert not report.supported
    errors = {f.node: f for f in report.errors()}
    assert set(errors) == {"up_cubic", "uniq", "topk_big", "plugin"}
    assert errors["up_cubic"].module == "head.up (Block)" and "cubic" in errors["up_cubic"].message
    assert errors["uniq"].module == "head.post (Block)" and "top-k" in errors["uniq"].rewrite
    assert "3840" in errors["topk_big"].message
    assert "plugin" in errors["plugin"].message
    assert {f.node for f in report.warnings()} == {"roi"}  # supported via ROIAlign_TRT, with a note
    text = report.text()
    assert "head.post (Block)" in text and "suggested rewrite" in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    assert "unsupported" in console.export_text()


def test_check_onnx_rejects_a_missing_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        check_onnx(tmp_path / "nope.onnx")


def test_export_fails_with_exit_2_and_the_report_when_unsupported(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_support, "UNSUPPORTED", trt_support.UNSUPPORTED | {"Conv"})
    monkeypatch.setitem(trt_support.REWRITES, "Conv", "a rewrite")
    with pytest.raises(UsageError) as info:
        EXPORTER.export(tiny_job(HugeActivation().eval()), tmp_path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "stem (Conv2d)" in message and "not supported" in message and "a rewrite" in message
    assert "NOT supported" in message


def tiny_job(model, precision="fp32"):
    from lightdeploy.exporters.base import ExportJob, ExportOptions

    spec = SimpleNamespace(name="tiny", task="classify", mean=(0.5,) * 3, std=(0.25,) * 3)
    options = ExportOptions(target="trt", precision=precision, input_size=(16, 16))
    return ExportJob(model=model, spec=spec, options=options, output_names=("out",))


# ------------------------------------------------------------------------------------ FP16 pins
class HugeActivation(nn.Module):
    """conv -> (weights x 1e5: activations above 65504, beyond FP16) -> relu -> conv that scales back down."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blow = nn.Conv2d(8, 8, 1)
        self.act = nn.ReLU()
        self.shrink = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.blow.weight.mul_(1e5)
            self.shrink.weight.mul_(1e-5)

    def forward(self, x):
        return self.shrink(self.act(self.blow(self.stem(x))))


def test_fp16_pins_the_huge_layer_and_its_reader(tmp_path):
    from lightdeploy.exporters.onnx.export import export_onnx

    model = HugeActivation().eval()
    job = tiny_job(model)
    path = tmp_path / "huge.onnx"
    export_onnx(job, path)
    graph = onnx.load(str(path))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    ranges = activation_ranges(model, batches)
    assert ranges["blow"] > 65504 > FP16_LIMIT > ranges["stem"]
    pins = fp16_pins(graph, ranges)
    pinned = {p["module"].split(" ")[0]: p for p in pins["layers"]}
    assert set(pinned) == {"blow", "act", "shrink"}  # blow and act exceed; shrink reads act's output
    assert pinned["shrink"]["why"].startswith("reads")
    assert [m["module"] for m in pins["risky_modules"]] == ["blow", "act"]
    feeds = {"image": batches[0]}
    ref = model(torch.from_numpy(batches[0])).detach().numpy()
    unpinned = OnnxRuntimeBackend(fp16_onnx(graph, []).SerializeToString()).run(feeds)["out"]
    pinned_out = OnnxRuntimeBackend(fp16_onnx(graph, [p["node"] for p in pins["layers"]]).SerializeToString()).run(
        feeds
    )["out"]
    assert not np.isfinite(unpinned).all() or np.abs(unpinned - ref).max() > 0.1 * np.abs(ref).max()
    assert np.abs(pinned_out - ref).max() <= 1e-2 * np.abs(ref).max()


# ------------------------------------------------------------------------- plans and estimates
def test_fp16_plan_artifact_and_manifest(fp16_plan):
    folder, manifest, report = fp16_plan
    assert sorted(p.name for p in folder.iterdir()) == [
        BUILD_SCRIPT,
        "export_log.json",
        "manifest.json",
        "model.onnx",
        PLAN_FILE,
    ]
    assert manifest["backend"] == "tensorrt" and manifest["backend_file"] == PLAN_FILE
    assert manifest["parity"]["estimated"] is True and "ESTIMATED" in report.summary()
    assert manifest["parity"]["tolerance"]["backend"] == "tensorrt"
    assert report.estimated and "float16" in report.method
    checks = {(c.subject, c.metric): c for c in report.checks}
    assert checks[("logits", "cosine")].passed, report.summary()  # FP16 rounding: cosine >= 0.999
    assert ("task", "top1_agreement") in checks  # judged too (random weights: near-tied logits may flip)
    assert report.outputs["logits"]["max_abs"] > 1e-5  # rounding really happened
    plan = read_plan(folder)
    assert plan["onnx"] == "model.onnx" and plan["builder"]["flags"][0] == "FP16"
    assert plan["profiles"] == [{"image": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [8, 3, 64, 64]}}]
    assert plan["commands"] == {"lightdeploy": "lightdeploy build ARTIFACT_DIR", "trtexec": f"sh {BUILD_SCRIPT}"}
    script = (folder / BUILD_SCRIPT).read_text()
    assert "trtexec" in script and "--fp16" in script and "--minShapes=image:1x3x64x64" in script
    assert str(folder) not in script  # the artifact carries no path of the exporting machine
    assert report.task_info["float_graph"]["passed"]
    assert plan["fp16_analysis"]["limit"] == FP16_LIMIT and plan["fp16_analysis"]["largest_activations"]
    # the manifest holds no path: `{artifact}` is filled in where the note is shown (ExportOutcome.notes)
    assert any("lightdeploy build {artifact}" in n for n in manifest["notes"])
    from lightdeploy.runtimes.manifest import read_manifest

    read_manifest(folder, verify=True)  # the plan's estimate section is covered by the hashes


def test_int8_qdq_estimate_on_a_classifier(tmp_path):
    """The QDQ model and its estimate (at 64x64, where a classifier's int8 row may fail: quant_size)."""
    try:
        folder, manifest, _ = export_plan(tmp_path, name="shufflenetv2_x0.5", precision="int8")
    except ParityError as exc:
        folder = exc.folder  # kept beside the name as NAME.failed, for inspection
        manifest = json.loads((folder / "manifest.json").read_text())
    report = manifest["parity"]
    plan = read_plan(folder)
    assert plan["onnx"] == QDQ_FILE and plan["builder"]["flags"] == ["INT8"]
    qdq = onnx.load(str(folder / QDQ_FILE))
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert check_onnx(qdq).supported  # symmetric: every zero point is 0
    zero_points = [i for i in qdq.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    assert report["precision"] == "int8" and report["tolerance"]["cosine_min"] == 0.98
    assert 0.5 < report["outputs"]["logits"]["cosine"] < 0.9999  # a real INT8 estimate, not a copy of fp32
    assert report["outputs"]["logits"]["max_abs"] > 1e-3
    assert report["estimated"] and report["method"].startswith("the QDQ ONNX")


def test_missing_tensorrt_is_exit_3_naming_the_extra_and_the_gpu(fp16_plan):
    if GPU_OK:
        pytest.skip("TensorRT and a GPU are present here")
    folder = fp16_plan[0]
    from lightdeploy import runtimes

    with pytest.raises(MissingDependencyError) as info:
        runtimes.load(folder)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert "lightdeploy[trt]" in message and "NVIDIA GPU" in message and "lightdeploy build" in message
    from lightdeploy.build import build

    with pytest.raises(MissingDependencyError, match="GPU machine"):
        build(folder)


def test_cli_export_trt_writes_a_plan_gated_on_its_estimate(tmp_path):
    from typer.testing import CliRunner

    from lightdeploy.cli import app

    result = CliRunner().invoke(
        app, ["export", "shufflenetv2_x0.5", "--to", "trt", "--input-size", "64", "64", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "shufflenetv2_x0.5-trt-fp32" / "manifest.json").read_text())
    assert manifest["parity"]["estimated"] is True and manifest["parity"]["passed"]
