"""TFLite reduced precision: ai-edge-quantizer applied to the float flatbuffer (one float conversion
serves every precision).

- fp16: FLOAT_CASTING of the weights (litert-torch's own ``full_fp16_recipe``); activations stay FP32.
- int8: full-integer static quantisation, ``static_wi8_ai8`` (int8 per-channel symmetric weights, int8
  per-tensor asymmetric activations) with INPUT and OUTPUT left float, so QUANTIZE / DEQUANTIZE sit only
  at the edges; chosen over litert-torch's PT2E quantiser, which was slower than fp32 here and either
  made the input int8 or left fake-quant pairs (docs/measurements.md#tflite-int8).  Calibration ranges
  are the global min / max over the set: the quantizer's default 0.95 moving average weighs the first
  batches most and clipped BiSeNet's later, wider ranges.
"""

from __future__ import annotations

import os

from lightdeploy.exporters.base import ExportJob
from lightdeploy.exporters.tflite.flatbuffer import SIGNATURE, retarget_signature_outputs
from lightdeploy.logs import quiet

# Op types kept float in every int8 model: none; keeping any one float moved nothing measurable.
INT8_FLOAT_OPS: tuple[str, ...] = ()
# Detectors: int8 covers the network (backbone, CEM, RPN, SAM, thin map, R-CNN head); the box
# arithmetic stays float, as in TFLite's own SSD models: the proposal and detection layers (decode,
# clip, top-k, NMS) and the ops the detector's forward runs itself between them (anchors, PSRoIAlign's
# sample coordinates and bilinear sampling).  int8 box coordinates over 320 px would step by 1.25 px,
# and an int8 DIV in NMS's IoU rejects the zero divisor that empty boxes give.  Matched on the op's
# scope, which ai-edge-quantizer builds from its output tensor names (``get_op_scope``: the names
# joined by ";", plus a trailing ";"); litert-torch names a tensor after the module path under the
# converted wrapper, so an op of the detector's own forward has the scope
# "<wrapper>/<detector class>_inner;N;" (or "..._inner;": no module below the detector's root).
DETECTOR_FLOAT_SCOPES: tuple[str, ...] = (r"(ProposalLayer|DetectionLayer)_", r"^([^/]+/[^/]+_inner(;\d+)?;)+$")


def quantize_fp16(model: bytes) -> tuple[bytes, dict]:
    """FP16 weights: what ``convert(quant_config=full_fp16_recipe())`` does after converting, without
    a second conversion."""
    from litert_torch.generative.quantize import quant_recipes
    from litert_torch.quantize import translate_recipe

    recipe = translate_recipe.translate_to_ai_edge_recipe(quant_recipes.full_fp16_recipe().generative_recipe)
    with quiet(stderr=True):
        out = translate_recipe.quantize_model(model, recipe)
    return bytes(out), {
        "quantizer": "ai-edge-quantizer",
        "recipe": "litert-torch full_fp16_recipe (FLOAT_CASTING: fp16 weights, fp32 activations)",
    }


def quantize_int8(model: bytes, job: ExportJob) -> tuple[bytes, dict]:
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    from lightdeploy.calibration import calibration_set

    calib = calibration_set(job.preprocessing(), batch=job.options.batch, calib_dir=job.options.calib_dir)
    names = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", names.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    no_quant = algorithm_manager.AlgorithmName.NO_QUANTIZE
    for op in ("INPUT", "OUTPUT", *INT8_FLOAT_OPS):
        manager.add_quantization_config(".*", names(op), algorithm_key=no_quant)
    float_scopes = DETECTOR_FLOAT_SCOPES if job.spec.task == "detect" else ()
    for regex in float_scopes:  # the last matching scope wins (RecipeManager.get_quantization_configs)
        manager.add_quantization_config(regex, names.ALL_SUPPORTED, algorithm_key=no_quant)
    q = quantizer.Quantizer(model)
    q.load_quantization_recipe(manager.get_quantization_recipe())
    with quiet(stderr=True):
        # Quantizer.calibrate without its default moving-average update (0.95 smoothing: ranges mostly the
        # first batches', later outliers clipped): global min / max over the set, as NNCF on OpenVINO.
        # Same steps as Quantizer.calibrate otherwise; ``manager`` holds the recipe just loaded into q.
        calib_run = calibrator.Calibrator(
            model, num_threads=os.cpu_count() or 1, qsv_update_func=qsv_utils.min_max_update
        )
        calib_run.calibrate({SIGNATURE: [{job.input_name: b} for b in calib.batches]}, manager)
        out = q.quantize(calib_run.get_model_qsvs(), enable_progress_report=False).quantized_model
    out, retargeted = retarget_signature_outputs(bytes(out))
    return out, {
        "quantizer": "ai-edge-quantizer",
        "recipe": "static_wi8_ai8 (min/max; int8 per-channel weights, int8 per-tensor activations), float input/output",
        "ranges": "global min/max over the calibration set (qsv_utils.min_max_update)",
        "float_op_types": list(INT8_FLOAT_OPS),
        "float_scopes": list(float_scopes),
        "signature_outputs_retargeted": retargeted,
        "calibration": {**calib.description, "batches": len(calib)},
    }
