"""ONNX Runtime backend (the reference runtime): CPU execution provider, feeds by input name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import require
from lightdeploy.runtimes.base import RuntimeBase, TensorSpec, onnx_type_to_numpy


class OnnxRuntimeBackend(RuntimeBase):
    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, *, fuse_quantized: bool = True):
        """``model``: an .onnx file, or a serialised ModelProto (graphs made in memory, e.g. estimates).

        ``fuse_quantized=False`` keeps QuantizeLinear / DequantizeLinear as separate float ops instead of
        fusing them into ONNX Runtime's int8 kernels: exact fake-quantisation, independent of the host
        CPU (on x86 without VNNI the fused u8s8 kernels saturate; docs/measurements.md#qdq-estimate).
        """
        ort = require("onnxruntime", package="onnxruntime", extra="onnx", purpose="Running ONNX artifacts")
        options = ort.SessionOptions()
        if not fuse_quantized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        super().__init__(
            [_spec(i) for i in self._session.get_inputs()], [_spec(o) for o in self._session.get_outputs()]
        )

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds)))


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, onnx_type_to_numpy(node.type))


def open_artifact(folder: Path, manifest: dict, threads: int | None = None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(folder / manifest["backend_file"], threads=threads)
