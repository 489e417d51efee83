"""TensorRT: the operator check, FP16 pinning, the INT8 QDQ model, the build plan and its estimates,
the missing-TensorRT errors, and the builder/runtime code run against a simulated TensorRT.

Everything here runs without a GPU.  ``fake_tensorrt.FakeTensorRT`` stands in for the
``tensorrt`` and cuda-python modules with the same call surface: its "engine" runs the plan's ONNX in
ONNX Runtime on host memory, so the builder settings, layer pinning, profiles, timing cache, manifest
update, name binding and the parity gate through ``runtimes.load`` are all exercised.  Real engine
builds are marked ``gpu`` and run only where ``tensorrt`` imports and a CUDA device exists.

The operator check exports every registered model; the dynamo exports of the segmenters take tens of
seconds each on 2 cores, so those are marked ``slow`` (``-m "not slow"`` keeps this file near 3 min).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import install
from onnx import TensorProto, helper
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
from lightdeploy.runtimes.manifest import sha256
from lightdeploy.runtimes.onnxruntime import OnnxRuntimeBackend

SMALL = (64, 64)
# The estimates in every run: both precisions once and the shuffle family's fp16 (an int8 estimate
# calibrates 198 crops at 224x224, about a minute beside the other worker).
FAST_ESTIMATES = {("mobilenetv2", "fp16"), ("mobilenetv2", "int8"), ("shufflenetv2", "fp16")}


def _trt_gpu() -> tuple[bool, str]:
    from lightdeploy.runtimes._tensorrt_env import trt_environment

    return trt_environment()


GPU_OK, GPU_WHY = _trt_gpu()
gpu = pytest.mark.skipif(not GPU_OK, reason=f"needs TensorRT and a CUDA device: {GPU_WHY[:160]}")


def export_plan(tmp_path, name="shufflenetv2_x0.5", precision="fp32", **kw):
    """Export a plan artifact through the pipeline, whose gate runs the plan's CPU estimate here (no GPU);
    raises ParityError when the estimate fails its row."""
    from lightdeploy.pipeline import export

    out = export(name, "trt", precision=precision, input_size=kw.pop("input_size", SMALL), out=tmp_path, **kw)
    return out.folder, out.manifest, out.report


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory):
    """One FP16, dynamic-batch plan artifact shared by the tests that only read it or copy it."""
    return export_plan(tmp_path_factory.mktemp("plans"), precision="fp16", dynamic_batch=True)


def copy_of(plan, tmp_path) -> Path:
    import shutil

    folder = tmp_path / plan[0].name
    shutil.copytree(plan[0], folder)
    return folder


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


# --------------------------------------------------------------- builder and runtime, simulated
def test_build_and_run_with_simulated_tensorrt(fp16_plan, tmp_path, monkeypatch):
    folder = copy_of(fp16_plan, tmp_path)
    fake = install(monkeypatch)
    from lightdeploy import runtimes
    from lightdeploy.build import build

    report = build(folder)
    assert report.passed and not report.estimated, report.summary()
    manifest = json.loads((folder / "manifest.json").read_text())
    engine = manifest["backend_info"]["engine"]
    assert manifest["backend_file"] == "model.engine" and (folder / "timing.cache").is_file()
    assert engine["tensorrt_version"] == fake.trt.__version__ and engine["gpu"]["name"] == "Simulated GPU"
    assert engine["flags"] == read_plan(folder)["builder"]["flags"]
    assert fake.built[-1]["profiles"] == {"image": [[1, 3, 64, 64], [1, 3, 64, 64], [8, 3, 64, 64]]}
    assert fake.built[-1]["timing_cache_set"]
    model = runtimes.load(folder)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    assert model.infer(x)["logits"].shape == (3, 1000)  # dynamic batch bound by name
    monkeypatch.setattr(fake.trt, "__version__", "10.0.0")
    with pytest.raises(UsageError, match="built with TensorRT"):
        runtimes.load(folder)


def test_loading_a_plan_on_a_gpu_machine_builds_and_caches(fp16_plan, tmp_path, monkeypatch):
    folder = copy_of(fp16_plan, tmp_path)
    fake = install(monkeypatch)
    monkeypatch.setenv("LIGHTDEPLOY_CACHE", str(tmp_path / "cache"))
    from lightdeploy import runtimes

    first = runtimes.load(folder)
    second = runtimes.load(folder)
    assert len(fake.built) == 1  # the second load uses the cached engine
    x = np.zeros((1, 3, 64, 64), np.float32)
    assert np.allclose(first.infer(x)["logits"], second.infer(x)["logits"])
    assert list((tmp_path / "cache" / "tensorrt").glob("*.engine"))


def test_engine_threads_use_a_context_and_stream_each(fp16_plan, tmp_path, monkeypatch):
    """8 threads x 200 calls on one engine: bit-identical to single-threaded calls, each call on an
    execution context (and stream) of its own, at most MAX_CONTEXTS of them."""
    from test_concurrency import feeds_for, hammer

    from lightdeploy import runtimes
    from lightdeploy.build import build
    from lightdeploy.runtimes.tensorrt import MAX_CONTEXTS

    folder = copy_of(fp16_plan, tmp_path)
    install(monkeypatch)
    build(folder)
    with runtimes.open_runtime(folder) as runtime:
        differ, errors = hammer(runtime, feeds_for(runtime))
        assert not errors and differ == 0, (differ, errors[:3])
        assert 1 < runtime._contexts.created <= MAX_CONTEXTS
        assert "execution context + CUDA stream per call" in runtime.info["concurrency"]


def test_an_engine_for_another_gpu_is_a_clear_error(fp16_plan, tmp_path, monkeypatch):
    from lightdeploy import runtimes
    from lightdeploy.build import build

    folder = copy_of(fp16_plan, tmp_path)
    fake = install(monkeypatch)
    build(folder)
    other = SimpleNamespace(name=b"Other GPU", major=7, minor=5, totalGlobalMem=4 << 30)
    monkeypatch.setattr(fake.cudart, "cudaGetDeviceProperties", lambda device: (0, other))
    with pytest.raises(UsageError, match=r"built for Simulated GPU \(compute 8.9\); this GPU is Other GPU") as info:
        runtimes.load(folder)
    assert f"lightdeploy build {folder}" in str(info.value)


def test_a_cached_engine_is_checked_before_reuse(fp16_plan, tmp_path, monkeypatch):
    """A cached engine whose bytes no longer match its record, or that no longer deserialises, is rebuilt."""
    folder = copy_of(fp16_plan, tmp_path)
    fake = install(monkeypatch)
    monkeypatch.setenv("LIGHTDEPLOY_CACHE", str(tmp_path / "cache"))
    from lightdeploy import runtimes

    runtimes.load(folder)
    (engine,) = (tmp_path / "cache" / "tensorrt").glob("*.engine")
    record = json.loads(engine.with_suffix(".json").read_text())
    assert record["gpu"]["name"] == "Simulated GPU" and record["tensorrt_version"] == fake.trt.__version__
    engine.write_bytes(engine.read_bytes() + b" ")  # changed behind the record's back
    model = runtimes.load(folder)
    assert len(fake.built) == 2 and "rebuilt" in model.info["engine"]
    engine.write_bytes(b"garbage")  # and a record that vouches for garbage: deserialising fails, so rebuild
    engine.with_suffix(".json").write_text(json.dumps({**record, "sha256": sha256(engine)}))
    model = runtimes.load(folder)
    assert len(fake.built) == 3
    assert model.infer(np.zeros((1, 3, 64, 64), np.float32))["logits"].shape == (1, 1000)
    assert "reused" in runtimes.load(folder).info["engine"] and len(fake.built) == 3


def test_a_failed_engine_gate_keeps_the_plan(fp16_plan, tmp_path, monkeypatch):
    from dataclasses import replace

    from lightdeploy.build import build
    from lightdeploy.parity import gate

    folder = copy_of(fp16_plan, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    install(monkeypatch)
    impossible = replace(gate.tolerance_for("tensorrt", "fp16"), cosine_min=1.5)
    monkeypatch.setattr(gate, "tolerance_for", lambda backend, precision: impossible)
    with pytest.raises(ParityError, match="the build plan at .* is unchanged") as info:
        build(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    failed = info.value.folder
    assert failed.name == folder.name + ".failed" and (failed / "model.engine").is_file()
    assert json.loads((failed / "manifest.json").read_text())["parity"]["passed"] is False


def test_pinned_layers_reach_the_builder(tmp_path, monkeypatch):
    from lightdeploy.runtimes._tensorrt_build import build_engine

    fake = install(monkeypatch)
    onnx_path = tmp_path / "m.onnx"
    onnx.save(onnx.load_from_string(_tiny_onnx()), str(onnx_path))
    plan = {
        "builder": {
            "flags": ["FP16", "OBEY_PRECISION_CONSTRAINTS"],
            "workspace_bytes": 1 << 20,
            "layer_precisions": {"relu": "fp32", "ghost": "fp32"},
        },
        "profiles": [],
    }
    info = build_engine(onnx_path, plan, tmp_path / "m.engine", tmp_path / "t.cache")
    assert info["fp32_layers_applied"] == 1 and info["fp32_layers_not_found"] == ["ghost"]
    assert fake.built[-1]["flags"] == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert fake.built[-1]["fp32_layers"] == ["relu"]


def test_post_processing_tail_is_pinned_to_fp32():
    from lightdeploy.exporters.tensorrt.fp16 import tail_nodes

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["head"], name="head"),
        helper.make_node("Exp", ["head"], ["e"], name="decode_exp"),
        helper.make_node("Mul", ["e", "scale"], ["boxes"], name="decode_mul"),
        helper.make_node("ArgMax", ["head"], ["label"], name="argmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("x", f, [1, 2, 4, 4])],
        [
            helper.make_tensor_value_info("boxes", f, None),
            helper.make_tensor_value_info("label", TensorProto.INT64, None),
        ],
        initializer=[
            helper.make_tensor("w", f, [2, 2, 1, 1], [1.0] * 4),
            helper.make_tensor("w2", f, [2, 2, 1, 1], [1.0] * 4),
            helper.make_tensor("scale", f, [1], [2.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert [n.name for n in tail_nodes(model)] == ["decode_exp", "decode_mul"]
    pins = fp16_pins(model, {})
    assert [p["node"] for p in pins["layers"]] == ["decode_exp", "decode_mul"] and pins["tail_nodes"] == 2


def test_trtexec_line_carries_pins_and_profiles():
    from lightdeploy.exporters.tensorrt.plan import builder_settings, trtexec_command

    plan = {
        "onnx": "model.onnx",
        "builder": builder_settings("fp16", ["node_a", "node_b"]),
        "profiles": [{"image": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [8, 3, 64, 64]}}],
    }
    assert plan["builder"]["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    line = trtexec_command(plan)
    for part in (
        "--fp16",
        "--precisionConstraints=obey",
        "--layerPrecisions=node_a:fp32,node_b:fp32",
        "--layerOutputTypes=node_a:fp32,node_b:fp32",
        "--optShapes=image:2x3x64x64",
        "--timingCacheFile=timing.cache",
        "--saveEngine=model.engine",
    ):
        assert part in line
    assert builder_settings("int8", [])["flags"] == ["INT8"] and builder_settings("fp32", [])["flags"] == []


def _tiny_onnx() -> bytes:
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", f, [1, 4])],
        [helper.make_tensor_value_info("y", f, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


# ------------------------------------------------------------------------------- on the GPU only
@pytest.mark.gpu
@gpu
def test_engine_build_runtime_and_parity_on_the_gpu(tmp_path):
    from lightdeploy import runtimes
    from lightdeploy.pipeline import export

    for precision in ("fp32", "fp16", "int8"):
        out = export(
            "shufflenetv2_x0.5", "trt", precision=precision, input_size=SMALL, out=tmp_path, dynamic_batch=True
        )
        assert out.manifest["backend_file"] == "model.engine"
        assert out.report is not None and out.report.passed and not out.manifest["parity"].get("estimated")
        model = runtimes.load(out.folder)
        assert model.infer(np.zeros((2, 3, 64, 64), np.float32))["logits"].shape == (2, 1000)
