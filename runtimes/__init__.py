"""Running lightdeploy artifacts: numpy, Pillow and one backend runtime; never torch or tensorflow.

    >>> from lightdeploy import runtimes
    >>> with runtimes.load("artifacts/shufflenetv2-onnx-fp32") as model:   # safe to share between threads
    ...     model.predict("cat.jpg")                 # top-5 / boxes / mask, by task
    ...     model.predict_many(["a.jpg", "b.jpg"])   # batched where the artifact's batch allows
    ...     model.infer({"image": batch})            # raw outputs by name
    >>> runtimes.load(folder, mode="throughput", device="AUTO")   # OpenVINO streams, device choice

``load`` verifies before it opens (``verify``): every listed file's sha256, every path inside the
folder, every file the backend opens listed, and the parity verdict (a failed or missing one is
refused unless ``allow_unverified=True``).  Backends and task wrappers are imported only when an
artifact needs them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lightdeploy.errors import ArtifactError
from lightdeploy.runtimes.base import MODES, Runtime, TensorSpec, check_mode
from lightdeploy.runtimes.manifest import check_verdict, covers, inside, read_manifest

# backend name (manifest "backend") -> module with open_artifact(folder, manifest, threads, mode, device)
# and opened_files(folder, manifest)
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

__all__ = ["load", "open_runtime", "verify", "Runtime", "TensorSpec", "BACKENDS", "TASKS", "MODES"]


def _backend(folder: Path, manifest: dict):
    backend = manifest.get("backend")
    if backend not in BACKENDS:
        raise ArtifactError(
            f"Artifact {str(folder)!r} names an unknown backend {backend!r}; known: {sorted(BACKENDS)}."
        )
    return importlib.import_module(BACKENDS[backend])


def verify(folder: str | Path, manifest: dict | None = None, *, allow_unverified: bool = False) -> dict:
    """Every check ``load`` makes before opening anything; return the manifest with ``verdict`` added.

    Without ``manifest`` the folder's is read and its hashes checked; a caller that already read it with
    ``read_manifest(verify=True)`` passes it to skip hashing twice.
    """
    folder = Path(folder)
    manifest = dict(manifest) if manifest is not None else read_manifest(folder, verify=True)
    module = _backend(folder, manifest)
    inside(folder, manifest.get("backend_file"), "backend_file")
    covers(folder, manifest, module.opened_files(folder, manifest))
    manifest["verdict"] = check_verdict(folder, manifest, allow_unverified)
    return manifest


def open_runtime(
    folder: str | Path,
    manifest: dict | None = None,
    threads: int | None = None,
    *,
    mode: str = "latency",
    device=None,
    allow_unverified: bool = False,
) -> Runtime:
    """The bare backend Runtime of an artifact (no task pre/post-processing), verified first."""
    folder = Path(folder)
    check_mode(mode)
    manifest = verify(folder, manifest, allow_unverified=allow_unverified)
    runtime = _backend(folder, manifest).open_artifact(folder, manifest, threads=threads, mode=mode, device=device)
    runtime.info["verdict"] = manifest["verdict"]
    return runtime


def load(
    folder: str | Path,
    threads: int | None = None,
    *,
    mode: str = "latency",
    device=None,
    allow_unverified: bool = False,
):
    """Verify and open an artifact folder; return its task wrapper (Classifier, Detector, Segmenter).

    ``mode``: "latency" (one call at a time gets every core) or "throughput" (concurrent calls and
    ``predict_many``).  ``device``: an OpenVINO device (CPU, GPU, NPU, AUTO, ...) or ONNX Runtime
    execution providers in order (CPU is always the fallback); recorded in ``info``.
    ``allow_unverified``: run an artifact whose parity gate failed or never ran.
    """
    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    task = manifest.get("task")
    if task not in TASKS:
        raise ArtifactError(f"Artifact {str(folder)!r} has an unknown task {task!r}; known: {sorted(TASKS)}.")
    module, cls = TASKS[task].split(":")
    wrapper = getattr(importlib.import_module(module), cls)
    runtime = open_runtime(folder, manifest, threads, mode=mode, device=device, allow_unverified=allow_unverified)
    return wrapper(runtime, manifest)
