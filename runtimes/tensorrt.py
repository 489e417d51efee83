"""TensorRT backend: a serialised engine run with the TensorRT 10 Python API and cuda-python (no torch).

Tensors are bound by name (``set_tensor_address``), input shapes set per call for dynamic dims,
memory and the stream managed with cuda-python's runtime API, and the work enqueued with
``execute_async_v3``.  The engine's TensorRT version (recorded in the manifest at build time) must
equal the installed one: engines are not portable across TensorRT versions.

A build-plan artifact (exported on a machine without a GPU) is built the first time it is loaded
on a GPU machine and the engine cached (``$LIGHTDEPLOY_CACHE`` or ``~/.cache/lightdeploy/tensorrt``,
keyed by the ONNX, builder settings, TensorRT version and GPU).  Nothing heavy is imported at module
import: ``tensorrt`` and ``cuda`` are imported when an artifact is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, MissingDependencyError
from lightdeploy.runtimes._tensorrt_env import PLAN_FILE, cuda_check, gpu_info, import_cudart, import_tensorrt
from lightdeploy.runtimes.base import RuntimeBase, TensorSpec


class TensorRTBackend(RuntimeBase):
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, expected_version: str | None = None):
        trt = import_tensorrt()
        self._trt = trt
        self._cudart = import_cudart()
        if expected_version and expected_version != trt.__version__:
            raise ArtifactError(
                f"The engine {Path(engine_path).name} was built with TensorRT {expected_version}; TensorRT "
                f"{trt.__version__} is installed. Engines are specific to the TensorRT version (and GPU): "
                f"install tensorrt=={expected_version}, or rebuild it here with `lightdeploy build "
                f"{Path(engine_path).parent}`."
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise ArtifactError(
                f"TensorRT {trt.__version__} could not deserialise {engine_path} (built by another TensorRT "
                "version or for another GPU?). Rebuild it with `lightdeploy build DIR`."
            )
        self._context = self._engine.create_execution_context()
        self._stream = cuda_check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            spec = TensorSpec(name, shape, dtype)
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        super().__init__(inputs, outputs)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self._cudart.cudaFree(ptr))
            ptr = int(cuda_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            arr = feeds[spec.name]
            self._context.set_input_shape(spec.name, tuple(arr.shape))
            ptr = self._device(spec.name, arr.nbytes)
            cuda_check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream))
            self._context.set_tensor_address(spec.name, ptr)
        results = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ArtifactError(
                    f"Output {spec.name!r} has a data-dependent shape {shape}; this runtime "
                    "needs outputs of known size (the detectors' fixed-size outputs)."
                )
            out = np.empty(shape, dtype=np.dtype(spec.dtype))
            self._context.set_tensor_address(spec.name, self._device(spec.name, out.nbytes))
            results[spec.name] = out
        if not self._context.execute_async_v3(int(self._stream)):
            raise ArtifactError("TensorRT failed to enqueue the engine (execute_async_v3 returned False).")
        for name, out in results.items():
            cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self._stream))
        cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def cache_dir() -> Path:
    return Path(os.environ.get("LIGHTDEPLOY_CACHE", Path.home() / ".cache" / "lightdeploy")) / "tensorrt"


def _engine_for_plan(folder: Path) -> tuple[Path, str]:
    """Build (first time) or find the cached engine of a plan artifact on this GPU machine."""
    import json

    from lightdeploy.runtimes._tensorrt_build import build_engine, engine_key

    trt = import_tensorrt()
    gpu = gpu_info()
    plan = json.loads((folder / PLAN_FILE).read_text())  # hashed with the artifact (read_manifest verified it)
    key = engine_key(folder, plan, trt.__version__, gpu)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    engine = cache / f"{key}.engine"
    if not engine.is_file():
        tmp = cache / f".{key}.{os.getpid()}.engine"
        build_engine(folder / plan["onnx"], plan, tmp, cache / f"{key}.timing.cache")
        os.replace(tmp, engine)
    return engine, trt.__version__


def open_artifact(folder: Path, manifest: dict, threads: int | None = None) -> TensorRTBackend:
    """``threads`` is ignored (the GPU runs the engine)."""
    folder = Path(folder)
    if manifest["backend_file"] == PLAN_FILE:
        try:
            engine, version = _engine_for_plan(folder)
        except MissingDependencyError as exc:
            raise MissingDependencyError(
                f"{folder} is a TensorRT build plan: its engine is built on a machine with an NVIDIA GPU and "
                f"TensorRT 10 (`lightdeploy build {folder}` there, or load it there and it is built and cached). "
                f"{exc}"
            ) from None
        return TensorRTBackend(engine, expected_version=version)
    expected = (manifest.get("backend_info", {}).get("engine") or {}).get("tensorrt_version")
    return TensorRTBackend(folder / manifest["backend_file"], expected_version=expected)
