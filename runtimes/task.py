"""The base of the task wrappers: manifest-driven preprocessing around one Runtime."""

from __future__ import annotations

import numpy as np

from lightdeploy.errors import UsageError
from lightdeploy.runtimes.base import Runtime
from lightdeploy.runtimes.preprocess import load_image, preprocess


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
