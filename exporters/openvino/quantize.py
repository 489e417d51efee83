"""OpenVINO INT8: NNCF post-training quantisation of the converted ov.Model on the calibration set.

Settings, each chosen by measurement (docs/measurements.md#openvino-int8):
- preset MIXED: symmetric weights, asymmetric activations (PERFORMANCE's symmetric activations lost
  mask pixels and box F1 and were no faster);
- activation ranges from the global min / max over the calibration set: NNCF's default averages the
  per-batch min / max, a narrower range that clips;
- full bias correction (``fast_bias_correction=False``): about 2-3x the quantisation time, needed by
  the detectors' heads; the fast one where the full one would hold more activations than
  ``FULL_BIAS_CORRECTION_MAX_BYTES`` (the segmenters at 1024x1024);
- nothing ignored: no op type carries the error, and ignoring all convolutions would leave an "int8"
  artifact with no int8 in it.  A model that needs it can pass ``ignored_types``.
These ranges were chosen on random-weight networks; a trained one can lose more to them (trained
MobileNetV2: 0.98 -> 0.99 with NNCF's own ranges), so ``accuracy_control`` measures the result and,
under ``int8control.TARGET_COSINE``, the alternatives (docs/measurements.md#int8-trained).
"""

from __future__ import annotations

import itertools
import math

from lightdeploy import int8control
from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob
from lightdeploy.logs import quiet
from lightdeploy.versions import package_version

IGNORED_TYPES: tuple[str, ...] = ()
PRESET = "mixed"
ACTIVATION_RANGE = "minmax"  # nncf RangeEstimatorParametersSet.MINMAX; "mean_minmax" is NNCF's default
FAST_BIAS_CORRECTION = False  # NNCF's default is True
# Range settings measured when the shipped ones miss the accuracy-control target ("nncf_default": NNCF's
# own estimators, which clip less on trained networks than the global min / max chosen on random ones).
ALTERNATIVES = ({"activation_range": "nncf_default", "fast_bias_correction": True},)
WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
# NNCF ranks each quantised layer group (one compile, then one inference per input) on this many of the
# validation inputs, those that lost most: the metric is the minimum over inputs, so the worst few
# decide it (docs/measurements.md#openvino-restorer).
RANKING_INPUTS = 3
# Full bias correction keeps every corrected layer's activations for a fifth of the calibration batches
# (NNCF's BiasCorrection); over this estimate (the weighted ops' inputs and outputs) the export uses the
# fast one, so the DFANets at 1024x1024 fit in memory and the BiSeNets at 512x1024 keep the full one
# (docs/measurements.md#openvino-bias-correction-memory).  A fixed number, not the machine's memory, so
# an export is the same file on every machine.
FULL_BIAS_CORRECTION_MAX_BYTES = 16 * 2**30


def quantize_int8(
    model,
    job: ExportJob,
    *,
    ignored_types: tuple[str, ...] | None = None,
    preset: str | None = None,
    subset_size: int | None = None,
    **nncf_kwargs,
):
    """NNCF post-training quantisation of an ov.Model on the calibration set; returns (model, info).

    ``ignored_types`` / ``preset`` / ``subset_size`` default to the module's settings; they are
    parameters so a measurement (bench/openvino_targets.py --sweep) can vary them.
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
    dataset = nncf.Dataset(calib.counted(job.count), lambda x: {input_name: x})
    own_settings = "advanced_parameters" not in nncf_kwargs  # a sweep may pass its own
    held = full_bias_correction_bytes(model, job.options.batch, subset)
    if own_settings:
        nncf_kwargs["advanced_parameters"] = _range_parameters(ACTIVATION_RANGE)
        nncf_kwargs.setdefault("fast_bias_correction", FAST_BIAS_CORRECTION or held > FULL_BIAS_CORRECTION_MAX_BYTES)
    common = {
        "preset": presets[preset],
        "subset_size": subset,
        "ignored_scope": nncf.IgnoredScope(types=ignored) if ignored else None,
    }
    control = own_settings and int8control.controlled(job)
    float_model = model.clone() if control else None  # NNCF may rewrite the model it is given
    with quiet("nncf"):
        quantized = nncf.quantize(model, dataset, **common, **nncf_kwargs)
    info = {
        "quantizer": f"nncf {package_version('nncf') or '?'} post-training quantisation",
        "preset": preset,
        "activation_range": ACTIVATION_RANGE if own_settings else "advanced_parameters given",
        "fast_bias_correction": nncf_kwargs.get("fast_bias_correction", True),
        "full_bias_correction_estimate_gib": round(held / 2**30, 1),
        "calibration": {**calib.description, "batches_used": subset},
        "ignored_scope": {"types": ignored},
    }
    if control:
        shipped = {"activation_range": ACTIVATION_RANGE, "fast_bias_correction": info["fast_bias_correction"]}
        quantized, info["accuracy_control"] = accuracy_control(float_model, quantized, shipped, job, dataset, common)
        info.update(info["accuracy_control"].get("settings", {}))
    info["fake_quantize_nodes"] = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return quantized, info


def full_bias_correction_bytes(model, batch: int, subset: int) -> int:
    """What NNCF's full bias correction would hold: the weighted ops' input and output activations
    (float32; a dynamic dimension counts as the batch) for its fifth of the ``subset`` batches."""
    per_batch = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_OPS:
            for shape in (op.input(0).get_partial_shape(), op.output(0).get_partial_shape()):
                per_batch += 4 * math.prod(d.get_length() if d.is_static else batch for d in shape)
    return per_batch * max(int(subset * 0.2), 1)  # nncf post_training/pipeline.py: the BiasCorrection subset


def _range_parameters(activation_range: str):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if activation_range == "nncf_default":
        return AdvancedQuantizationParameters()
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, activation_range.upper())
    )


def _runner(compiled):
    return lambda x: [compiled(x)[out] for out in compiled.outputs]


def _quantized_ops(model) -> dict[str, str]:
    """Friendly name -> type of every op that reads a FakeQuantize output."""
    return {
        op.get_friendly_name(): op.get_type_name()
        for op in model.get_ordered_ops()
        if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())
    }


def _reverted(before, after) -> tuple[list[str], list[str]]:
    """The weighted ops and the other ops (Add, Concat, Multiply, ...) whose inputs are quantised in
    ``before`` and not in ``after``: NNCF reverts groups of quantisers, and a group may hold only the
    activation quantisers in front of an op without weights."""
    ops, kept = _quantized_ops(before), _quantized_ops(after)
    gone = sorted(set(ops) - set(kept))
    return [n for n in gone if ops[n] in WEIGHTED_OPS], [n for n in gone if ops[n] not in WEIGHTED_OPS]


def accuracy_control(float_model, quantized, shipped: dict, job: ExportJob, dataset, common: dict):
    """The shipped settings' artifact when it meets ``int8control.TARGET_COSINE`` on the validation set;
    else the better of the range settings in ``ALTERNATIVES``, and when that misses too,
    ``nncf.quantize_with_accuracy_control`` with the gate's metric: NNCF ranks every quantised layer by
    the metric with that layer alone reverted to float, then reverts them greedily (at most
    ``int8control.MAX_FLOAT_MODULES``).  Returns (model, the decision for the manifest)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    validation = int8control.validation_set(job)
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # as the runtime pins it

    def worst(model) -> float:
        return validation.worst(_runner(ov.compile_model(model, "CPU", config)))

    start = worst(quantized)
    decision = int8control.decision(start)
    if start >= int8control.TARGET_COSINE:
        return quantized, decision
    tried = [(start, shipped, quantized)]
    for settings in ALTERNATIVES:
        kwargs = {"advanced_parameters": _range_parameters(settings["activation_range"])}
        with quiet("nncf"):
            model = nncf.quantize(
                float_model.clone(), dataset, **common, fast_bias_correction=settings["fast_bias_correction"], **kwargs
            )
        tried.append((worst(model), settings, model))
    score, settings, best = max(tried, key=lambda t: t[0])
    decision["range_settings"] = [{**s, "worst_cosine": round(v, 4)} for v, s, _ in tried]
    decision["settings"] = settings
    if score >= int8control.TARGET_COSINE:
        return best, decision

    evaluations = itertools.count(1)

    def validation_fn(compiled, indices):
        scores = validation.scores(_runner(compiled), list(indices))
        if job.count:  # NNCF ranks every quantised layer group: many minutes on a large input
            job.count(next(evaluations), 0, "accuracy-control evaluations")
        return min(scores), scores

    with quiet("nncf"):
        restored = nncf.quantize_with_accuracy_control(
            float_model.clone(),
            dataset,
            nncf.Dataset(list(range(len(validation.inputs)))),
            validation_fn,
            max_drop=1 - int8control.TARGET_COSINE,
            fast_bias_correction=settings["fast_bias_correction"],
            advanced_quantization_parameters=_range_parameters(settings["activation_range"]),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=int8control.MAX_FLOAT_MODULES, ranking_subset_size=RANKING_INPUTS
            ),
            **common,
        )
    restored_score = worst(restored)
    float_layers, float_inputs = _reverted(best, restored)
    decision.update(
        {
            "restorer": "nncf.quantize_with_accuracy_control (metric mode, the validation worst cosine)",
            "ranking_inputs": min(RANKING_INPUTS, len(validation.inputs)),
            "float_modules": float_layers,
            "float_inputs": float_inputs,  # ops without weights whose inputs the restorer left in float
            "worst_cosine": round(restored_score, 4),
            "reached": restored_score >= int8control.TARGET_COSINE,
        }
    )
    if restored_score <= score:
        decision.update(float_modules=[], float_inputs=[], worst_cosine=round(score, 4))
        return best, decision
    return restored, decision
