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

# NNCF preset MIXED (symmetric weights, asymmetric activations, NNCF's default).  Measured at 224x224,
# 2 threads, one run: PERFORMANCE (symmetric activations) was no faster (mobilenetv2 10.0-11.6 vs
# 11.3-11.4 ms, shufflenetv2 7.2-7.3 vs 6.6-7.6 ms; OV fp32 24-25 / 12-13 ms) and no more accurate.
PRESET = "mixed"


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
                                                      "topk_made_stable": stable_topk(model)}}
        if guarded:
            info["onnx"]["rewrites"] = {"gather_axis_made_negative": guarded, "why": _GUARD_WHY}
        if precision == "int8":
            model, info["int8"] = quantize_int8(model, job)
        # FP16 weights only when asked: OpenVINO's save_model compresses to FP16 by default.
        ov.save_model(model, str(workdir / "model.xml"), compress_to_fp16=precision == "fp16")
        info["openvino"].update({
            "weights": {"fp32": "fp32", "fp16": "fp16", "int8": "int8 (quantised ops), fp32 (rest)"}[precision],
            "ops": len(model.get_ordered_ops()),
            "convert_seconds": round(time.perf_counter() - t0, 2),
        })
        return ExportResult(self.backend, "model.xml", inputs, outputs, info)


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
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
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


def stable_topk(model) -> int:
    """Make every TopK keep equal values in index order, as ONNX's TopK (and ONNX Runtime) does.

    OpenVINO's ONNX frontend emits TopK-11 with ``stable=False``; on exact ties (e.g. the detectors'
    saturated proposal scores) it then picks other indices than eager and ONNX Runtime (measured on
    thundernet_snet49 at 64x64 against ONNX Runtime: boxes off by 1.1, 8.0 and 64 px on the first
    three photographs; with stable TopK 5 of 6 photographs match to 0.005 px, the sixth holds a
    near-tie in float, not an exact tie).
    """
    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "TopK" and "stable" in op.get_attributes() and not op.get_attributes()["stable"]:
            op.set_attribute("stable", True)
            count += 1
    return count


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
