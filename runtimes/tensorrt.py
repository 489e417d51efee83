"""TensorRT backend: a serialised engine run with the TensorRT 10 Python API and cuda-python (no torch).

Tensors are bound by name (``set_tensor_address``), input shapes set per call for dynamic dims,
memory and streams managed with cuda-python's runtime API, and the work enqueued with
``execute_async_v3``.

Threads: one engine, and one execution context with its own CUDA stream and device buffers per call
in flight (a pool of up to ``MAX_CONTEXTS``, made as concurrent calls need them), as TensorRT's
threading guide prescribes: a context holds per-inference state (shapes, bindings), so two threads
never share one, while they share the engine's weights.  The CUDA device is set on the calling
thread every call (the current device is per thread).  TensorRT has no run-time mode knob (tactics
are chosen at build), so both modes give the same pool.

Engines are specific to the TensorRT version and the GPU: the manifest records both when the engine is
built (``lightdeploy build``), and loading on another version or GPU is a clear error that says how to
rebuild, never a crash.  A build-plan artifact (exported on a machine without a GPU) is built the
first time it is loaded on a GPU machine and the engine cached (``$LIGHTDEPLOY_CACHE`` or
``~/.cache/lightdeploy/tensorrt``, keyed by the ONNX, builder settings, TensorRT version and GPU);
a cached engine is reused only when its recorded sha256, TensorRT version and GPU match, else rebuilt.
Nothing heavy is imported at module import: ``tensorrt`` and ``cuda`` are imported when an artifact
is opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, MissingDependencyError, UsageError
from lightdeploy.runtimes._tensorrt_env import PLAN_FILE, cuda_check, gpu_info, import_cudart, import_tensorrt
from lightdeploy.runtimes.base import Pool, RuntimeBase, TensorSpec, check_mode
from lightdeploy.runtimes.manifest import sha256

MAX_CONTEXTS = 8  # execution contexts (each with its activation memory on the GPU) per loaded engine


def device_index(device) -> int:
    """None, "GPU", "cuda" -> 0; "GPU:1", "GPU.1", "cuda:1" or 1 -> 1."""
    if device is None:
        return 0
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return device
    m = re.fullmatch(r"(?:gpu|cuda)(?:[:.](\d+))?", str(device).strip().lower())
    if not m:
        raise UsageError(f"TensorRT runs on an NVIDIA GPU: give device as 'GPU', 'GPU:1' or 'cuda:1'; got {device!r}.")
    return int(m.group(1) or 0)


class _Context:
    """An execution context with its own stream and device buffers (grown as shapes need)."""

    def __init__(self, engine, cudart):
        self.context = engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)


class TensorRTBackend(RuntimeBase):
    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        expected: dict | None = None,
        *,
        mode: str = "latency",
        device=None,
        rebuild_hint: str = "",
    ):
        """``expected``: the engine's build facts from the manifest (tensorrt_version, gpu), checked here."""
        check_mode(mode)
        trt = import_tensorrt()
        self._trt = trt
        self._cudart = import_cudart()
        self._device = device_index(device)
        engine_path = Path(engine_path)
        gpu = gpu_info(self._device)
        hint = rebuild_hint or f"rebuild it here with `lightdeploy build {engine_path.parent}`"
        check_engine_facts(engine_path.name, expected or {}, trt.__version__, gpu, hint)
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        cuda_check(self._cudart.cudaSetDevice(self._device))
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(
                f"TensorRT {trt.__version__} could not deserialise {str(engine_path)!r} (a corrupt file, or an "
                f"engine for another TensorRT version or GPU); {hint}."
            )
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            spec = TensorSpec(name, shape, dtype)
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        self._contexts = Pool(lambda: _Context(self._engine, self._cudart), MAX_CONTEXTS, self._free_context)
        self.parallelism = MAX_CONTEXTS
        super().__init__(
            inputs,
            outputs,
            {
                "mode": mode,
                "device": f"GPU:{self._device} ({gpu['name']}, compute {gpu['compute_capability']})",
                "tensorrt_version": trt.__version__,
                "concurrency": f"one execution context + CUDA stream per call in flight (up to {MAX_CONTEXTS})",
            },
        )

    def _device_buffer(self, slot: _Context, name: str, nbytes: int) -> int:
        ptr, size = slot.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self._cudart.cudaFree(ptr))
            ptr = int(cuda_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            slot.buffers[name] = (ptr, nbytes)
        return ptr

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart.cudaSetDevice(self._device))  # per thread in CUDA
        with self._contexts.take() as slot:
            context, stream = slot.context, slot.stream
            for spec in self.inputs:
                arr = feeds[spec.name]
                context.set_input_shape(spec.name, tuple(arr.shape))
                ptr = self._device_buffer(slot, spec.name, arr.nbytes)
                cuda_check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream))
                context.set_tensor_address(spec.name, ptr)
            results = {}
            for spec in self.outputs:
                shape = tuple(context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(
                        f"Output {spec.name!r} has a data-dependent shape {shape}; this runtime "
                        "needs outputs of known size (the detectors' fixed-size outputs)."
                    )
                out = np.empty(shape, dtype=np.dtype(spec.dtype))
                context.set_tensor_address(spec.name, self._device_buffer(slot, spec.name, out.nbytes))
                results[spec.name] = out
            if not context.execute_async_v3(int(stream)):
                raise ArtifactError("TensorRT failed to enqueue the engine (execute_async_v3 returned False).")
            for name, out in results.items():
                cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, slot.buffers[name][0], out.nbytes, d2h, stream))
            cuda_check(cudart.cudaStreamSynchronize(stream))
            return results

    def _free_context(self, slot: _Context) -> None:
        for ptr, _ in slot.buffers.values():
            self._cudart.cudaFree(ptr)
        slot.buffers = {}
        if slot.stream is not None:
            self._cudart.cudaStreamDestroy(slot.stream)
            slot.stream = None
        slot.context = None

    def _close_impl(self) -> None:
        self._contexts.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def check_engine_facts(name: str, expected: dict, trt_version: str, gpu: dict, hint: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU (compute capability, model name)."""
    built_version = expected.get("tensorrt_version")
    if built_version and built_version != trt_version:
        raise ArtifactError(
            f"The engine {name} was built with TensorRT {built_version}; TensorRT {trt_version} is installed. "
            f"Engines are specific to the TensorRT version (and GPU): install tensorrt=={built_version}, or {hint}."
        )
    built_gpu = expected.get("gpu") or {}
    if built_gpu and (
        built_gpu.get("compute_capability") != gpu["compute_capability"] or built_gpu.get("name") != gpu["name"]
    ):
        raise ArtifactError(
            f"The engine {name} was built for {built_gpu.get('name')} (compute {built_gpu.get('compute_capability')}); "
            f"this GPU is {gpu['name']} (compute {gpu['compute_capability']}). Engines are specific to the GPU: {hint}."
        )


def cache_dir() -> Path:
    return Path(os.environ.get("LIGHTDEPLOY_CACHE", Path.home() / ".cache" / "lightdeploy")) / "tensorrt"


def _engine_for_plan(folder: Path, device: int) -> tuple[Path, dict, str]:
    """(engine, its facts, how it was found) for a plan artifact on this GPU machine: the cached engine
    when its record matches (sha256, TensorRT version, GPU), else a fresh build into the cache."""
    from lightdeploy.runtimes._tensorrt_build import build_engine, engine_key

    trt = import_tensorrt()
    gpu = gpu_info(device)
    plan = json.loads((folder / PLAN_FILE).read_text())  # hashed with the artifact (verified before this)
    key = engine_key(folder, plan, trt.__version__, gpu)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    engine, record_path = cache / f"{key}.engine", cache / f"{key}.json"
    facts = {"tensorrt_version": trt.__version__, "gpu": gpu}
    why = "built now (no cached engine)"
    if engine.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = {}
        if record.get("sha256") == sha256(engine) and all(record.get(k) == v for k, v in facts.items()):
            return engine, facts, f"cached engine {engine.name} reused (sha256, TensorRT version and GPU match)"
        why = "rebuilt (the cached engine did not match its record)"
    tmp = cache / f".{key}.{os.getpid()}.engine"
    build_engine(folder / plan["onnx"], plan, tmp, cache / f"{key}.timing.cache")
    os.replace(tmp, engine)
    tmp_record = cache / f".{key}.{os.getpid()}.json"
    tmp_record.write_text(json.dumps({**facts, "sha256": sha256(engine), "plan": str(folder.name)}, indent=2))
    os.replace(tmp_record, record_path)
    return engine, facts, why


def opened_files(folder: Path, manifest: dict) -> list[str]:
    """The engine; or, for a build plan, the plan and the ONNX it names (the engine is built from them)."""
    if manifest["backend_file"] != PLAN_FILE:
        return [manifest["backend_file"]]
    try:
        plan = json.loads((Path(folder) / PLAN_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{str(folder)!r}: the build plan {PLAN_FILE} cannot be read ({exc}). Re-export it."
        ) from None
    return [PLAN_FILE, plan.get("onnx")]


def open_artifact(
    folder: Path, manifest: dict, threads: int | None = None, mode: str = "latency", device=None
) -> TensorRTBackend:
    """``threads`` is ignored (the GPU runs the engine)."""
    folder = Path(folder)
    index = device_index(device)
    if manifest["backend_file"] == PLAN_FILE:
        try:
            engine, facts, how = _engine_for_plan(folder, index)
        except MissingDependencyError as exc:
            raise MissingDependencyError(
                f"{folder} is a TensorRT build plan: its engine is built on a machine with an NVIDIA GPU and "
                f"TensorRT 10 (`lightdeploy build {folder}` there, or load it there and it is built and cached). "
                f"{exc}"
            ) from None
        hint = f"delete {engine} and load again, or build the artifact with `lightdeploy build {folder}`"
        try:
            backend = TensorRTBackend(engine, facts, mode=mode, device=index, rebuild_hint=hint)
        except ArtifactError:  # a cached engine that no longer deserialises: build it once more
            engine.unlink(missing_ok=True)
            engine, facts, how = _engine_for_plan(folder, index)
            backend = TensorRTBackend(engine, facts, mode=mode, device=index, rebuild_hint=hint)
        backend.info["engine"] = f"{how}; not gated itself (`lightdeploy build` gates an engine)"
        return backend
    expected = manifest.get("backend_info", {}).get("engine") or {}
    return TensorRTBackend(folder / manifest["backend_file"], expected, mode=mode, device=index)
