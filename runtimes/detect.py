"""Detector wrapper: resize/normalise from the manifest, run, return boxes in original image pixels.

Every detector artifact ends in the same four outputs (docs/design.md#custom-ops): ``boxes [B, K, 4]`` (x1, y1, x2,
y2 in the network input's pixels), ``scores [B, K]``, ``labels [B, K]`` and ``num_detections [B]``;
the first ``num_detections`` slots are valid.  The wrapper reads only those, by name, so it gives
the same structure for every backend (and ignores raw head outputs an artifact may also carry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightdeploy.errors import ArtifactError
from lightdeploy.runtimes.task import TaskModel

REQUIRED = ("boxes", "scores", "labels", "num_detections")


@dataclass
class Detections:
    boxes: np.ndarray  # [n, 4] float32 (x1, y1, x2, y2) in the original image's pixels
    scores: np.ndarray  # [n] float32, decreasing
    labels: np.ndarray  # [n] int64 class index
    names: list[str]  # [n] class name of each detection

    def __len__(self) -> int:
        return len(self.scores)


class Detector(TaskModel):
    task = "detect"

    def predict(self, image, min_score: float = 0.0) -> Detections:
        """Detections of one image (path, PIL image or HxWx3 uint8 array), boxes in its pixels."""
        return super().predict(image, min_score=min_score)

    def _result(self, outputs, index, rgb, min_score: float = 0.0) -> Detections:
        missing = [n for n in REQUIRED if n not in outputs]
        if missing:
            raise ArtifactError(
                f"This detector artifact lacks the output(s) {missing}; a detector must end in "
                f"{', '.join(REQUIRED)} (re-export it with lightdeploy)."
            )
        n = int(np.asarray(outputs["num_detections"]).reshape(-1)[index])
        boxes = np.asarray(outputs["boxes"][index][:n], np.float32)
        scores = np.asarray(outputs["scores"][index][:n], np.float32)
        labels = np.asarray(outputs["labels"][index][:n]).astype(np.int64)
        keep = scores >= min_score
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        in_h, in_w = self.preprocessing["size"]
        img_h, img_w = rgb.shape[:2]
        # preprocessing resizes to exactly `size` (no letterbox), so each axis scales on its own
        boxes = boxes * np.asarray([img_w / in_w, img_h / in_h, img_w / in_w, img_h / in_h], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, img_w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, img_h)
        names = [self.class_names[c] if 0 <= c < len(self.class_names) else f"class {c}" for c in labels]
        return Detections(boxes, scores, labels, names)
