"""Building a TensorRT engine from a lightdeploy build plan, with the TensorRT 10 Python API.

``build_engine`` parses the plan's ONNX with ``trt.OnnxParser``, applies the builder settings
(FP16/INT8 flags, ``OBEY_PRECISION_CONSTRAINTS`` with FP32 layer precisions, optimisation profiles
for dynamic dims, a timing cache kept beside the engine) and serialises the engine.  Used by
``lightdeploy build DIR`` and by the runtime, which builds and caches the engine the first time a
plan artifact is loaded on a GPU machine; so it lives here, torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.runtimes._tensorrt_env import gpu_info, import_tensorrt


def build_engine(
    onnx_path: Path, plan: dict, engine_path: Path, cache_path: Path | None = None, progress=lambda msg: None
) -> dict:
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
        raise UsageError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}. "
            "Run `lightdeploy check` on the model for the unsupported nodes."
        )
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
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError("TensorRT failed to build the engine (see the TensorRT log above).")
    engine_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "file": engine_path.name,
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "onnx": onnx_path.name,
        "flags": list(settings["flags"]),
        "profiles": plan.get("profiles", []),
        "fp32_layers_requested": len(pinned),
        "fp32_layers_applied": len(applied),
        "fp32_layers_not_found": sorted(pinned - {n for n, _ in applied}),
        "timing_cache": cache_path.name if cache_path is not None else None,
        "timing_cache_reused": bool(cache_bytes),
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
    rest = layer_name[len(node) + 1 :] if layer_name.startswith(node + "_") else ""
    return bool(rest) and not rest[0].isdigit()


def engine_key(folder: Path, plan: dict, trt_version: str, gpu: dict) -> str:
    """A cache key: the plan's ONNX bytes, builder settings, TensorRT version and GPU."""
    import hashlib

    digest = hashlib.sha256()
    digest.update((folder / plan["onnx"]).read_bytes())
    digest.update(
        json.dumps(
            [plan["builder"], plan.get("profiles"), trt_version, gpu["name"], gpu["compute_capability"]], sort_keys=True
        ).encode()
    )
    return digest.hexdigest()[:24]
