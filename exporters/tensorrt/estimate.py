"""The CPU estimate of a TensorRT build plan: what stands in for the engine where no GPU is.

This is the TensorRT exporter's parity estimator (the hook ``lightdeploy.parity.estimate.Estimator``):
the gate runs the estimate exactly as it runs any artifact (same inputs, the float64 reference and its
float32 noise floor, the tensorrt row of the tolerance table) and marks the report as estimated.
Once ``lightdeploy build`` has made the engine, the artifact is gated on the engine itself.
"""

from __future__ import annotations

from pathlib import Path

from lightdeploy.exporters.tensorrt.fp16 import fp16_onnx
from lightdeploy.exporters.tensorrt.plan import read_plan
from lightdeploy.runtimes._tensorrt_env import PLAN_FILE
from lightdeploy.runtimes.onnxruntime import OnnxRuntimeBackend

METHODS = {
    "fp32": "the TensorRT-ready ONNX in ONNX Runtime (CPU)",
    "fp16": "the TensorRT-ready ONNX with the weights and every tensor of the non-pinned nodes rounded to "
    "float16 (the pinned FP32 layers left in float32), in ONNX Runtime (CPU): FP16 storage, rounding and "
    "overflow are modelled; FP16 accumulation inside TensorRT kernels is not",
    "int8": "the QDQ ONNX (the engine's source) in ONNX Runtime (CPU) as exact fake-quantisation (Q/DQ not "
    "fused into ONNX Runtime's int8 kernels, whose saturation on some CPUs TensorRT does not share)",
}


def estimate_plan(folder: Path, manifest: dict, threads: int | None = None):
    """(runtime, method) standing in for a plan artifact's engine; None when the artifact has its engine."""
    if manifest.get("backend_file") != PLAN_FILE:
        return None
    import onnx

    folder = Path(folder)
    plan = read_plan(folder)
    precision = plan["precision"]
    source = folder / plan["onnx"]
    if precision == "fp16":
        pinned = [p["node"] for p in plan.get("fp32_layers", [])]
        model = fp16_onnx(onnx.load(str(source)), pinned).SerializeToString()
        return OnnxRuntimeBackend(model, threads=threads), METHODS[precision]
    return OnnxRuntimeBackend(source, threads=threads, fuse_quantized=precision != "int8"), METHODS[precision]
