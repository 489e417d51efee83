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
# the manifest's "backend" -> the target that writes it
BACKEND_TARGETS = {"onnxruntime": "onnx", "openvino": "openvino", "tflite": "tflite", "tensorrt": "trt"}


def available_targets() -> list[str]:
    return list(TARGETS)


def get_exporter(target: str):
    if target not in TARGETS:
        raise UsageError(f"Unknown export target {target!r}. Available targets: {', '.join(TARGETS)}.")
    return importlib.import_module(TARGETS[target]).EXPORTER


def exporter_for_backend(backend: str):
    """The exporter that writes artifacts of ``backend`` (a manifest's "backend")."""
    if backend not in BACKEND_TARGETS:
        raise ArtifactError(f"Unknown backend {backend!r} in the manifest; known: {', '.join(BACKEND_TARGETS)}.")
    return get_exporter(BACKEND_TARGETS[backend])
