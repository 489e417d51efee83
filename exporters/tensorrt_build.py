"""Building TensorRT engines from a lightdeploy build plan, with the TensorRT 10 Python API.

``trt_environment()`` says whether this machine can build (``tensorrt`` imports and cuda-python sees a
CUDA device).  ``build_engine`` parses the plan's ONNX with ``trt.OnnxParser``, applies the builder
settings (FP16/INT8 flags, ``OBEY_PRECISION_CONSTRAINTS`` with FP32 layer precisions, optimisation
profiles for dynamic dims, a timing cache kept beside the engine) and serialises the engine.
``build_artifact`` is ``lightdeploy build DIR``: build in the artifact, record the engine's TensorRT
version and GPU in the manifest, then run the parity gate on the engine.

Imports nothing heavy at module level (no torch): the runtime uses ``build_engine`` to build and
cache an engine the first time a plan artifact is loaded on a GPU machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightdeploy.errors import MissingDependencyError, UsageError

TRT_INSTALL = ("pip install 'lightdeploy[trt]' --extra-index-url https://pypi.nvidia.com "
               "(TensorRT's libraries come from NVIDIA's index)")


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
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}", "device": device,
            "memory_bytes": int(props.totalGlobalMem)}


def trt_environment() -> tuple[bool, str]:
    """(True, description) where TensorRT and a CUDA device are both present; else (False, why not)."""
    try:
        trt = import_tensorrt()
        gpu = gpu_info()
    except MissingDependencyError as exc:
        return False, str(exc)
    return True, f"TensorRT {trt.__version__} on {gpu['name']} (compute {gpu['compute_capability']})"


def build_engine(onnx_path: Path, plan: dict, engine_path: Path, cache_path: Path | None = None,
                 progress=lambda msg: None) -> dict:
    """Build ``engine_path`` from ``onnx_path`` per the plan; return facts for the manifest."""
    trt = import_tensorrt()
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # RoiAlign -> ROIAlign_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx_path.name} with TensorRT {trt.__version__}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}. "
                         "Run `lightdeploy check` on the model for the unsupported nodes.")
    settings = plan["builder"]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_bytes"]))
    config.builder_optimization_level = int(settings.get("builder_optimization_level", 3))
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    pinned = set(settings.get("layer_precisions", {}))
    applied = pin_layers(trt, network, pinned)
    for profile_spec in plan.get("profiles", []):
        profile = builder.create_optimization_profile()
        for name, shapes in profile_spec.items():
            profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        config.add_optimization_profile(profile)
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    progress("building the engine (TensorRT times its kernels; minutes on first build)")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError("TensorRT failed to build the engine (see the TensorRT log above).")
    seconds = time.perf_counter() - start
    engine_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "file": engine_path.name, "tensorrt_version": trt.__version__, "gpu": gpu,
        "onnx": onnx_path.name, "flags": list(settings["flags"]), "profiles": plan.get("profiles", []),
        "fp32_layers_requested": len(pinned), "fp32_layers_applied": len(applied),
        "fp32_layers_not_found": sorted(pinned - {n for n, _ in applied}),
        "timing_cache": cache_path.name if cache_path is not None else None,
        "timing_cache_reused": bool(cache_bytes), "build_seconds": round(seconds, 1),
        "layers": network.num_layers,
    }


def pin_layers(trt, network, node_names: set[str]) -> list[tuple[str, str]]:
    """Set precision and output types to FP32 on the layers the parser made from the pinned ONNX nodes.

    The ONNX parser names each layer after its node (extra layers of one node get a suffix) and, in
    TensorRT 10, records the node in the layer's metadata; both are matched.
    """
    applied = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        meta = getattr(layer, "metadata", "") or ""
        node = next((n for n in node_names if _made_from(layer.name, meta, n)), None)
        if node is None:
            continue
        floats = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)]
        if not floats:
            continue
        layer.precision = trt.float32
        for j in floats:
            layer.set_output_type(j, trt.float32)
        applied.append((node, layer.name))
    return applied


def _made_from(layer_name: str, metadata: str, node: str) -> bool:
    """Whether a layer came from ONNX node ``node``: same name, the node's name plus a parser suffix
    (not a digit: dynamo names siblings node_relu, node_relu_1, ...), or the node in the metadata."""
    if layer_name == node or f"[ONNX Layer: {node}]" in metadata:
        return True
    rest = layer_name[len(node) + 1:] if layer_name.startswith(node + "_") else ""
    return bool(rest) and not rest[0].isdigit()


def engine_key(folder: Path, plan: dict, trt_version: str, gpu: dict) -> str:
    """A cache key: the plan's ONNX bytes, builder settings, TensorRT version and GPU."""
    import hashlib

    digest = hashlib.sha256()
    digest.update((folder / plan["onnx"]).read_bytes())
    digest.update(json.dumps([plan["builder"], plan.get("profiles"), trt_version, gpu["name"],
                              gpu["compute_capability"]], sort_keys=True).encode())
    return digest.hexdigest()[:24]


def build_artifact(folder: str | Path, *, parity: bool = True, images_dir: str | None = None,
                   progress=lambda msg: None):
    """``lightdeploy build DIR``: build ``model.engine`` from the plan in DIR, then gate it on the GPU.

    Returns the parity report (None with ``parity=False``); the manifest gets the engine's TensorRT
    version and GPU, ``backend_file = model.engine`` and the measured (not estimated) parity.
    """
    from lightdeploy.artifact import write_manifest
    from lightdeploy.exporters.tensorrt_plan import ENGINE_FILE, TIMING_CACHE_FILE, read_plan, update_plan
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    if manifest.get("backend") != "tensorrt":
        raise UsageError(f"{str(folder)!r} is a {manifest.get('backend')} artifact; `lightdeploy build` takes a "
                         "TensorRT build plan (export with --to trt).")
    plan = read_plan(folder)
    ok, why = trt_environment()
    if not ok:
        raise MissingDependencyError(f"`lightdeploy build` runs on the GPU machine: {why}")
    info = build_engine(folder / plan["onnx"], plan, folder / ENGINE_FILE, folder / TIMING_CACHE_FILE, progress)
    update_plan(folder, status=f"built: {ENGINE_FILE} (TensorRT {info['tensorrt_version']}, {info['gpu']['name']})")
    backend_info = {**manifest.get("backend_info", {}), "engine": info}
    manifest = {**manifest, "backend_file": ENGINE_FILE, "backend_info": backend_info}
    manifest.pop("files", None)
    manifest = write_manifest(folder, manifest)
    report = None
    if parity:
        from lightdeploy.parity import run_parity
        from lightdeploy.samples import images_from_dir

        progress("running the parity gate on the engine")
        report = run_parity(folder, images=images_from_dir(images_dir) if images_dir else None)
        manifest.pop("files", None)
        write_manifest(folder, {**manifest, "parity": report.as_dict()})
    return report
