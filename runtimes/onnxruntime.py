"""ONNX Runtime backend (the reference runtime): CPU execution provider, feeds by input name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import require
from lightdeploy.runtimes.base import RuntimeBase, TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(bool)": "bool"}


class OnnxRuntimeBackend(RuntimeBase):
    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", package="onnxruntime", extra="onnx", purpose="Running ONNX artifacts")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        super().__init__(
            [_spec(i) for i in self._session.get_inputs()], [_spec(o) for o in self._session.get_outputs()]
        )

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds)))


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, _ORT_TYPES.get(node.type, node.type))


def open_artifact(folder: Path, manifest: dict, threads: int | None = None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(folder / manifest["backend_file"], threads=threads)
