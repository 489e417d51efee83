"""Running lightdeploy artifacts: numpy, Pillow and one backend runtime; never torch or tensorflow.

    >>> from lightdeploy import runtimes
    >>> model = runtimes.load("artifacts/shufflenetv2-onnx-fp32")
    >>> model.predict("cat.jpg")                 # top-5 / boxes / mask, by task
    >>> model.infer({"image": batch})            # raw outputs by name

``load`` reads the manifest, verifies the sha256 of every file, opens the backend named there and
returns the task wrapper.  Backends and task wrappers are imported only when an artifact needs them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lightdeploy.errors import ArtifactError
from lightdeploy.runtimes.base import Runtime, TensorSpec
from lightdeploy.runtimes.manifest import read_manifest

# backend name (manifest "backend") -> module with open_artifact(folder, manifest, threads)
BACKENDS = {
    "onnxruntime": "lightdeploy.runtimes.onnxruntime",
    "openvino": "lightdeploy.runtimes.openvino",
    "tflite": "lightdeploy.runtimes.tflite",
    "tensorrt": "lightdeploy.runtimes.tensorrt",
}
# task (manifest "task") -> "module:class" of its wrapper
TASKS = {
    "classify": "lightdeploy.runtimes.classify:Classifier",
    "detect": "lightdeploy.runtimes.detect:Detector",
    "segment": "lightdeploy.runtimes.segment:Segmenter",
}

__all__ = ["load", "open_runtime", "Runtime", "TensorSpec", "BACKENDS", "TASKS"]


def open_runtime(folder: str | Path, manifest: dict | None = None, threads: int | None = None) -> Runtime:
    """The bare backend Runtime of an artifact (no task pre/post-processing)."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    backend = manifest.get("backend")
    if backend not in BACKENDS:
        raise ArtifactError(
            f"Artifact {str(folder)!r} names an unknown backend {backend!r}; known: {sorted(BACKENDS)}."
        )
    return importlib.import_module(BACKENDS[backend]).open_artifact(folder, manifest, threads=threads)


def load(folder: str | Path, threads: int | None = None):
    """Verify and open an artifact folder; return its task wrapper (Classifier, Detector, Segmenter)."""
    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    task = manifest.get("task")
    if task not in TASKS:
        raise ArtifactError(f"Artifact {str(folder)!r} has an unknown task {task!r}; known: {sorted(TASKS)}.")
    module, cls = TASKS[task].split(":")
    wrapper = getattr(importlib.import_module(module), cls)
    return wrapper(open_runtime(folder, manifest, threads), manifest)
