"""The INT8 calibration set: ``--calib DIR`` images, or the sample photographs with simple augmentations.

Every quantiser (NNCF, ai-edge-quantizer, ONNX Runtime's QDQ for TensorRT) takes these same
preprocessed batches, and the manifest records what was used and how many.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The photographs plus this many augmented copies each (6 x (1 + 9) = 60 images).
DEFAULT_AUG_COPIES = 9


@dataclass
class CalibrationSet:
    batches: list[np.ndarray]  # each [batch, 3, H, W] (or NHWC) float32, as the artifact takes it
    description: dict  # for the manifest: source, image count, augmentation

    def __len__(self) -> int:
        return len(self.batches)


def calibration_set(preprocessing: dict, batch: int = 1, calib_dir: str | None = None, seed: int = 0) -> CalibrationSet:
    from lightdeploy.samples import augmented, images_from_dir, photographs, preprocessed

    if calib_dir:
        images = images_from_dir(calib_dir)
        desc = {"source": str(calib_dir), "images": len(images), "augmentation": None}
    else:
        images = augmented(photographs(), DEFAULT_AUG_COPIES, seed=seed)
        desc = {
            "source": "scikit-image sample photographs",
            "images": len(images),
            "augmentation": f"{DEFAULT_AUG_COPIES} random crops (60-100%) with random flips per photograph",
        }
    arrays = list(preprocessed(images, preprocessing).values())
    batches = [np.concatenate(arrays[i : i + batch]) for i in range(0, len(arrays) - batch + 1, batch)]
    desc["batch"] = batch
    return CalibrationSet(batches, desc)
