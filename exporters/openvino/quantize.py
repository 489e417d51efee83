"""OpenVINO INT8: NNCF post-training quantisation of the converted ov.Model on the calibration set.

Settings, each chosen by measurement (docs/measurements.md#openvino-int8):
- preset MIXED: symmetric weights, asymmetric activations (PERFORMANCE's symmetric activations lost
  mask pixels and box F1 and were no faster);
- activation ranges from the global min / max over the calibration set: NNCF's default averages the
  per-batch min / max, a narrower range that clips;
- full bias correction (``fast_bias_correction=False``): about 2-3x the quantisation time, needed by
  the detectors' heads;
- nothing ignored: no op type carries the error, and ignoring all convolutions would leave an "int8"
  artifact with no int8 in it.  A model that needs it can pass ``ignored_types``.
"""

from __future__ import annotations

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob
from lightdeploy.logs import quiet
from lightdeploy.versions import package_version

IGNORED_TYPES: tuple[str, ...] = ()
PRESET = "mixed"
ACTIVATION_RANGE = "minmax"  # nncf RangeEstimatorParametersSet.MINMAX; "mean_minmax" is NNCF's default
FAST_BIAS_CORRECTION = False  # NNCF's default is True


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
    own_settings = "advanced_parameters" not in nncf_kwargs  # a sweep may pass its own
    if own_settings:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        nncf_kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, ACTIVATION_RANGE.upper()),
        )
        nncf_kwargs.setdefault("fast_bias_correction", FAST_BIAS_CORRECTION)
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
        "quantizer": f"nncf {package_version('nncf') or '?'} post-training quantisation",
        "preset": preset,
        "activation_range": ACTIVATION_RANGE if own_settings else "advanced_parameters given",
        "fast_bias_correction": nncf_kwargs.get("fast_bias_correction", True),
        "calibration": {**calib.description, "batches_used": subset},
        "ignored_scope": {"types": ignored},
        "fake_quantize_nodes": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops()),
    }
    return quantized, info
