"""OpenVINO export: the simplified ONNX -> ``openvino.convert_model`` -> IR (model.xml + model.bin).

Precisions:
- fp32: IR with FP32 weights (``save_model(compress_to_fp16=False)``: OpenVINO's default compresses).
- fp16: FP16 weights (``compress_to_fp16=True``); on CPU the runtime still computes in f32 (the
  runtime pins ``INFERENCE_PRECISION_HINT``), so this halves the file, not the arithmetic.
- int8: NNCF post-training quantisation of the converted model on the calibration set
  (``lightdeploy.calibration``), with the ignored scope below; the remaining weights stay FP32.

The ONNX file the IR is built from is kept in the artifact as model.onnx (design.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx import export_onnx, graph_io, lightdeploy_metadata, quiet

# Ops NNCF leaves in floating point, as OpenVINO op types: none, by measurement.  shufflenetv2 at
# 64x64, seeded random weights before factory.RANDOM_BN_SHIFT existed (BN beta = 0), logits cosine to eager (worst of the 10 parity inputs; int8 row 0.98):
#   quantise everything 0.676 | ignore MatMul 0.675 | MatMul+ReduceMean 0.675 | GroupConvolution
#   0.706 | Convolution 0.856 | Convolution+GroupConvolution+MatMul (1 FakeQuantize left) 0.972;
#   preset performance 0.686; fast_bias_correction=False 0.687; at 224x224 0.885; mobilenetv2 0.702;
#   bisenet_xception39 logits 0.462 / mask pixels 35% | ignore Interpolate+Sigmoid+Multiply 0.461 / 35%.
# No op type carries the error: it is spread over every layer, because random-weight networks amplify
# small perturbations through depth (eager PyTorch with one int8 step of uniform noise added to every
# conv output: cosine 0.78-0.90; nncf.quantize_with_accuracy_control reverted every quantiser of
# shufflenetv2 without reaching 0.985).  Ignoring the classifier MatMul, the pooling, or BiSeNet's
# attention (Sigmoid, Multiply) and resizes (Interpolate) made no difference, so nothing is ignored by
# default; a real-weight model that needs it can pass ``ignored_types``.  Ignoring all convolutions to pass the gate would
# leave an "int8" artifact with no int8 in it.  With the shift (beta = 1) the classifiers pass at
# 224x224 with nothing ignored: worst-input cosine mobilenetv2 0.9989, snet49 0.9987.
IGNORED_TYPES: tuple[str, ...] = ()

# NNCF preset MIXED (symmetric weights, asymmetric activations), activation ranges from the global min /
# max over the calibration set (NNCF's default averages the per-batch min / max: a narrower range that
# clips), and full bias correction (``fast_bias_correction=False``).  Measured, logits worst-input cosine
# / mask pixels (int8 row 0.98 / 95%), BiSeNet at 64x64 (the test size), xception39 | resnet18 |
# lighthead_rcnn box match F1 (row 0.85):
#   NNCF default (MIXED, mean min/max, fast bias correction) 0.981 / 92.2% | 0.982 / 89.4% | 1.0
#   MIXED + global min/max (fast bias correction)     0.995 / 95.9% | 0.990 / 91.2% | 1.0
#   MIXED + global min/max + full bias correction (this) 0.994 / 96.1% | 0.996 / 95.2% | 1.0
#   MIXED + global min/max + no bias correction        0.994 / 95.7% | 0.995 / 95.3% | 0.80
#   PERFORMANCE (symmetric activations)                0.985 / 94.5% | -             | 0.67
#   PERFORMANCE + global min/max + no bias correction  0.995 / 95.8% | 0.997 / 96.3% | 0.67
#   ORT QDQ, the TensorRT estimate (symmetric, MinMax, no bias correction) 0.997 / 96.0% | 0.997 / 95.1%
#     | 0.67
# At 64x128 nothing tried passes xception39's mask, not even ORT QDQ (0.993 / 93.4%; NNCF default 0.976 /
# 91.0%, PERFORMANCE + global min/max + no bias correction 0.993 / 94.0%).  Same FakeQuantize count as the
# default (147 / 56 / 46), nothing ignored.  Full bias correction costs about 2-3x the quantisation time.
# No regression: dfanet_a 128x128 0.996 / 98.3% -> 0.998 / 99.0%; mobilenetv2 224x224 0.9989 -> 0.9993.
# Speed (224x224, 2 threads, earlier run): PERFORMANCE was no faster than MIXED (mobilenetv2 10.0-11.6 vs
# 11.3-11.4 ms, shufflenetv2 7.2-7.3 vs 6.6-7.6 ms; OV fp32 24-25 / 12-13 ms).
PRESET = "mixed"
ACTIVATION_RANGE = "minmax"  # nncf RangeEstimatorParametersSet.MINMAX; "mean_minmax" is NNCF's default
FAST_BIAS_CORRECTION = False  # NNCF's default is True


class OpenVinoExporter:
    target = "openvino"
    backend = "openvino"
    precisions = ("fp32", "fp16", "int8")

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        ov = require("openvino", package="openvino", extra="openvino", purpose="OpenVINO export")
        onnx = require("onnx", package="onnx", extra="onnx", purpose="OpenVINO export (via ONNX)")
        if job.options.nhwc:
            raise UsageError(
                "OpenVINO artifacts take NCHW input (the layout the ONNX graph is built in); "
                "export without the NHWC option."
            )
        precision = job.options.precision
        onnx_path = workdir / "model.onnx"
        onnx_info = export_onnx(job, onnx_path, metadata=lightdeploy_metadata(job))
        proto = onnx.load(str(onnx_path), load_external_data=False)
        guarded = guard_permutation_gathers(proto)
        if guarded:
            onnx.save(proto, str(onnx_path))  # model.onnx stays the exact file the IR is built from
        inputs, outputs = graph_io(proto)

        t0 = time.perf_counter()
        model = ov.convert_model(str(onnx_path))
        info: dict = {"onnx": onnx_info, "openvino": {"converted_from": "model.onnx",
                                                      "topk_made_stable": stable_topk(model),
                                                      "shuffle_channels": shuffle_gathers_to_op(model)}}
        if guarded:
            info["onnx"]["rewrites"] = {"gather_axis_made_negative": guarded, "why": _GUARD_WHY}
        float_model = model.clone() if precision != "fp32" else None  # NNCF may rewrite in place
        if precision == "int8":
            model, info["int8"] = quantize_int8(model, job)
        # FP16 weights only when asked: OpenVINO's save_model compresses to FP16 by default.
        ov.save_model(model, str(workdir / "model.xml"), compress_to_fp16=precision == "fp16")
        info["openvino"].update({
            "weights": {"fp32": "fp32", "fp16": "fp16", "int8": "int8 (quantised ops), fp32 (rest)"}[precision],
            "ops": len(model.get_ordered_ops()),
            "convert_seconds": round(time.perf_counter() - t0, 2),
        })
        twin = None if float_model is None else \
            (lambda folder: ov.save_model(float_model, str(folder / "model.xml"), compress_to_fp16=False))
        return ExportResult(self.backend, "model.xml", inputs, outputs, info, float_twin=twin)


_GUARD_WHY = ("OpenVINO's ReverseInputChannelsFusion folds a channel-permuting Gather into the next "
              "Convolution's weights with the permutation instead of its inverse (right only for "
              "involutions such as RGB<->BGR); a negative Gather axis keeps the pass off")


def guard_permutation_gathers(model) -> int:
    """Rewrite permutation Gathers' axis to its negative form in place; return how many.

    OpenVINO 2026.4's ReverseInputChannelsFusion (MOC, run by ``convert_model`` and when compiling)
    takes any Gather whose constant indices are a permutation of the whole axis for an RGB<->BGR
    swap and folds it into the following Convolution as ``W[:, order]``; for a permutation that is
    not its own inverse (ShuffleNet's channel shuffle) the right fold is ``W[:, argsort(order)]``,
    so the result is silently wrong (measured: logits max abs error 4.0 on shufflenetv2 at 64x64,
    cosine 0.62).  The pass skips a negative axis, which ONNX defines as the same axis.
    """
    import numpy as np
    import onnx

    from lightdeploy.exporters.onnx import graph_constants

    consts = graph_constants(model.graph)
    ranks = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    count = 0
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in ranks or node.input[1] not in consts:
            continue
        indices = consts[node.input[1]]
        axis = next((a for a in node.attribute if a.name == "axis"), None)
        if indices.ndim != 1 or indices.size < 2 or np.unique(indices).size != indices.size:
            continue
        if axis is None:
            axis = node.attribute.add()
            axis.name, axis.type, axis.i = "axis", onnx.AttributeProto.INT, 0
        if axis.i >= 0:
            axis.i -= ranks[node.input[0]]
            count += 1
    return count


def shuffle_gathers_to_op(model) -> int:
    """Replace every channel-shuffle Gather (constant indices = ``shuffle_permutation(C, g)`` on the
    channel axis) by OpenVINO's own ShuffleChannels op, in place; return how many.

    Same values, bit for bit (both only move data), but the CPU plugin runs a channel Gather with its
    reference kernel (``ref_any``), in int8 too, while ShuffleChannels has a JIT one.  Measured at
    224x224, 2 threads, best of 7 interleaved rounds of 50, Gather -> ShuffleChannels: shufflenetv2
    fp32 4.41 -> 4.20 ms, int8 3.31 -> 3.08 ms; snet146 fp32 5.14 -> 4.54 ms, int8 3.67 -> 3.49 ms.
    It also keeps the shuffle away from ReverseInputChannelsFusion (``guard_permutation_gathers``).
    """
    import numpy as np
    from openvino import opset13 as ops

    from lightdeploy.ops.channel_shuffle import shuffle_permutation

    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather" or op.get_input_partial_shape(0).rank.get_length() != 4:
            continue
        indices, axis = (op.input_value(i).get_node() for i in (1, 2))
        if indices.get_type_name() != "Constant" or axis.get_type_name() != "Constant":
            continue
        if int(axis.get_data().ravel()[0]) not in (1, -3):
            continue
        perm = indices.get_data().ravel()
        # A shuffle of g groups sends input channel C/g to output 1: the only candidate to verify.
        groups = len(perm) // int(perm[1]) if len(perm) > 2 and perm[1] > 1 else 0
        if groups < 2 or not np.array_equal(perm, shuffle_permutation(len(perm), groups)):
            continue
        shuffle = ops.shuffle_channels(op.input_value(0), 1, groups)
        shuffle.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(shuffle.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def stable_topk(model) -> int:
    """Make every TopK keep equal values in index order, as ONNX's TopK (and ONNX Runtime) does.

    OpenVINO's ONNX frontend emits TopK-11 with ``stable=False``; on exact ties (e.g. the detectors'
    saturated proposal scores) it then picks other indices than eager and ONNX Runtime (measured on
    thundernet_snet49 at 64x64 against ONNX Runtime: boxes off by 1.1, 8.0 and 64 px on the first
    three photographs; with stable TopK 5 of 6 photographs match to 0.005 px, the sixth holds a
    near-tie in float, not an exact tie).

    But ``stable=True`` makes the CPU plugin use its O(n * k) bubble sort instead of the bitonic
    sort: ThunderNet 320x320's TopK 10000->2000 and 16000->1000 took 49 + 42 ms of its 103 ms
    (2 threads; 0.4 + 0.3 ms unstable).  So a TopK that ``_keyed_stable_topk`` can rewrite gets the
    same stable result from unstable TopKs (0.7 + 0.5 ms; ThunderNet bench median 105 -> 13.2 ms,
    ONNX Runtime 11.1; outputs bit-identical to ``stable=True``); the rest get ``stable=True``.
    """
    count = 0
    for op in model.get_ordered_ops():
        attrs = op.get_attributes()
        if op.get_type_name() != "TopK" or "stable" not in attrs:
            continue
        if _keyed_stable_topk(op):
            count += 1
        elif not attrs["stable"]:
            op.set_attribute("stable", True)
            count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def _keyed_stable_topk(op) -> bool:
    """Replace a TopK (sort by value, last axis, static length, constant k > 1) with unstable TopKs.

    An unstable TopK gives the right values (tied values are equal); the stable indices are those of
    the k smallest integer keys ``rank * n + index``, where rank is the dense rank of the value among
    the k top values (k for values below them).  The keys are distinct, so an unstable TopK on them
    is exact: order by value, ties by index, and a tie at the k-th value is cut in index order.
    """
    import numpy as np
    import openvino.opset15 as ops

    attrs = op.get_attributes()
    x = op.input_value(0)
    shape, k_node = x.get_partial_shape(), op.input_value(1).get_node()
    if (attrs["sort"] != "value" or shape.rank.is_dynamic or not shape[-1].is_static
            or k_node.get_type_name() != "Constant" or attrs["axis"] not in (-1, shape.rank.get_length() - 1)):
        return False
    n, k = shape[-1].get_length(), int(k_node.get_data().reshape(-1)[0])
    if not 1 < k <= n or (k + 1) * n >= 2**31:  # k = 1 is O(n) anyway; keys must fit in int32
        return False

    def i32(v):
        return ops.constant(np.array(v, dtype=np.int32))

    def last(t, start, stop):
        return ops.slice(t, i32([start]), i32([stop]), i32([1]), i32([-1]))

    fast = ops.topk(x, ops.constant(np.int64(k)), -1, attrs["mode"], "value", "i32", False)
    values, where = fast.output(0), fast.output(1)
    changes = ops.convert(ops.not_equal(last(values, 1, k), last(values, 0, k - 1)), "i32")
    zero = ops.broadcast(i32(0), ops.shape_of(last(values, 0, 1), "i32"))
    rank = ops.concat([zero, ops.cumsum(changes, i32(-1))], -1)  # dense rank of the top k values
    ranks = ops.scatter_elements_update(ops.broadcast(i32(k), ops.shape_of(x, "i32")), where, rank, i32(-1))
    # Values equal to the k-th one that the unstable TopK left out compete for its last places.
    tied = ops.equal(x, ops.gather(values, i32([k - 1]), i32(-1)))
    ranks = ops.select(tied, ops.gather(rank, i32([k - 1]), i32(-1)), ranks)
    keys = ops.add(ops.multiply(ranks, i32(n)), i32(np.arange(n)))
    order = ops.topk(keys, ops.constant(np.int64(k)), -1, "min", "value", attrs["index_element_type"], False)
    fast.set_friendly_name(op.get_friendly_name() + "/values")
    order.set_friendly_name(op.get_friendly_name() + "/stable_indices")
    op.output(0).replace(values)
    op.output(1).replace(order.output(1))
    return True


def quantize_int8(model, job: ExportJob, *, ignored_types: tuple[str, ...] | None = None,
                  preset: str | None = None, subset_size: int | None = None, **nncf_kwargs):
    """NNCF post-training quantisation of an ov.Model on the calibration set; returns (model, info).

    ``ignored_types`` / ``preset`` / ``subset_size`` default to the measured module settings; they
    are parameters so the measurement (bench/openvino_targets.py --sweep) can vary them.
    """
    nncf = require("nncf", package="nncf", extra="openvino", purpose="OpenVINO INT8 quantisation")
    from lightdeploy.calibration import calibration_set

    ignored_types = IGNORED_TYPES if ignored_types is None else tuple(ignored_types)
    preset = preset or PRESET
    calib = calibration_set(job.preprocessing(), batch=job.options.batch, calib_dir=job.options.calib_dir)
    if not len(calib):
        raise UsageError(
            f"The calibration set has no batch of {job.options.batch} images "
            f"({calib.description.get('images', 0)} images found); give more images with --calib DIR."
        )
    present = {op.get_type_name() for op in model.get_ordered_ops()}
    ignored = sorted(t for t in ignored_types if t in present)  # NNCF rejects types absent from the model
    subset = min(subset_size or len(calib), len(calib))
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    input_name = job.input_name
    measured = "advanced_parameters" not in nncf_kwargs  # the module's settings unless a sweep passes its own
    if measured:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        nncf_kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, ACTIVATION_RANGE.upper()),
        )
        nncf_kwargs.setdefault("fast_bias_correction", FAST_BIAS_CORRECTION)
    t0 = time.perf_counter()
    with quiet("nncf"):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calib.batches, lambda x: {input_name: x}),
            preset=presets[preset],
            subset_size=subset,
            ignored_scope=nncf.IgnoredScope(types=ignored) if ignored else None,
            **nncf_kwargs,
        )
    info = {
        "quantizer": f"nncf {_version('nncf')} post-training quantisation",
        "preset": preset,
        "activation_range": ACTIVATION_RANGE if measured else "advanced_parameters given",
        "fast_bias_correction": nncf_kwargs.get("fast_bias_correction", True),
        "calibration": {**calib.description, "batches_used": subset},
        "ignored_scope": {"types": ignored},
        "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops()),
        "quantize_seconds": round(time.perf_counter() - t0, 2),
    }
    return quantized, info


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"




EXPORTER = OpenVinoExporter()
