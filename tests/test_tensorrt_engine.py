"""TensorRT's builder and runtime code run against a simulated TensorRT, and the real engine on a GPU.

``fake_tensorrt.FakeTensorRT`` stands in for the ``tensorrt`` and cuda-python modules with the same
call surface: its "engine" runs the plan's ONNX in ONNX Runtime on host memory, so the builder settings,
layer pinning, profiles, timing cache, manifest update, name binding and the parity gate through
``runtimes.load`` are all exercised.  Real engine builds are marked ``gpu`` and run only where
``tensorrt`` imports and a CUDA device exists.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from fake_tensorrt import install
from onnx import TensorProto, helper
from tensorrt_plans import SMALL, copy_of, fp16_dynamic_plan, gpu

from lightdeploy.errors import ParityError, UsageError
from lightdeploy.exporters.tensorrt.fp16 import fp16_pins
from lightdeploy.exporters.tensorrt.plan import read_plan
from lightdeploy.runtimes.manifest import sha256


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory):
    return fp16_dynamic_plan(tmp_path_factory)


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
