"""Classifier wrapper: resize/normalise from the manifest, run, softmax, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightdeploy.runtimes.task import TaskModel


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classifier(TaskModel):
    task = "classify"

    def predict(self, image, k: int = 5) -> list[Prediction]:
        """Top-``k`` classes of one image (path, PIL image or HxWx3 uint8 array)."""
        return super().predict(image, k=k)

    def _result(self, outputs, index, rgb, k: int = 5) -> list[Prediction]:
        logits = outputs[self.runtime.outputs[0].name][index].astype(np.float32)
        probs = softmax(logits)
        top = np.argsort(-probs)[:k]
        return [Prediction(int(i), self.class_names[i], float(probs[i])) for i in top]
