"""The INT8 calibration set: ``--calib DIR`` images, or the bundled photographs widened by crops and flips.

Every quantiser (NNCF, ai-edge-quantizer, ONNX Runtime's QDQ for TensorRT) takes these same
preprocessed batches, and the manifest records what was used and how many.  The default set is made
with its own seed, so the parity gate (``parity/inputs.py``) never judges on a calibration sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightdeploy.logs import Count

# The bundled photographs plus crops and flips, to about this many samples: a few hundred cover the
# activation ranges of trained networks (docs/measurements.md#calibration-size).
DEFAULT_SAMPLES = 200
CALIB_SEED = 7
MIN_SCALE = 0.4  # crops down to 40% of each side: zoomed-in views as well as whole scenes
# Fewer user images than this get a warning in the manifest and the export's notes.
MIN_USER_IMAGES = 32


@dataclass
class CalibrationSet:
    batches: list[np.ndarray]  # each [batch, 3, H, W] (or NHWC) float32, as the artifact takes it
    description: dict  # for the manifest: source, image count, augmentation, warning

    def __len__(self) -> int:
        return len(self.batches)

    def counted(self, count: Count | None) -> CountedBatches:
        """The batches, re-iterable, reporting ``count(samples handed out, total, "calibration samples")``
        at each batch of each pass (the quantisers iterate the set once per range setting)."""
        return CountedBatches(self.batches, count)


class CountedBatches:
    def __init__(self, batches: list[np.ndarray], count: Count | None):
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        total = sum(len(b) for b in self.batches)
        done = 0
        for b in self.batches:
            done += len(b)
            if self.count:  # when handed out: a quantiser stops asking after its subset, not after a next()
                self.count(done, total, "calibration samples")
            yield b


def calibration_set(preprocessing: dict, batch: int = 1, calib_dir: str | None = None) -> CalibrationSet:
    from lightdeploy.samples import augmented, images_from_dir, preprocessed, sample_photographs

    if calib_dir:
        images = images_from_dir(calib_dir)
        desc = {"source": "--calib folder", "images": len(images), "augmentation": None}
        if len(images) < MIN_USER_IMAGES:
            desc["warning"] = (
                f"--calib holds {len(images)} images, fewer than {MIN_USER_IMAGES}: INT8 ranges from "
                "so few samples may clip what deployment inputs reach; give a few hundred"
            )
    else:
        photos = sample_photographs()
        copies = max(1, round(DEFAULT_SAMPLES / len(photos)) - 1)
        images = augmented(photos, copies, seed=CALIB_SEED, min_scale=MIN_SCALE)
        desc = {
            "source": f"bundled photographs ({', '.join(photos)})",
            "images": len(images),
            "augmentation": f"{copies} random crops ({MIN_SCALE:.0%}-100% of each side) with random flips per "
            f"photograph, seed {CALIB_SEED}",
        }
    arrays = list(preprocessed(images, preprocessing).values())
    batches = [np.concatenate(arrays[i : i + batch]) for i in range(0, len(arrays) - batch + 1, batch)]
    desc["batch"] = batch
    return CalibrationSet(batches, desc)
