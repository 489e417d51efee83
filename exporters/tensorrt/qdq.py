"""INT8 for TensorRT engines: explicit quantisation, as TensorRT 10 recommends.

The QDQ ONNX comes from ONNX Runtime's ``quant_pre_process`` + ``quantize_static``: QDQ format,
symmetric INT8 activations (MinMax calibration) and per-channel symmetric weights on the compute
layers, biases left in float (TensorRT dequantises INT8/FP8/INT4 only, not ONNX Runtime's INT32
biases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.exporters.tensorrt.fp16 import COMPUTE_OPS

QDQ_FILE = "model.qdq.onnx"


def _reader(input_name: str, batches):
    """An onnxruntime.quantization.CalibrationDataReader over the calibration batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = [{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
            self._items = iter(self._feeds)

        def get_next(self):
            return next(self._items, None)

        def rewind(self):
            self._items = iter(self._feeds)

    return Reader()


def make_qdq(onnx_path: Path, qdq_path: Path, input_name: str, batches, workdir: Path) -> dict:
    """Write the explicit-quantisation (QDQ) model TensorRT builds INT8 engines from."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / ".model.pre.onnx"
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    reader = _reader(input_name, batches)
    try:
        quantize_static(
            str(pre),
            str(qdq_path),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(COMPUTE_OPS),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    finally:
        pre.unlink(missing_ok=True)
        for leftover in workdir.glob("*augmented*.onnx"):
            leftover.unlink()
    import onnx

    qdq = onnx.load(str(qdq_path))
    counts = {op: sum(1 for n in qdq.graph.node if n.op_type == op) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "file": qdq_path.name,
        "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
        "format": "QDQ",
        "activations": "INT8 symmetric, per tensor (MinMax calibration)",
        "weights": "INT8 symmetric, per channel",
        "bias": "float (not quantised)",
        "quantized_op_types": list(COMPUTE_OPS),
        "calibration_batches": len(batches),
        **counts,
    }
