"""The base of the task wrappers: manifest-driven preprocessing around one Runtime.

A wrapper is as thread-safe as its runtime (every backend is: docs/design.md#runtimes) and holds no
per-call state of its own.  ``predict_many`` batches images where the artifact's batch allows: a
dynamic batch takes up to ``batch_size`` images per call, a fixed batch N takes N (the last batch
padded by repeating its last image), and the batches run concurrently up to the runtime's
``parallelism`` (its pool size; more than one in throughput mode).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lightdeploy.errors import UsageError
from lightdeploy.runtimes.base import Runtime
from lightdeploy.runtimes.preprocess import load_image, preprocess

DYNAMIC_BATCH = 8  # images per call for a dynamic-batch artifact, unless predict_many is told otherwise


class TaskModel:
    """``infer(arrays)`` runs the raw graph; ``predict(image)`` adds the task's pre/post-processing."""

    task = "base"

    def __init__(self, runtime: Runtime, manifest: dict):
        self.runtime = runtime
        self.manifest = manifest
        self.preprocessing = manifest["preprocessing"]
        self.class_names = manifest.get("class_names") or [f"class {i}" for i in range(manifest.get("num_classes", 0))]

    @property
    def input_name(self) -> str:
        return self.runtime.inputs[0].name

    @property
    def info(self) -> dict:
        """The runtime's facts: backend, device, mode, threads, concurrency mechanism, parity verdict."""
        return self.runtime.info

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, arrays) -> dict[str, np.ndarray]:
        """Raw outputs by name.  ``arrays``: {input name: array}, or one array for a one-input model."""
        if isinstance(arrays, np.ndarray):
            if len(self.runtime.inputs) != 1:
                raise UsageError(f"This model has {len(self.runtime.inputs)} inputs: pass a dict by name.")
            arrays = {self.input_name: arrays}
        if not isinstance(arrays, dict):
            raise UsageError(f"infer() takes a numpy array or a dict of them; got {type(arrays).__name__}.")
        return self.runtime.run(arrays)

    def prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(original HxWx3 uint8, preprocessed input batch repeated to the artifact's batch size)."""
        rgb = load_image(image)
        x = preprocess(rgb, self.preprocessing)
        batch = self.runtime.inputs[0].shape[0]
        if batch not in (None, 1):
            x = np.repeat(x, batch, axis=0)  # a fixed-batch artifact still answers one image
        return rgb, x

    def predict(self, image, **options):
        """The task's result for one image (path, PIL image or HxWx3 uint8 array)."""
        rgb, x = self.prepare(image)
        return self._result(self.infer(x), 0, rgb, **options)

    def predict_many(self, images, batch_size: int | None = None, **options) -> list:
        """``predict`` for each image, in order, batched where the artifact's batch allows (module docstring)."""
        images = list(images)
        fixed = self.runtime.inputs[0].shape[0]
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise UsageError(f"batch_size must be a positive integer; got {batch_size!r}.")
        if fixed is not None and batch_size not in (None, fixed):
            raise UsageError(f"This artifact has a fixed batch of {fixed}; batch_size can only be {fixed}.")
        size = fixed or batch_size or DYNAMIC_BATCH
        rgbs = [load_image(image) for image in images]
        groups = [list(range(i, min(i + size, len(rgbs)))) for i in range(0, len(rgbs), size)]

        def run(group: list[int]) -> list:
            x = np.concatenate([preprocess(rgbs[i], self.preprocessing) for i in group])
            if fixed is not None and len(group) < fixed:  # pad a fixed batch with its last image
                x = np.concatenate([x, np.repeat(x[-1:], fixed - len(group), axis=0)])
            outputs = self.infer(x)
            return [self._result(outputs, j, rgbs[i], **options) for j, i in enumerate(group)]

        workers = max(1, min(getattr(self.runtime, "parallelism", 1), len(groups)))
        if workers == 1:
            return [r for group in groups for r in run(group)]
        with ThreadPoolExecutor(workers, thread_name_prefix="lightdeploy-predict") as pool:
            return [r for results in pool.map(run, groups) for r in results]

    def _result(self, outputs: dict[str, np.ndarray], index: int, rgb: np.ndarray, **options):
        """The task's result for image ``index`` of a batch's outputs (``rgb``: the original image)."""
        raise NotImplementedError
