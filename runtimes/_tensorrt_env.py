"""The TensorRT environment, shared by the runtime and the exporter: importing ``tensorrt`` and
cuda-python with errors that say what to install, the GPU's identity, and the artifact's file names.

Torch-free (``lightdeploy.runtimes`` runs on devices without torch); ``tensorrt`` and ``cuda`` are
imported when called, never at module import.
"""

from __future__ import annotations

from lightdeploy.errors import MissingDependencyError

# File names inside a TensorRT artifact.
PLAN_FILE = "trt_plan.json"
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"

TRT_INSTALL = (
    "pip install 'lightdeploy[trt]' --extra-index-url https://pypi.nvidia.com "
    "(TensorRT's libraries come from NVIDIA's index)"
)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorRT engines need the Python package 'tensorrt' (TensorRT 10) and an NVIDIA GPU with its "
            f"CUDA driver; 'tensorrt' is not installed here ({exc}). On the GPU machine: {TRT_INSTALL}. "
            "TensorRT does not run on CPU-only machines: there, `lightdeploy export --to trt` writes a build "
            "plan to build on the target."
        ) from None
    return trt


def import_cudart():
    """cuda-python's runtime API (``cuda.bindings.runtime`` in cuda-python >= 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise MissingDependencyError(
                f"TensorRT engines need cuda-python for GPU memory and streams ({exc}). {TRT_INSTALL}."
            ) from None
    return cudart


def cuda_check(result):
    """cuda-python returns (err, *values): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = getattr(err, "value", err)
    if code != 0:
        raise MissingDependencyError(f"CUDA error {err}: the GPU or its driver is not usable here.")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def gpu_info(device: int = 0) -> dict:
    cudart = import_cudart()
    count = cuda_check(cudart.cudaGetDeviceCount())
    if not count:
        raise MissingDependencyError("TensorRT needs an NVIDIA GPU; cuda-python finds no CUDA device here.")
    props = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {
        "name": name,
        "compute_capability": f"{props.major}.{props.minor}",
        "device": device,
        "memory_bytes": int(props.totalGlobalMem),
    }


def trt_environment() -> tuple[bool, str]:
    """(True, description) where TensorRT and a CUDA device are both present; else (False, why not)."""
    try:
        trt = import_tensorrt()
        gpu = gpu_info()
    except MissingDependencyError as exc:
        return False, str(exc)
    return True, f"TensorRT {trt.__version__} on {gpu['name']} (compute {gpu['compute_capability']})"
