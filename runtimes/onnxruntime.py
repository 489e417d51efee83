"""ONNX Runtime backend (the reference runtime): execution providers in order, CPU always last.

Threads: one ``InferenceSession`` shared by every caller.  ONNX Runtime documents ``Run`` as safe to
call concurrently on one session, and it is bit-identical to single-threaded calls (8 threads x 200
calls, classifier and detector: ``tests/test_concurrency.py``), so no lock and no pool.
Modes: ``latency`` gives each call the intra-op thread pool (``threads`` threads, or ONNX Runtime's
default); ``throughput`` runs each call on its caller's thread alone (``intra_op_num_threads=1``), so
concurrent callers or ``predict_many`` fill the cores without two thread pools competing
(docs/measurements.md#runtime-threads).
Devices: ``device`` names execution providers in order (``"cuda,cpu"``, or full names such as
``"CUDAExecutionProvider"``); those not built into this onnxruntime are skipped and the CPU provider
is always appended, so a session always opens.  ``info`` records what was asked and what runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, LightdeployError, UsageError, require
from lightdeploy.runtimes.base import RuntimeBase, TensorSpec, check_mode, check_threads, onnx_type_to_numpy

CPU = "CPUExecutionProvider"
# Short names accepted for ``device`` (lower case) -> ONNX Runtime's provider names.
ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
}


def providers_for(ort, device: str | list[str] | tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """(providers to open the session with, requested providers this onnxruntime lacks)."""
    if device is None:
        return [CPU], []
    names = [d.strip() for d in device.split(",")] if isinstance(device, str) else [str(d).strip() for d in device]
    known = set(ort.get_all_providers())
    wanted = []
    for name in filter(None, names):
        full = ALIASES.get(name.lower(), name)
        if full not in known:
            raise UsageError(
                f"Unknown ONNX Runtime execution provider {name!r}. Give provider names in order, e.g. "
                f"'cuda,cpu' or 'CUDAExecutionProvider'; short names: {', '.join(sorted(ALIASES))}."
            )
        if full not in wanted:
            wanted.append(full)
    available = set(ort.get_available_providers())
    skipped = [p for p in wanted if p not in available]
    providers = [p for p in wanted if p in available and p != CPU] + [CPU]
    return providers, skipped


class OnnxRuntimeBackend(RuntimeBase):
    backend = "onnxruntime"

    def __init__(
        self,
        model: str | Path | bytes,
        threads: int | None = None,
        *,
        fuse_quantized: bool = True,
        mode: str = "latency",
        device: str | list[str] | None = None,
    ):
        """``model``: an .onnx file, or a serialised ModelProto (graphs made in memory, e.g. estimates).

        ``fuse_quantized=False`` keeps QuantizeLinear / DequantizeLinear as separate float ops instead of
        fusing them into ONNX Runtime's int8 kernels: exact fake-quantisation, independent of the host
        CPU (on x86 without VNNI the fused u8s8 kernels saturate; docs/measurements.md#qdq-estimate).
        """
        check_threads(threads)
        check_mode(mode)
        ort = require("onnxruntime", package="onnxruntime", extra="onnxruntime", purpose="Running ONNX artifacts")
        options = ort.SessionOptions()
        if not fuse_quantized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        intra = 1 if mode == "throughput" else threads
        if intra:
            options.intra_op_num_threads = intra
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers, skipped = providers_for(ort, device)
        source = model if isinstance(model, bytes) else str(model)
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except LightdeployError:
            raise
        except Exception as exc:  # onnxruntime raises its own pybind exception types for a bad file
            shown = "the in-memory model" if isinstance(model, bytes) else str(model)
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(
                f"ONNX Runtime cannot load {shown}: {cause}. The file is not a valid ONNX model for this "
                "onnxruntime; re-export the artifact."
            ) from None
        self.parallelism = (os.cpu_count() or 1) if mode == "throughput" else 1
        super().__init__(
            [_spec(i) for i in self._session.get_inputs()],
            [_spec(o) for o in self._session.get_outputs()],
            {
                "mode": mode,
                "device": device or "cpu",
                "providers": self._session.get_providers(),
                "providers_skipped": skipped,
                "intra_op_threads": intra or "onnxruntime default",
                "concurrency": "one InferenceSession shared by all threads (Run is thread-safe)",
            },
        )

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session  # one read: close() may drop it while this call runs
        if session is None:
            raise UsageError(f"This {self.backend} runtime is closed; load the artifact again to run it.")
        names = [o.name for o in self.outputs]
        return dict(zip(names, session.run(names, feeds)))

    def _close_impl(self) -> None:
        self._session = None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, onnx_type_to_numpy(node.type))


def opened_files(folder: Path, manifest: dict) -> list[str]:
    """The artifact files this backend reads (each must be listed, with its hash, in the manifest)."""
    return [manifest["backend_file"]]


def open_artifact(
    folder: Path, manifest: dict, threads: int | None = None, mode: str = "latency", device=None
) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(folder / manifest["backend_file"], threads=threads, mode=mode, device=device)
