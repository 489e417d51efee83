"""Segmenter wrapper: resize/normalise from the manifest, run, return the class mask at image size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightdeploy.runtimes.task import TaskModel


@dataclass
class Segmentation:
    mask: np.ndarray  # [H, W] class index per pixel, at the original image size
    class_names: list[str]


class Segmenter(TaskModel):
    task = "segment"

    def predict(self, image) -> Segmentation:
        """Class mask of one image (path, PIL image or HxWx3 uint8 array), at the image's size."""
        return super().predict(image)

    def _result(self, outputs, index, rgb) -> Segmentation:
        from PIL import Image

        mask = outputs["mask"][index] if "mask" in outputs else outputs["logits"][index].argmax(0)
        if mask.shape != rgb.shape[:2]:  # nearest keeps class ids intact
            mask = np.asarray(
                Image.fromarray(mask.astype(np.int32)).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST)
            )
        return Segmentation(mask.astype(np.int64), self.class_names)
