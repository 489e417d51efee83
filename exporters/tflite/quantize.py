"""TFLite reduced precision: ai-edge-quantizer applied to the float flatbuffer (one float conversion
serves every precision).

- fp16: FLOAT_CASTING of the weights (litert-torch's own ``full_fp16_recipe``); activations stay FP32.
- int8: full-integer static quantisation, ``static_wi8_ai8`` (int8 per-channel symmetric weights, int8
  per-tensor asymmetric activations) with INPUT and OUTPUT left float, so QUANTIZE / DEQUANTIZE sit only
  at the edges; chosen over litert-torch's PT2E quantiser, which was slower than fp32 here and either
  made the input int8 or left fake-quant pairs (docs/measurements.md#tflite-int8).  Calibration ranges
  are the global min / max over the set (``_calibrate``).  Then accuracy control
  (``lightdeploy.int8control``): when the model misses the target on the validation set, the quantizer's
  default moving-average ranges are measured too and the better kept, then the most sensitive weighted
  ops are kept float.
"""

from __future__ import annotations

import os
import re

from lightdeploy import int8control
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
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
RANGES = "min_max"
# Measured when the shipped ranges miss the accuracy-control target (lightdeploy.int8control).
ALTERNATIVE_RANGES = ("moving_average",)
RANGE_DESCRIPTIONS = {
    "min_max": "global min/max over the calibration set (qsv_utils.min_max_update)",
    "moving_average": "the quantizer's default: moving average (0.95) of the per-batch min/max",
}


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


def _recipe(job: ExportJob, float_scopes: tuple[str, ...]):
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    names = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", names.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    no_quant = algorithm_manager.AlgorithmName.NO_QUANTIZE
    for op in ("INPUT", "OUTPUT", *INT8_FLOAT_OPS):
        manager.add_quantization_config(".*", names(op), algorithm_key=no_quant)
    for regex in float_scopes:  # the last matching scope wins (RecipeManager.get_quantization_configs)
        manager.add_quantization_config(regex, names.ALL_SUPPORTED, algorithm_key=no_quant)
    return manager


def _quantize(model: bytes, job: ExportJob, qsvs, float_scopes: tuple[str, ...]) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(model)
    q.load_quantization_recipe(_recipe(job, float_scopes).get_quantization_recipe())
    with quiet(stderr=True):
        out = q.quantize(qsvs, enable_progress_report=False).quantized_model
    return retarget_signature_outputs(bytes(out))


class _Feeds:
    """The calibrator's signature inputs over ``batches``, made when iterated (the batches report their
    progress then); re-iterable with a length, as the calibrator sizes its work first."""

    def __init__(self, input_name: str, batches):
        self.input_name, self.batches = input_name, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return ({self.input_name: b} for b in self.batches)


def _calibrate(model: bytes, job: ExportJob, batches, float_scopes, ranges: str):
    """Tensor ranges over the calibration batches.  "min_max": global min / max over the set (the shipped
    setting: the quantizer's default 0.95 moving average weighs the first batches most and clipped
    BiSeNet's later, wider ranges); "moving_average": the quantizer's default.  Quantizer.calibrate's
    steps otherwise; accuracy control re-quantises from these ranges with more ops float (a superset of
    ``float_scopes``, so every tensor it needs is recorded)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    update = {"min_max": qsv_utils.min_max_update, "moving_average": qsv_utils.moving_average_update}[ranges]
    with quiet(stderr=True):
        run = calibrator.Calibrator(model, num_threads=os.cpu_count() or 1, qsv_update_func=update)
        run.calibrate({SIGNATURE: _Feeds(job.input_name, batches)}, _recipe(job, float_scopes))
    return run.get_model_qsvs()


def quantize_int8(model: bytes, job: ExportJob) -> tuple[bytes, dict]:
    from lightdeploy.calibration import calibration_set

    calib = calibration_set(job.preprocessing(), batch=job.options.batch, calib_dir=job.options.calib_dir)
    float_scopes = DETECTOR_FLOAT_SCOPES if job.spec.task == "detect" else ()
    qsvs = _calibrate(model, job, calib.counted(job.count), float_scopes, RANGES)
    out, retargeted = _quantize(model, job, qsvs, float_scopes)
    control, ranges = None, RANGES
    if int8control.controlled(job):
        out, retargeted, control = accuracy_control(model, out, retargeted, job, qsvs, calib, float_scopes)
        ranges = control.get("ranges", RANGES)
    return out, {
        "quantizer": "ai-edge-quantizer",
        "recipe": f"static_wi8_ai8 ({ranges} ranges; int8 per-channel weights, int8 per-tensor activations), "
        "float input/output",
        "ranges": RANGE_DESCRIPTIONS[ranges],
        "float_op_types": list(INT8_FLOAT_OPS),
        "float_scopes": list(float_scopes),
        "accuracy_control": control,
        "signature_outputs_retargeted": retargeted,
        "calibration": {**calib.description, "batches": len(calib)},
    }


def _runner(model: bytes, job: ExportJob):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=os.cpu_count() or 1)
    runner = interpreter.get_signature_runner(SIGNATURE)

    def run(x):
        out = runner(**{job.input_name: x})
        # every 4-D output leaves the file channel-last (convert.py); the reference is eager's NCHW
        return [o.transpose(0, 3, 1, 2) if o.ndim == 4 else o for o in (out[name] for name in job.output_names)]

    return run


def weighted_op_scopes(model: bytes) -> dict[str, str]:
    """{exact scope regex: module path} of the float model's weighted ops (conv, depthwise, linear)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    out = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in WEIGHTED_OPS:
            names = [tensors[i] for i in op["outputs"] if i >= 0 and tensors.get(i)]
            if names:
                out["^" + re.escape(";".join(names) + ";") + "$"] = module_path(names[0])
    return out


def module_path(tensor_name: str) -> str:
    """'features.7.conv.2' from litert-torch's tensor name (".../pkg.Class_attr/..." per module level; a
    fused op's name lists its modules, the weighted one last; the wrapper's own levels dropped), or the
    name itself when it names no module (the signature's output)."""
    paths = [seg for seg in tensor_name.split(";") if "/" in seg]
    if not paths:
        return tensor_name
    # each level is "pkg.mod.Class_attr": the attribute follows the class's first "_" (attributes
    # such as spatial_path have their own)
    levels = (seg.rsplit(".", 1)[-1] for seg in paths[-1].split("/")[2:])
    return ".".join(level.split("_", 1)[1] for level in levels if "_" in level)


def accuracy_control(model: bytes, out: bytes, retargeted, job: ExportJob, qsvs, calib, float_scopes):
    """The shipped ranges' model when it meets the target (``lightdeploy.int8control``); else the better
    of the range settings measured, with its most sensitive weighted ops kept float when it still misses."""
    validation = int8control.validation_set(job)
    start = validation.worst(_runner(out, job))
    decision = int8control.decision(start)
    if start >= int8control.TARGET_COSINE:
        return out, retargeted, decision
    tried = [(start, RANGES, qsvs, out, retargeted)]
    for ranges in ALTERNATIVE_RANGES:
        alt_qsvs = _calibrate(model, job, calib.counted(job.count), float_scopes, ranges)
        alt, alt_retargeted = _quantize(model, job, alt_qsvs, float_scopes)
        tried.append((validation.worst(_runner(alt, job)), ranges, alt_qsvs, alt, alt_retargeted))
    score, ranges, qsvs, out, retargeted = max(tried, key=lambda t: t[0])
    decision["range_settings"] = [{"ranges": t[1], "worst_cosine": round(t[0], 4)} for t in tried]
    decision["ranges"] = ranges
    if score >= int8control.TARGET_COSINE:
        return out, retargeted, decision
    scopes = weighted_op_scopes(model)

    def measure(chosen) -> float:
        return validation.worst(_runner(_quantize(model, job, qsvs, (*float_scopes, *chosen))[0], job))

    restored = int8control.restore_float(measure, list(scopes), score, count=job.count)
    chosen = restored["float_modules"]
    decision.update(restored)
    decision["float_modules"] = [scopes[s] for s in chosen]
    decision["sensitivity"] = {scopes[s]: v for s, v in restored["sensitivity"].items()}
    decision["steps"] = [{**st, "float": [scopes[s] for s in st["float"]]} for st in restored["steps"]]
    if chosen:
        out, retargeted = _quantize(model, job, qsvs, (*float_scopes, *chosen))
    return out, retargeted, decision
