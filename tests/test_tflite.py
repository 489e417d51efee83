"""TFLite (litert-torch) export + parity for every registered model, and the backend's promises.

- FP32: every registered model (aliases skipped, new models enrolled automatically), gated at the
  design's fp32 row.
- FP16 / INT8: every registered model too; ``QUANT_MODELS`` (one per family) in every run, the rest
  in the slow set.  A litert-torch conversion costs three AOTAutograd retraces of the model
  (torch.export, its FX passes, the MLIR lowering), 10-25 s per model on these 2-core machines.
  fp16 reuses the float flatbuffer of the same model (exporters/tflite/convert.py), so it adds little once
  fp32 ran in the same worker (the tests of one model share an xdist group); INT8 is judged at
  ``quant_size`` (the model's own input size; the segmenters' small_size).
- Random weights are shifted into the ordered regime before their BN statistics are re-estimated
  (``lightdeploy.factory.RANDOM_BN_SHIFT``); without that, rounding noise grows through depth and
  the fp16 / int8 rows fail for honest artifacts (measured there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import family_marks, quant_size, registered, small_size

from lightdeploy.errors import MissingDependencyError, ParityError, UsageError
from lightdeploy.models.registry import get_spec
from lightdeploy.pipeline import export

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

QUANT_MODELS = ("mobilenetv2", "shufflenetv2", "bisenet_xception39")

_EXPORTED: dict[tuple, object] = {}  # one export per (model, precision, nhwc) per worker


def exported(name: str, precision: str, tmp_path_factory, nhwc: bool = False):
    """Export once; a ParityError is kept and re-raised to every test that asks for it."""
    key = (name, precision, nhwc)
    if key not in _EXPORTED:
        out = tmp_path_factory.mktemp(f"tflite-{name}-{precision}")
        try:
            size = (quant_size if precision == "int8" else small_size)(get_spec(name))
            _EXPORTED[key] = export(name, "tflite", precision=precision, input_size=size, nhwc=nhwc, out=out)
        except ParityError as exc:
            _EXPORTED[key] = (exc, exc.folder)
    result = _EXPORTED[key]
    if isinstance(result, tuple):
        raise result[0]
    return result


def exported_folder(name: str, precision: str, tmp_path_factory) -> Path:
    """The artifact folder of ``exported``, whether its gate passed or failed (a failed one is kept)."""
    try:
        return exported(name, precision, tmp_path_factory).folder
    except ParityError:
        return _EXPORTED[(name, precision, False)][1]


def _model_params():
    """Every model, grouped per model so one worker converts it once.  The fast set converts one model
    per family (``family_marks``) and no detector: a conversion and gate of each of the five detectors
    takes 30-60 s here."""
    return [
        pytest.param(
            n,
            marks=[pytest.mark.xdist_group(n)]
            + ([pytest.mark.slow] if get_spec(n).task == "detect" else family_marks(n)),
        )
        for n in registered()
    ]


def _manifest_checks(manifest: dict, name: str, precision: str) -> None:
    assert manifest["backend"] == "tflite" and manifest["backend_file"] == "model.tflite"
    assert manifest["precision"] == precision
    assert {"model.onnx", "model.tflite"} <= set(manifest["files"])
    assert [o["name"] for o in manifest["outputs"]] == list(get_spec(name).outputs)
    assert manifest["inputs"][0]["dtype"] == "float32"  # float I/O at every precision
    ops = manifest["backend_info"]["ops"]
    assert ops and not [op for op in ops if op.startswith("CUSTOM")], ops


@pytest.mark.parametrize("name", _model_params())
def test_fp32_export_and_parity(name, tmp_path_factory):
    outcome = exported(name, "fp32", tmp_path_factory)
    assert outcome.report.passed, outcome.report.summary()
    _manifest_checks(outcome.manifest, name, "fp32")


def _quant_params():
    params = []
    for n in registered():
        for p in ("fp16", "int8"):
            marks = [pytest.mark.xdist_group(n)] + ([] if n in QUANT_MODELS else [pytest.mark.slow])
            if p == "int8" and n in INT8_NOT_EXPECTED:
                marks.append(pytest.mark.xfail(raises=ParityError, strict=True, reason=INT8_NOT_EXPECTED[n]))
            params.append(pytest.param(n, p, marks=marks))
    return params


# The detectors fail the int8 row on int8 rounding alone, in eager PyTorch with no export
# (test_conditioning.test_int8_rounding_alone_fails_a_random_detectors_box_f1: 0.677 at 320x320).
# On TFLite, thundernet_snet49 box match F1 at 320x320 was 0.356, well below eager with int8 noise
# and OpenVINO's 0.668: PSRoIAlign's sample coordinates ran in int8 (DETECTOR_FLOAT_SCOPES' root-level
# regex matched nothing, exporters/tflite/quantize.py).  With them float: 0.682 (only the backbone int8: 0.690),
# i.e. at the eager int8-noise level, still under the 0.85 row; the other detectors were not run at
# their own sizes (minutes per conversion).
INT8_NOT_EXPECTED = {
    n: "random-weight detectors fail the int8 box F1 row on rounding alone (test_conditioning)"
    for n in ("thundernet_snet49", "thundernet_snet146", "thundernet_snet535", "lighthead_rcnn")
}


def test_detector_float_scopes_match_the_quantizers_op_scopes():
    """DETECTOR_FLOAT_SCOPES are searched in ai-edge-quantizer's op scope (output tensor names joined by
    ";", with a trailing ";").  A root-level regex without that ";" once matched nothing and left
    PSRoIAlign in int8 (thundernet_snet49 box F1 0.356 instead of 0.682 at 320x320)."""
    import re
    from types import SimpleNamespace

    from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

    from lightdeploy.exporters.tflite.quantize import DETECTOR_FLOAT_SCOPES

    def float_kept(*names: str) -> bool:
        tensors = [SimpleNamespace(name=n.encode()) for n in names]
        scope = get_op_scope(SimpleNamespace(outputs=list(range(len(names))), inputs=[]), tensors)
        return any(re.search(regex, scope) for regex in DETECTOR_FLOAT_SCOPES)

    wrapper = "lightdeploy.exporters.tflite.convert.named_io_module.<locals>.NamedOutputs/"
    root = wrapper + "lightdeploy.models.thundernet.ThunderNet_inner"
    assert float_kept(root + ";41")  # the detector's own forward: anchors, PSRoIAlign coordinates
    assert float_kept(root)
    assert float_kept(root + ";7", root + ";8")  # an op with two outputs
    assert float_kept(root + "/lightdeploy.models._detection.ProposalLayer_proposals;2009")
    assert float_kept(root + "/lightdeploy.models._detection.DetectionLayer_postprocess;12")
    assert not float_kept(root + "/lightdeploy.models.thundernet.CEM_cem;2")
    assert not float_kept(root + "/lightdeploy.models.snet.SNet_backbone/torch.nn.modules.conv.Conv2d_conv1;")


@pytest.mark.xdist_group("bisenet_xception39")  # shares that worker's int8 export
def test_int8_signature_follows_the_dequantized_output(tmp_path_factory):
    """A segmenter's ``logits`` feed both the graph output and the mask ARG_MAX; ai-edge-quantizer
    dequantises them for both but leaves the signature on the int8 tensor, which the signature runner
    then cannot read ("Tensor data is null").  The exporter re-points it where that happens (which
    depends on the graph: the channel-last class map or a float scope can put a TRANSPOSE or a float op
    between them): the bare runner returns float logits whose argmax is the mask."""
    # Its parity is judged by the parity test; here the signature is the subject.
    folder = exported_folder("bisenet_xception39", "int8", tmp_path_factory)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["backend_info"]["quantization"]["signature_outputs_retargeted"]) <= {"logits"}

    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(folder / "model.tflite"), num_threads=2).get_signature_runner("serving_default")
    x = np.random.default_rng(0).standard_normal(manifest["inputs"][0]["shape"]).astype(np.float32)
    result = runner(image=x)
    assert result["logits"].dtype == np.float32 and np.ptp(result["logits"]) > 0
    assert manifest["outputs"][0]["file_layout"] == "NHWC"  # the file's logits are channel-last
    assert (result["mask"] == result["logits"].argmax(axis=-1)).all()


@pytest.mark.parametrize("name,precision", _quant_params())
def test_quantised_export_and_parity(name, precision, tmp_path_factory):
    outcome = exported(name, precision, tmp_path_factory)
    assert outcome.report.passed, outcome.report.summary()
    _manifest_checks(outcome.manifest, name, precision)
    info = outcome.manifest["backend_info"]
    float_rows = [c for c in outcome.report.checks if c.subject.startswith("float graph: ")]
    assert float_rows and all(c.passed for c in float_rows)  # the graph before quantisation, fp32 row
    if precision == "fp16":
        assert "DEQUANTIZE" in info["ops"]  # fp16 weights, dequantised once at load
    else:
        assert info["ops"].get("QUANTIZE", 0) >= 1 and info["ops"].get("DEQUANTIZE", 0) >= 1
        assert info["quantization"]["calibration"]["images"] > 0
        assert "min_max_update" in info["quantization"]["ranges"]  # global ranges: what made BiSeNet pass


def test_float_graph_is_gated_and_catches_what_int8_may_miss(tmp_path, monkeypatch):
    """A graph bug in the converted model (one pointwise conv's inputs permuted, as OpenVINO's Gather
    fold once did): on random weights the int8 row may not see it (test_conditioning.INT8_BLIND), the
    float graph's fp32 rows must."""
    import copy
    import dataclasses

    from test_conditioning import _middle_pointwise_conv_inputs_permuted

    from lightdeploy.exporters.tflite import convert

    original = convert.convert_float
    monkeypatch.setattr(
        convert,
        "convert_float",
        lambda job: original(
            dataclasses.replace(job, model=_middle_pointwise_conv_inputs_permuted(copy.deepcopy(job.model)))
        ),
    )
    with pytest.raises(ParityError):
        export("mobilenetv2", "tflite", precision="int8", input_size=(224, 224), out=tmp_path)
    (folder,) = tmp_path.iterdir()
    checks = json.loads((folder / "manifest.json").read_text())["parity"]["checks"]
    float_rows = [c for c in checks if c["subject"].startswith("float graph: ")]
    assert float_rows and not all(c["passed"] for c in float_rows), float_rows
    assert folder.name.endswith(".failed")  # kept beside the name, never in its place
    assert sorted(p.name for p in folder.iterdir()) == [
        "export_log.json",
        "manifest.json",
        "model.onnx",
        "model.tflite",
    ]


@pytest.mark.parametrize("name", _model_params())
def test_bare_interpreter_matches_eager(name, tmp_path_factory):
    """The .tflite runs in the bare LiteRT interpreter (no lightdeploy code) and matches eager.

    Compared output: the first one (logits); for detectors the scores sorted, since detections that
    tie in score may come out in either order (a permutation, not an error)."""
    import torch

    from lightdeploy.factory import create_model

    spec = get_spec(name)
    try:
        folder = exported(name, "fp32", tmp_path_factory).folder
    except ParityError:  # judged by the gate test; here only the bare interpreter is the subject
        folder = _EXPORTED[(name, "fp32", False)][1]
    manifest = json.loads((folder / "manifest.json").read_text())

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "model.tflite"), num_threads=2)
    runner = interpreter.get_signature_runner("serving_default")
    x = np.random.default_rng(0).standard_normal(manifest["inputs"][0]["shape"]).astype(np.float32)
    result = runner(image=x)

    model = create_model(name, input_size=small_size(spec))
    if spec.export_wrapper:
        model = spec.export_wrapper(model, {})
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    ref = dict(zip(spec.outputs, ref if isinstance(ref, (tuple, list)) else (ref,)))
    name_out = "scores" if spec.task == "detect" else spec.outputs[0]
    got, want = result[name_out], ref[name_out].numpy()
    (entry,) = [o for o in manifest["outputs"] if o["name"] == name_out]
    if entry.get("file_layout") == "NHWC":  # the file holds the map channel-last; the manifest says so
        got = got.transpose(0, 3, 1, 2)
    if spec.task == "detect":
        got, want = np.sort(got, axis=-1), np.sort(want, axis=-1)
    assert got.shape == want.shape
    limit = 1e-4 * np.abs(want).max() + 1e-5  # the fp32 row
    assert np.abs(got - want).max() <= limit


@pytest.mark.parametrize("name", ["shufflenetv2_x0.5", "bisenet_xception39"])
def test_nhwc_export_parity(name, tmp_path_factory):
    outcome = exported(name, "fp32", tmp_path_factory, nhwc=True)
    assert outcome.report.passed, outcome.report.summary()
    m = outcome.manifest
    h, w = small_size(get_spec(name))
    assert m["inputs"][0]["shape"] == [1, h, w, 3] and m["inputs"][0]["layout"] == "NHWC"
    assert m["preprocessing"]["layout"] == "NHWC"
    for o in m["outputs"]:  # 4-D maps are channel-last; vectors and masks carry no layout
        assert (o.get("layout") == "NHWC") == (len(o["shape"]) == 4), o


# ------------------------------------------------------------------------------ refusals and errors
def test_flex_and_custom_ops_are_refused():
    from lightdeploy.exporters.tflite.flatbuffer import UnsupportedOpsError, check_builtin_only

    check_builtin_only({"CONV_2D": 3, "ADD": 1, "GATHER_ND": 1})
    with pytest.raises(UnsupportedOpsError, match="Flex.*FlexRoll"):
        check_builtin_only({"CONV_2D": 3, "CUSTOM:FlexRoll": 1})
    with pytest.raises(UnsupportedOpsError, match="custom"):
        check_builtin_only({"CUSTOM:MyOp": 1})


def test_refused_export_writes_nothing(tmp_path, monkeypatch):
    """A conversion that leaves a Flex op fails the export with a clear error and no artifact."""
    from lightdeploy.exporters.tflite import convert
    from lightdeploy.exporters.tflite.flatbuffer import UnsupportedOpsError

    # The conversion is stubbed (its cost is covered elsewhere): the refusal path is what is tested.
    monkeypatch.setattr(convert, "convert_float", lambda job: (b"converted", [], [], False))
    monkeypatch.setattr(convert, "list_ops", lambda model: {"CONV_2D": 1, "CUSTOM:FlexErf": 1})
    with pytest.raises(UnsupportedOpsError, match="FlexErf"):
        export("shufflenetv2_x0.5", "tflite", input_size=(64, 64), out=tmp_path)
    assert [p for p in tmp_path.iterdir()] == []


def test_list_ops_reads_the_flatbuffer(tmp_path_factory):
    from lightdeploy.exporters.tflite.flatbuffer import list_ops

    outcome = exported("shufflenetv2", "fp32", tmp_path_factory)
    ops = list_ops((outcome.folder / "model.tflite").read_bytes())
    assert ops == outcome.manifest["backend_info"]["ops"]
    assert ops["CONV_2D"] > 0 and ops["FULLY_CONNECTED"] == 1


@pytest.mark.xdist_group("bisenet_xception39")  # shares that worker's fp32 export
def test_class_map_reduces_channel_last_logits(tmp_path_factory):
    """ARG_MAX reads NHWC logits (exporters/tflite/layout.py): on NCHW it reduces a strided axis
    outside XNNPACK; and the layout-pass patch is gone after the conversion."""
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_check

    folder = exported_folder("bisenet_xception39", "fp32", tmp_path_factory)
    interpreter = Interpreter(model_path=str(folder / "model.tflite"))
    shapes = {t["index"]: list(t["shape"]) for t in interpreter.get_tensor_details()}
    (argmax,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "ARG_MAX"]
    h, w = small_size(get_spec("bisenet_xception39"))
    classes = get_spec("bisenet_xception39").num_classes
    assert shapes[argmax["inputs"][0]] == [1, h, w, classes]
    assert torch.ops.aten.max.dim not in layout_check.nhwcable_node_checkers
    # the logits leave the file channel-last: no full-resolution TRANSPOSE anywhere in the graph
    full = h * w * classes
    transposes = [op for op in interpreter._get_ops_details() if op["op_name"] == "TRANSPOSE"]
    assert all(np.prod(shapes[op["outputs"][0]]) < full for op in transposes)
    logits = json.loads((folder / "manifest.json").read_text())["outputs"][0]
    assert logits["shape"] == [1, classes, h, w] and logits["file_layout"] == "NHWC"
    from lightdeploy import runtimes

    with runtimes.open_runtime(folder, threads=2) as runtime:
        out = runtime.run({"image": np.zeros((1, 3, h, w), np.float32)})["logits"]
    assert out.shape == (1, classes, h, w) and out.strides[1] == 4  # NCHW view of the NHWC buffer


def test_runtime_returns_channel_last_file_outputs_as_nchw_views(tmp_path):
    """An output stored NHWC (``file_layout``) comes back as an NCHW view of LiteRT's own copy, and
    LiteRT's fresh output arrays are not copied again."""
    from lightdeploy.runtimes.base import TensorSpec
    from lightdeploy.runtimes.tflite import _from_tensor, _resolve

    spec = TensorSpec("logits", (1, 19, 8, 16), "float32")
    detail = {"name": "logits", "index": 3, "shape": [1, 8, 16, 19]}
    assert _resolve([spec], [detail], "output", "m", {"logits"})["logits"] is detail
    with pytest.raises(Exception, match="shape"):
        _resolve([spec], [detail], "output", "m")  # without file_layout the shapes disagree
    fresh = np.random.default_rng(0).random((1, 8, 16, 19), dtype=np.float32)
    assert _from_tensor(fresh, detail, spec) is fresh
    borrowed = fresh[...]  # a view, as a buffer the interpreter reuses would be
    assert _from_tensor(borrowed, detail, spec) is not borrowed and not np.shares_memory(
        _from_tensor(borrowed, detail, spec), fresh
    )


def test_dynamic_shapes_are_refused(tmp_path):
    with pytest.raises(UsageError, match="fixed input shape"):
        export("shufflenetv2_x0.5", "tflite", input_size=(64, 64), dynamic_batch=True, out=tmp_path)
    assert [p for p in tmp_path.iterdir()] == []


def test_missing_converter_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"lightdeploy\[tflite\]"):
        export("shufflenetv2_x0.5", "tflite", input_size=(64, 64), out=tmp_path)


def test_missing_interpreter_names_the_extra(monkeypatch):
    from lightdeploy.runtimes import tflite

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(MissingDependencyError, match=r"lightdeploy\[tflite-runtime\]"):
        tflite.interpreter_class()


def test_runtime_maps_names_by_signature_then_position():
    """Manifest names map to tensor indices by exact name, contained name, then order."""
    from lightdeploy.errors import ArtifactError
    from lightdeploy.runtimes.base import TensorSpec
    from lightdeploy.runtimes.tflite import _resolve

    specs = [TensorSpec("boxes", (1, 100, 4), "float32"), TensorSpec("scores", (1, 100), "float32")]
    by_name = [{"name": "scores", "index": 7, "shape": [1, 100]}, {"name": "boxes", "index": 3, "shape": [1, 100, 4]}]
    assert {k: v["index"] for k, v in _resolve(specs, by_name, "output", "m").items()} == {"boxes": 3, "scores": 7}
    prefixed = [
        {"name": "serving_default_boxes:0", "index": 1, "shape": [1, 100, 4]},
        {"name": "serving_default_scores:0", "index": 2, "shape": [1, 100]},
    ]
    assert _resolve(specs, prefixed, "output", "m")["scores"]["index"] == 2
    anonymous = [
        {"name": "Identity", "index": 5, "shape": [1, 100, 4]},
        {"name": "Identity_1", "index": 6, "shape": [1, 100]},
    ]
    assert _resolve(specs, anonymous, "output", "m")["scores"]["index"] == 6
    with pytest.raises(ArtifactError, match="shape"):
        _resolve(specs, [{**d, "shape": [1, 50]} for d in by_name], "output", "m")


def test_runtime_load_and_predict(tmp_path_factory, cat_image):
    from lightdeploy import runtimes

    outcome = exported("shufflenetv2", "fp32", tmp_path_factory)
    model = runtimes.load(outcome.folder, threads=2)
    assert model.runtime.backend == "tflite"
    assert len(model.predict(cat_image, k=5)) == 5
