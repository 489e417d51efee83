"""Fault localisation (issue 17): ``lightdeploy parity DIR --localize`` names the module a planted fault
is in.

The faults: a corrupted convolution weight in one block (ONNX Runtime and OpenVINO, fp32), a wrong
lowering of one block (a channel shuffle translated to the inverse permutation; for TFLite its
decomposition), and an int8 OpenVINO IR with one FakeQuantize's range narrowed so that one block's
input clips.  TFLite is localised through a re-conversion, so a fault in its file is reported as an
unreliable localisation, not placed in a module.  Every model is the small
user classifier of ``user_models.py`` at 64x64: three blocks ``features.0`` (conv), ``features.1``
(grouped conv + channel shuffle), ``features.2`` (conv), then ``fc``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, run_cli
from onnx import numpy_helper
from user_models import tiny_classifier

from lightdeploy import export_module
from lightdeploy.artifact import write_manifest
from lightdeploy.errors import ParityError, UsageError
from lightdeploy.localize import localize
from lightdeploy.modulepaths import node_scopes
from lightdeploy.ops import _channel_shuffle
from lightdeploy.pipeline import parity

SIZE = (64, 64)
TARGETS = ("onnx", "openvino")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """{target: artifact folder} of the user classifier, fp32, gated and passed."""
    out = tmp_path_factory.mktemp("localize")
    outcomes = export_module(tiny_classifier, task="classify", input_size=SIZE, targets=TARGETS, out=out)
    return {t: o.folder for t, o in zip(TARGETS, outcomes)}


def reseal(folder) -> None:
    """Record the files' current hashes in the manifest, as a tamperer who knows the format would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})


def corrupt_conv(folder, module: str) -> None:
    """Flip the sign of half the output channels of ``module``'s convolution in model.onnx (an OpenVINO
    IR is converted again from it), then reseal the manifest."""
    graph = onnx.load(str(folder / "model.onnx"))
    conv = next(n for n in graph.graph.node if n.op_type == "Conv" and module in node_scopes(n))
    weight = next(t for t in graph.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(weight).copy()
    w[: len(w) // 2] *= -1
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    onnx.save(graph, str(folder / "model.onnx"))
    if (folder / "model.xml").exists():
        import openvino as ov

        ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(folder / "model.xml"), compress_to_fp16=False)
    reseal(folder)


@pytest.mark.parametrize("target", TARGETS)
def test_a_clean_artifact_has_no_divergent_module(tiny, target):
    report = localize(tiny[target], threads=1)
    assert report.first is None, report.summary()
    assert report.reliable and len(report.modules) >= 6
    paths = [m.path for m in report.modules]
    assert {"features.0", "features.1", "features.2", "fc"} <= set(paths)
    # in the order eager finished them: inner modules before the block that holds them
    assert paths.index("features.1.conv") < paths.index("features.1") < paths.index("features.2")
    assert "no module's output leaves the tolerance row" in report.summary()


def test_an_fp16_openvino_ir_is_read_through_its_tensor_names(tmp_path):
    """FP16 weights sit behind Convert ops; the module outputs keep their ONNX tensor names."""
    (outcome,) = export_module(
        tiny_classifier, task="classify", input_size=SIZE, targets=("openvino",), precision="fp16", out=tmp_path
    )
    report = localize(outcome.folder, threads=1)
    assert report.precision == "fp16" and report.reliable and report.first is None, report.summary()
    assert "tensor not found in the openvino graph" not in report.skipped and len(report.modules) >= 6


@pytest.mark.parametrize("target", TARGETS)
def test_a_corrupted_weight_is_found_in_its_block(tiny, target, tmp_path):
    folder = shutil.copytree(tiny[target], tmp_path / "corrupt")
    corrupt_conv(folder, "features.2")
    assert not parity(folder).passed
    report = localize(folder, threads=1)
    first = report.first
    assert first is not None and first.path.startswith("features.2"), report.summary()
    assert "Conv" in first.op_types and first.cosine < report.tolerance["cosine_min"]
    before = [m for m in report.modules[: report.modules.index(first)]]
    assert {"features.0", "features.1"} <= {m.path for m in before}  # compared, and within the row
    assert report.reliable and len(report.following) == 2
    assert f"first divergent module: {first.path}" in report.summary()


def wrong_shuffle(x, groups: int):
    """A lowering that looks right and is not: the inverse channel shuffle (C/g groups instead of g)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    channels = int(x.shape[1])
    perm = _channel_shuffle.shuffle_permutation(channels, channels // groups)
    return op.Gather(x, op.Constant(value=ir.tensor(perm, name="shuffle_perm")), axis=1)


@pytest.mark.parametrize("target", TARGETS)
def test_a_wrong_lowering_is_found_in_its_block(target, tmp_path, monkeypatch):
    monkeypatch.setitem(
        _channel_shuffle.ONNX_TRANSLATIONS, torch.ops.lightdeploy.channel_shuffle.default, wrong_shuffle
    )
    with pytest.raises(ParityError):
        export_module(tiny_classifier, task="classify", input_size=SIZE, targets=(target,), out=tmp_path)
    monkeypatch.undo()
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"tiny_classifier-{target}-fp32")]
    report = localize(folder, threads=1)
    first = report.first
    assert first is not None and first.path == "features.1", report.summary()  # the ShuffleBlock
    assert first.cosine < 0.9 and report.reliable
    inner = next(m for m in report.modules if m.path == "features.1.conv")
    assert not inner.diverged  # the block's convolution is right: the fault is in the shuffle after it


def narrow_fake_quantize(folder, module: str) -> None:
    """Narrow to a tenth the range of the FakeQuantize on the input of ``module``'s convolution in an
    int8 IR (the block's input then clips), then reseal the manifest."""
    import openvino as ov
    from openvino import opset13 as ops

    graph = onnx.load(str(folder / "model.onnx"))
    conv_name = next(n.name for n in graph.graph.node if n.op_type == "Conv" and module in node_scopes(n))
    model = ov.Core().read_model(str(folder / "model.xml"))
    conv = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == conv_name)
    fq = conv.input_value(0).get_node()
    assert fq.get_type_name() == "FakeQuantize", fq.get_type_name()
    for port in range(1, 5):  # input_low, input_high, output_low, output_high
        value = fq.input_value(port).get_node().get_data()
        fq.input(port).replace_source_output(ops.constant(np.asarray(value / 10, np.float32)).output(0))
    # saved beside, then moved in: OpenVINO maps model.bin while the model read from it lives
    staged = folder.parent / "staged"
    staged.mkdir()
    ov.save_model(model, str(staged / "model.xml"), compress_to_fp16=False)
    del model, fq, conv
    for name in ("model.xml", "model.bin"):
        (staged / name).replace(folder / name)
    reseal(folder)


def test_an_int8_block_whose_input_clips_is_found(tmp_path):
    (outcome,) = export_module(
        tiny_classifier, task="classify", input_size=SIZE, targets=("openvino",), precision="int8", out=tmp_path
    )
    clean = localize(outcome.folder, threads=1)
    assert clean.reliable and clean.precision == "int8" and clean.modules
    folder = shutil.copytree(outcome.folder, tmp_path / "clipped")
    # the FakeQuantize between features.0 and features.1's grouped convolution
    narrow_fake_quantize(folder, "features.1")
    report = localize(folder, threads=1)
    first = report.first
    assert first is not None and first.path.startswith("features.1"), report.summary()
    assert all(not m.diverged for m in report.modules if m.path.startswith("features.0"))


def test_tensorrt_and_tflite_int8_are_refused_not_faked(tiny, tmp_path):
    for backend, precision in (("tensorrt", "fp32"), ("tflite", "int8")):
        folder = shutil.copytree(tiny["onnx"], tmp_path / f"{backend}-{precision}")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(backend=backend, precision=precision)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        reseal(folder)
        with pytest.raises(UsageError, match="not available"):
            localize(folder)
    r = run_cli("parity", str(tmp_path / "tensorrt-fp32"), "--localize", "--quiet", cwd=ROOT / "tests")
    assert r.returncode == 2 and "not available for tensorrt" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------- TFLite
def wrong_shuffle_tensor(x, groups: int):
    """The TFLite decomposition's twin of ``wrong_shuffle``: the inverse channel shuffle."""
    return _channel_shuffle.channel_shuffle_reference(x, x.shape[1] // groups)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    out = tmp_path_factory.mktemp("localize-tflite")
    (outcome,) = export_module(tiny_classifier, task="classify", input_size=SIZE, targets=("tflite",), out=out)
    return outcome.folder


def test_tflite_clean_artifact_is_localised_through_a_reconversion(tiny_tflite):
    report = localize(tiny_tflite, threads=1)
    assert report.first is None and report.reliable, report.summary()
    assert {"features.0", "features.1", "features.1.conv", "features.2", "fc"} <= {m.path for m in report.modules}


def test_tflite_wrong_decomposition_is_found_in_its_block(tmp_path, monkeypatch):
    from lightdeploy.exporters.tflite import convert

    monkeypatch.setattr(convert, "_FLOAT_CACHE", {})  # a cached good conversion would hide the planted fault
    op = torch.ops.lightdeploy.channel_shuffle.default
    monkeypatch.setitem(_channel_shuffle.TFLITE_DECOMPOSITIONS, op, wrong_shuffle_tensor)  # the TFLite form
    with pytest.raises(ParityError):
        export_module(tiny_classifier, task="classify", input_size=SIZE, targets=("tflite",), out=tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("tiny_classifier-tflite-fp32")]
    # the converter's fault is still registered: the re-conversion reproduces it, as a real one would
    report = localize(folder, threads=1)
    first = report.first
    assert first is not None and first.path == "features.1" and report.reliable, report.summary()
    assert not next(m for m in report.modules if m.path == "features.1.conv").diverged


def test_tflite_fault_in_the_file_is_reported_unreliable_not_misplaced(tiny_tflite, tmp_path):
    """A corrupted weight lives in the artifact's file, not in a re-conversion: the instrumented copy's
    final outputs then differ from the artifact's own, and the report says so instead of naming a module."""
    from ai_edge_litert import schema_py_generated as schema

    folder = shutil.copytree(tiny_tflite, tmp_path / "corrupt")
    data = bytearray((folder / "model.tflite").read_bytes())
    root = schema.Model.GetRootAsModel(data, 0)
    graph = root.Subgraphs(0)
    # features.2's convolution: the only [32, 3, 3, 32] weight of the tiny classifier
    tensor = next(
        graph.Tensors(i)
        for i in range(graph.TensorsLength())
        if list(graph.Tensors(i).ShapeAsNumpy()) == [32, 3, 3, 32]
    )
    weights = root.Buffers(tensor.Buffer()).DataAsNumpy()
    start = weights.__array_interface__["data"][0] - np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    values = np.frombuffer(data, np.float32, count=len(weights) // 4, offset=start).copy()
    values[: len(values) // 2] *= -1
    data[start : start + len(weights)] = values.tobytes()
    (folder / "model.tflite").write_bytes(bytes(data))
    reseal(folder)
    assert not parity(folder).passed
    report = localize(folder, threads=1)
    assert not report.reliable and "UNRELIABLE" in report.summary(), report.summary()


def test_cli_localize_names_the_module_and_exits_as_parity(tiny, tmp_path):
    folder = shutil.copytree(tiny["onnx"], tmp_path / "corrupt")
    corrupt_conv(folder, "features.2")
    report = tmp_path / "report.json"
    r = run_cli(
        *("parity", str(folder), "--localize", "--quiet", "--threads", "1", "--json", str(report)), cwd=ROOT / "tests"
    )
    assert r.returncode == 1, r.stderr
    assert "parity FAILED" in r.stdout and "first divergent module: features.2" in r.stdout
    [entry] = json.loads(report.read_text())
    assert entry["passed"] is False and entry["localization"]["first_divergent"].startswith("features.2")
    assert entry["localization"]["reliable"] is True
    r = run_cli("parity", str(tiny["onnx"]), "--localize", "--quiet", "--threads", "1", cwd=ROOT / "tests")
    assert r.returncode == 0, r.stderr
    assert "no module's output leaves the tolerance row" in r.stdout
