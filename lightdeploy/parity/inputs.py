"""The parity inputs: real photographs (preprocessed per the manifest) plus seeded random tensors.

Each input has a role, the metrics it serves:
- the photographs serve both kinds of metric;
- random tensors reach activations photographs do not, so they serve the tensor metrics only (on a
  trained network a noise tensor has no meaningful class).  At int8 they are reported, not gated: int8
  ranges are calibrated on photographs and N(0, 1) noise lies outside them by construction, so its error
  measures the noise, not the artifact (a trained segmenter's int8: every photograph at cosine >= 0.999,
  noise at 0.94).  The graph is still gated on noise: the int8 artifact's float twin, at the fp32 row;
- a reduced-precision classifier's task metric also gets ``TASK_SAMPLES`` crops and flips of the
  photographs (a seed of their own, disjoint from the calibration set's): at 90% / 99% agreement the
  row needs about a hundred judged inputs before one miss weighs less than the row's margin.  The crops
  serve the task metric only, so the tensor rows judge the same photographs at every precision.
See docs/design.md#parity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RANDOM_INPUTS = 4
RANDOM_SEED = 1234
GATE_SEED = 2024  # not the calibration set's seed (lightdeploy.calibration.CALIB_SEED)
GATE_MIN_SCALE = 0.4
# reduced precision only (fp32 judges every photograph exactly); 192 leaves a trained ImageNet classifier
# about 120 clear-margin inputs (docs/measurements.md#gate-power)
TASK_SAMPLES = {"classify": 192}


BOTH, TASK, TENSOR = "both", "task", "tensor"  # the metrics an input serves
REPORTED = "reported"  # no gated metric: its tensor stats are reported beside the gated ones
CALIBRATED = ("int8",)  # precisions whose ranges are fitted to photographs: noise is reported there


@dataclass
class ParityInput:
    name: str
    array: np.ndarray  # [1, 3, H, W] (or [1, H, W, 3]) float32, as the artifact takes it
    role: str = BOTH


def parity_inputs(manifest: dict, images: dict[str, np.ndarray] | None = None) -> list[ParityInput]:
    """Photographs at the manifest's size (plus ``images``, the user's own), then ``RANDOM_INPUTS`` seeded
    N(0, 1) tensors (gated by the tensor metrics, or only reported at a ``CALIBRATED`` precision).

    When the artifact's H and W are dynamic, the photographs are fed again at a second size so the
    gate proves the dynamic graph, not just its example shape.
    """
    from lightdeploy.samples import augmented, preprocessed, sample_photographs

    pre = dict(manifest["preprocessing"])
    photos = {**sample_photographs(), **(images or {})}
    out = [ParityInput(n, a) for n, a in preprocessed(photos, pre).items()]
    rng = np.random.default_rng(RANDOM_SEED)
    shape = out[0].array.shape
    noise = REPORTED if manifest["precision"] in CALIBRATED else TENSOR
    out += [
        ParityInput(f"random{i}", rng.standard_normal(shape).astype(np.float32), noise) for i in range(RANDOM_INPUTS)
    ]
    wanted = TASK_SAMPLES.get(manifest["task"]) if manifest["precision"] != "fp32" else None
    if wanted:
        copies = max(0, math.ceil(wanted / len(photos)) - 1)
        crops = augmented(photos, copies, seed=GATE_SEED, originals=False, min_scale=GATE_MIN_SCALE)
        out += [ParityInput(n, a, TASK) for n, a in preprocessed(crops, pre).items()]
    second = second_size(manifest)
    if second:
        pre2 = {**pre, "size": list(second)}
        out += [ParityInput(f"{n}@{second[0]}x{second[1]}", a) for n, a in preprocessed(photos, pre2).items()]
    return out


def second_size(manifest: dict) -> tuple[int, int] | None:
    """A second (H, W) for dynamic-size artifacts: one stride larger each way (a non-square change
    that keeps every feature map at least as large as at the exported size)."""
    dims = manifest["inputs"][0]["shape"]
    if isinstance(dims[2], int) and isinstance(dims[3], int):
        return None
    stride = manifest["preprocessing"].get("size_multiple", 32)
    h, w = manifest["preprocessing"]["size"]
    return h + stride, w + 2 * stride


def to_batches(inputs: list[ParityInput], batch_dim) -> list[tuple[list[str], np.ndarray, str]]:
    """Group inputs into the artifact's batch: (names, array, role).  A fixed B repeats each input B
    times; a dynamic batch gets pairs of same-sized inputs of one role, so batching itself is exercised."""
    if isinstance(batch_dim, int):
        return [([p.name], np.repeat(p.array, batch_dim, axis=0), p.role) for p in inputs]
    groups, i = [], 0
    while i < len(inputs):
        a = inputs[i]
        b = inputs[i + 1] if i + 1 < len(inputs) else None
        if b is not None and b.array.shape == a.array.shape and b.role == a.role:
            groups.append(([a.name, b.name], np.concatenate([a.array, b.array]), a.role))
            i += 2
        else:
            groups.append(([a.name], a.array, a.role))
            i += 1
    return groups
