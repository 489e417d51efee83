"""INT8 accuracy control (lightdeploy.int8control): the target, the validation set, the greedy fallback."""

from __future__ import annotations

import numpy as np
import pytest

from lightdeploy import int8control
from lightdeploy.parity.tolerances import tolerance_for


def test_the_target_is_above_every_int8_cosine_row():
    for backend in ("openvino", "tflite", "tensorrt"):
        assert int8control.TARGET_COSINE > tolerance_for(backend, "int8").cosine_min


def test_the_validation_set_is_the_photographs_mirrored():
    """What the int8 row gates (photographs), not the same images, and no noise (parity/inputs.py)."""
    from lightdeploy.exporters.base import ExportOptions
    from lightdeploy.factory import create_model
    from lightdeploy.jobs import make_job
    from lightdeploy.models.registry import get_spec
    from lightdeploy.samples import sample_photographs

    name = "mobilenetv2_x0.35"
    options = ExportOptions(target="openvino", precision="int8", input_size=(32, 32))
    job = make_job(get_spec(name), create_model(name, input_size=(32, 32)), options)
    validation = int8control.validation_set(job)
    assert validation.names == [f"{n} mirrored" for n in sample_photographs()]
    assert all(len(ref) == 1 and ref[0].shape == (1, 1000) for ref in validation.reference)
    assert validation.judged == (0,)


def test_validation_scores_the_logits_not_the_class_map():
    """A segmenter returns (logits, class map): the map is judged by the task metric, never by cosine."""
    from lightdeploy.exporters.base import ExportOptions
    from lightdeploy.factory import create_model
    from lightdeploy.jobs import make_job
    from lightdeploy.models.registry import get_spec

    name = "bisenet_xception39"
    options = ExportOptions(target="tflite", precision="int8", input_size=(64, 64))
    job = make_job(get_spec(name), create_model(name, input_size=(64, 64)), options)
    validation = int8control.validation_set(job)
    assert job.output_names == ("logits", "mask") and validation.judged == (0,)
    runs = iter(validation.reference)

    def wrong_map(x):  # exact logits, every class index moved
        logits, classes = next(runs)
        return [logits, classes[:, ::-1] + 1]

    assert validation.worst(wrong_map) == pytest.approx(1.0)


def test_restore_float_keeps_the_most_sensitive_first_and_stops_at_the_target():
    gain = {"a": 0.001, "b": 0.010, "c": 0.004, "d": 0.0}
    start = 0.975

    def measure(names):
        return start + sum(gain[n] for n in names)

    decision = int8control.restore_float(measure, list(gain), start, target=0.985, budget=3)
    assert decision["float_modules"] == ["b"] and decision["reached"]
    decision = int8control.restore_float(measure, list(gain), start, target=0.988, budget=3)
    assert decision["float_modules"] == ["b", "c"] and decision["reached"]
    assert decision["worst_cosine"] == round(start + 0.014, 4)


def test_restore_float_reranked_keeps_what_measures_best_together():
    def measure(names):  # a and b each help alone but not together; a and c together reach the target
        together = {frozenset("ab"): 0.96, frozenset("ac"): 0.99, frozenset("ad"): 0.97}
        return together.get(frozenset(names), {"a": 0.975, "b": 0.974, "c": 0.95, "d": 0.95}.get(names[0]))

    greedy = int8control.restore_float(measure, list("abcd"), 0.95, target=0.985, budget=2)
    assert greedy["float_modules"] == ["a"] and not greedy["reached"]
    reranked = int8control.restore_float(measure, list("abcd"), 0.95, target=0.985, budget=2, rerank=True)
    assert reranked["float_modules"] == ["a", "c"] and reranked["reached"]


def test_restore_float_reports_a_miss_within_the_budget():
    decision = int8control.restore_float(lambda names: 0.9 + 0.01 * len(names), ["a", "b", "c"], 0.9, budget=2)
    assert decision["float_modules"] == ["a", "b"] and not decision["reached"]
    assert decision["worst_cosine"] == 0.92


def test_restore_float_keeps_nothing_when_nothing_helps():
    counted = []
    decision = int8control.restore_float(lambda names: 0.9, ["a", "b"], 0.95, count=lambda *c: counted.append(c))
    assert counted == [(1, 2, "layers measured in float"), (2, 2, "layers measured in float")]
    assert decision["float_modules"] == [] and not decision["reached"] and decision["worst_cosine"] == 0.95


def test_validation_scores_the_worst_output_per_input():
    ref = [[np.array([1.0, 0.0]), np.array([0.0, 1.0])]]
    validation = int8control.Validation([np.zeros((1, 3, 2, 2), np.float32)], ["x"], ref)
    scores = validation.scores(lambda x: [np.array([1.0, 0.0]), np.array([1.0, 1.0])])
    assert np.isclose(scores[0], np.sqrt(0.5))


def test_tflite_module_path_from_a_litert_torch_tensor_name():
    from lightdeploy.exporters.tflite.quantize import module_path

    wrapper = "lightdeploy.exporters.tflite.convert.named_io_module.<locals>.NamedOutputs"
    name = (
        f"{wrapper}/lightdeploy.models.mobilenetv2.MobileNetV2_inner/torch.nn.modules.container.Sequential_features/"
        "lightdeploy.models.mobilenetv2.InvertedResidual_7/torch.nn.modules.container.Sequential_conv/"
        "torch.nn.modules.conv.Conv2d_2;2"
    )
    assert module_path(name) == "features.7.conv.2"
    fused = f"{wrapper}/M_inner/Sequential_features/ConvBNReLU6_0/ReLU6_2;;{wrapper}/M_inner/Sequential_features/ConvBNReLU6_0/Conv2d_0;1"
    assert module_path(fused) == "features.0.0"
    assert module_path("serving_default_logits_output") == "serving_default_logits_output"
    underscored = f"{wrapper}/lightdeploy.models.bisenet.BiSeNet_inner/lightdeploy.models.bisenet.SpatialPath_spatial_path/lightdeploy.models._detection.ProposalLayer_proposals;3"
    assert module_path(underscored) == "spatial_path.proposals"


def test_a_qdq_layer_without_its_qdq_computes_the_float_layer(tmp_path):
    """TensorRT accuracy control: the layer kept float reads the float input and the float weights."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lightdeploy.exporters.tensorrt.qdq import quantize, quantized_layers, without_qdq

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["b"], name="relu"),
            helper.make_node("Conv", ["b", "w2"], ["out"], name="conv2"),
        ],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "f.onnx"))
    batches = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", "image", batches)
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    assert quantized_layers(qdq) == ["conv1", "conv2"]
    restored = without_qdq(qdq, model, ["conv1", "conv2"])
    assert quantized_layers(restored) == []
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in restored.graph.node)

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": batches[0]})[0]

    np.testing.assert_allclose(run(restored), run(model), rtol=1e-5, atol=1e-5)
    partial = without_qdq(qdq, model, ["conv2"])
    assert quantized_layers(partial) == ["conv1"]


@pytest.mark.slow  # about 8 minutes on a shared 2-core machine
def test_openvino_accuracy_control_reverts_layers_when_no_range_setting_reaches_the_target(tmp_path, monkeypatch):
    """The path a model takes when neither range setting meets the target: NNCF's accuracy-controlled
    quantisation with the validation cosine, within the float budget, recorded in the manifest."""
    from lightdeploy.exporters.openvino import quantize
    from lightdeploy.pipeline import export

    monkeypatch.setattr(int8control, "TARGET_COSINE", 0.999999)  # out of reach: every step runs
    monkeypatch.setattr(int8control, "MAX_FLOAT_MODULES", 2)
    monkeypatch.setattr(quantize, "ALTERNATIVES", ())
    outcome = export("mobilenetv2_x0.35", "openvino", precision="int8", input_size=(64, 64), out=tmp_path, parity=False)
    control = outcome.manifest["backend_info"]["int8"]["accuracy_control"]
    assert control["range_settings"][0]["activation_range"] == quantize.ACTIVATION_RANGE
    assert not control["reached"] and len(control["float_modules"]) <= 2
    assert control["ranking_inputs"] == quantize.RANKING_INPUTS and isinstance(control["float_inputs"], list)
    assert control["worst_cosine"] >= control["shipped_settings"]


def test_openvino_restorer_report_names_reverted_ops_with_and_without_weights():
    """NNCF reverts groups of quantisers; a group may hold only the activation quantisers in front of an
    Add, which the weighted-op list alone would report as nothing kept float."""
    import openvino as ov
    import openvino.opset13 as ops

    from lightdeploy.exporters.openvino.quantize import _reverted

    def model(quantize_conv: bool, quantize_add: bool):
        x = ops.parameter([1, 2, 4, 4], np.float32, name="x")
        lo, hi = ops.constant(np.float32(-1)), ops.constant(np.float32(1))

        def fq(t, on: bool):
            return ops.fake_quantize(t, lo, hi, lo, hi, 256) if on else t

        weights = ops.constant(np.ones((2, 2, 1, 1), np.float32))
        conv = ops.convolution(fq(x, quantize_conv), weights, [1, 1], [0, 0], [0, 0], [1, 1], name="conv")
        add = ops.add(fq(conv, quantize_add), fq(x, quantize_add), name="add")
        return ov.Model([add], [x])

    assert _reverted(model(True, True), model(True, True)) == ([], [])
    assert _reverted(model(True, True), model(True, False)) == ([], ["add"])
    assert _reverted(model(True, True), model(False, False)) == (["conv"], ["add"])


def test_full_bias_correction_gives_way_to_the_fast_one_over_its_memory_estimate(tmp_path, monkeypatch):
    """NNCF's full bias correction keeps a fifth of the calibration batches' activations at every corrected
    layer, more than a machine holds for the big segmenters.  Over the estimate's limit the export uses the
    fast one, and the manifest says so."""
    import openvino as ov
    import openvino.opset13 as ops

    from lightdeploy.exporters.openvino import quantize
    from lightdeploy.pipeline import export

    x = ops.parameter([-1, 2, 4, 4], np.float32, name="x")  # a dynamic batch counts as the calibration batch
    weights = ops.constant(np.ones((3, 2, 1, 1), np.float32))
    conv = ops.convolution(x, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    per_batch = 4 * (2 * 16 + 3 * 16) * 5  # float32 input and output at batch 5
    assert quantize.full_bias_correction_bytes(ov.Model([conv], [x]), 5, 10) == per_batch * 2  # a fifth of 10

    info = lambda out: out.manifest["backend_info"]["int8"]  # noqa: E731
    small = dict(precision="int8", input_size=(64, 64), parity=False)
    shipped = export("shufflenetv2_x0.5", "openvino", out=tmp_path / "a", **small)
    assert info(shipped)["fast_bias_correction"] is False and info(shipped)["full_bias_correction_estimate_gib"] < 1
    monkeypatch.setattr(quantize, "FULL_BIAS_CORRECTION_MAX_BYTES", 0)
    limited = export("shufflenetv2_x0.5", "openvino", out=tmp_path / "b", **small)
    assert info(limited)["fast_bias_correction"] is True
