"""Exporters, one module per target; a target is available when its module is part of the product.

Each module defines ``EXPORTER`` (see ``lightdeploy.exporters.base.Exporter``).  Heavy backend
packages are imported inside the exporter, so listing targets costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.util

from lightdeploy.errors import UsageError

# target name on the command line -> module
TARGETS = {
    "onnx": "lightdeploy.exporters.onnx",
    "openvino": "lightdeploy.exporters.openvino",
    "tflite": "lightdeploy.exporters.tflite",
    "trt": "lightdeploy.exporters.tensorrt",
}


def available_targets() -> list[str]:
    return [t for t, mod in TARGETS.items() if importlib.util.find_spec(mod) is not None]


def get_exporter(target: str):
    available = available_targets()
    if target not in available:
        raise UsageError(
            f"Unknown export target {target!r}. Available targets: {', '.join(available)}."
        )
    return importlib.import_module(TARGETS[target]).EXPORTER
