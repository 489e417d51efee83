"""The parity inputs: real photographs (preprocessed per the manifest) plus seeded random tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANDOM_INPUTS = 4
RANDOM_SEED = 1234


@dataclass
class ParityInput:
    name: str
    array: np.ndarray  # [1, 3, H, W] (or [1, H, W, 3]) float32, as the artifact takes it


def parity_inputs(manifest: dict, images: dict[str, np.ndarray] | None = None) -> list[ParityInput]:
    """Photographs (or ``images``) at the manifest's size, then ``RANDOM_INPUTS`` seeded N(0, 1) tensors.

    When the artifact's H and W are dynamic, the photographs are fed again at a second size so the
    gate proves the dynamic graph, not just its example shape.
    """
    from lightdeploy.samples import photographs, preprocessed

    pre = dict(manifest["preprocessing"])
    images = images if images is not None else photographs()
    out = [ParityInput(n, a) for n, a in preprocessed(images, pre).items()]
    rng = np.random.default_rng(RANDOM_SEED)
    shape = out[0].array.shape
    out += [ParityInput(f"random{i}", rng.standard_normal(shape).astype(np.float32)) for i in range(RANDOM_INPUTS)]
    second = second_size(manifest)
    if second:
        pre2 = {**pre, "size": list(second)}
        out += [ParityInput(f"{n}@{second[0]}x{second[1]}", a) for n, a in preprocessed(images, pre2).items()]
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


def to_batches(inputs: list[ParityInput], batch_dim) -> list[tuple[list[str], np.ndarray]]:
    """Group inputs into the artifact's batch: a fixed B repeats each input B times; a dynamic batch
    gets pairs of same-sized inputs, so batching itself is exercised."""
    if isinstance(batch_dim, int):
        return [([p.name], np.repeat(p.array, batch_dim, axis=0)) for p in inputs]
    groups, i = [], 0
    while i < len(inputs):
        a = inputs[i]
        b = inputs[i + 1] if i + 1 < len(inputs) else None
        if b is not None and b.array.shape == a.array.shape:
            groups.append(([a.name, b.name], np.concatenate([a.array, b.array])))
            i += 2
        else:
            groups.append(([a.name], a.array))
            i += 1
    return groups
