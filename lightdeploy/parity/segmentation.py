"""Segmentation parity: the artifact's mask against eager's (pixel agreement and mIoU).

The mask is the argmax of the logits; where two classes' logits nearly tie, a tiny numeric
difference may flip a pixel, which is why the fp32 row asks 99.9% of pixels rather than all.
"""

from __future__ import annotations

import numpy as np

from lightdeploy.parity.metrics import Check
from lightdeploy.parity.tolerances import Tolerance


def mask_agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(pixel accuracy, mIoU over the classes present in either mask) of ``out`` against ``ref``."""
    ref, out = ref.ravel(), out.ravel()
    accuracy = float((ref == out).mean()) if ref.size else 1.0
    ious = []
    for c in np.union1d(np.unique(ref), np.unique(out)):
        r, o = ref == c, out == c
        ious.append(np.logical_and(r, o).sum() / np.logical_or(r, o).sum())
    return accuracy, float(np.mean(ious)) if ious else 1.0


def segment_checks(ref: dict, out: dict, tol: Tolerance, output_names: list[str]) -> tuple[list[Check], dict]:
    """Pixels of the ``mask`` output equal to eager's (judged), and mIoU (reported)."""
    name = "mask" if "mask" in ref else output_names[-1]
    r = np.concatenate([m.ravel() for m in ref[name]])
    o = np.concatenate([np.asarray(m).astype(r.dtype).ravel() for m in out[name]])
    accuracy, miou = mask_agreement(r, o)
    return [Check("task", "mask_pixel_agreement", accuracy, tol.mask_pixels_min, ">=")], {
        "mask_pixel_agreement": accuracy,
        "mask_miou": miou,
        "pixels": int(r.size),
        "one_miss": 1.0 / max(int(r.size), 1),  # one flipped pixel's cost to the row
    }
