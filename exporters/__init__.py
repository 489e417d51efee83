"""Exporters, one package per target, each with the same roles (docs/design.md#layout).

Each target package defines ``EXPORTER`` (``lightdeploy.exporters.base.Exporter``).  Heavy backend
packages are imported inside the exporter, so listing targets costs nothing.
"""

from __future__ import annotations

import importlib

from lightdeploy.errors import ArtifactError, UsageError

# target name on the command line -> package
TARGETS = {
    "onnx": "lightdeploy.exporters.onnx",
    "openvino": "lightdeploy.exporters.openvino",
    "tflite": "lightdeploy.exporters.tflite",
    "trt": "lightdeploy.exporters.tensorrt",
}
# other names users type -> the canonical target; artifact folders and manifests keep the canonical name
TARGET_ALIASES = {
    "onnxruntime": "onnx",
    "ort": "onnx",
    "ov": "openvino",
    "litert": "tflite",
    "tensorrt": "trt",
    "engine": "trt",
}
# the manifest's "backend" -> the target that writes it
BACKEND_TARGETS = {"onnxruntime": "onnx", "openvino": "openvino", "tflite": "tflite", "tensorrt": "trt"}


def available_targets() -> list[str]:
    return list(TARGETS)


def resolve_target(name: str) -> str:
    """The canonical name of a target given by its name or an alias (``ov`` -> ``openvino``).

    The one place aliases are resolved: the pipeline, the checks and ``get_exporter`` all call it."""
    key = name.strip().lower()
    target = TARGET_ALIASES.get(key, key)
    if target not in TARGETS:
        aliases = ", ".join(f"{alias} = {canonical}" for alias, canonical in TARGET_ALIASES.items())
        raise UsageError(
            f"Unknown export target {name!r}. Available targets: {', '.join(TARGETS)} (aliases: {aliases})."
        )
    return target


def get_exporter(target: str):
    return importlib.import_module(TARGETS[resolve_target(target)]).EXPORTER


def exporter_for_backend(backend: str):
    """The exporter that writes artifacts of ``backend`` (a manifest's "backend")."""
    if backend not in BACKEND_TARGETS:
        raise ArtifactError(f"Unknown backend {backend!r} in the manifest; known: {', '.join(BACKEND_TARGETS)}.")
    return get_exporter(BACKEND_TARGETS[backend])
