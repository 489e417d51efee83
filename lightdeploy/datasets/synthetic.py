"""A procedural detection / segmentation dataset: textured shapes composited on real photographs.

Every sample is a pure function of ``(seed, split, index, size)``, so a stream is reproducible and
the held-out split is regenerated on demand instead of being shipped:

- **background**: a random crop (35-100% of the short side) of one of scikit-image's bundled
  photographs (``skimage.data``, no download), resized, maybe mirrored, with a mild per-channel gain;
  greyscale photographs are repeated to RGB.  The held-out split draws from photographs the train
  stream never sees (``HELDOUT_PHOTOS``), so its metric measures shapes on unseen scenes;
- **objects**: 1-6 shapes of ``CLASSES`` (circle, square, triangle, star), radius 5-20% of the short
  side, random rotation, filled with a texture (flat, stripes, checker or blotches) in random colours
  with a brightness gradient, edges anti-aliased (rendered at 2x, downsampled);
- **occlusion**: shapes are pasted in order, later ones on top; a placement that would hide more than
  ``MAX_HIDDEN`` of an earlier shape is redrawn, so every object stays recognisable;
- **labels**: class ids are 1-based (``CLASSES[id - 1]``; 0 = background, the value of unlabelled
  mask pixels); each object's box (x1, y1, x2, y2, pixel edges: x2 = last column + 1) and area are
  those of its *visible* pixels, as in COCO; the class mask holds the id of the top shape per pixel.

Randomness: ``numpy.random.default_rng([seed, split key, index])``: independent per sample, so any
sample can be drawn alone and the train / held-out streams never share a generator.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star")
# skimage.data images that are photographs (or photograph-like textures) and ship with the wheel.
TRAIN_PHOTOS = (
    "astronaut",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
)
HELDOUT_PHOTOS = ("coffee", "rocket", "gravel", "clock")
SPLIT_KEYS = {"train": 0, "heldout": 1}
HELDOUT_SEED = 1234  # the held-out split is always drawn with this seed (any trainer seed)
HELDOUT_SIZE = 200  # images in the standard held-out split
MAX_OBJECTS = 6
RADIUS_RANGE = (0.05, 0.20)  # of the short side
MAX_HIDDEN = 0.4  # an earlier shape may lose at most this fraction of its pixels to later ones
SUPERSAMPLE = 2  # shape masks are drawn at 2x and averaged down: anti-aliased edges


@dataclass
class Sample:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    boxes: np.ndarray  # [n, 4] float32 (x1, y1, x2, y2) of the visible pixels
    labels: np.ndarray  # [n] int64 class ids, 1-based (CLASSES[id - 1])
    instances: np.ndarray  # [n, H, W] bool visible pixels of each object
    mask: np.ndarray  # [H, W] uint8 class id per pixel, 0 = background

    @property
    def areas(self) -> np.ndarray:
        return self.instances.reshape(len(self.instances), -1).sum(axis=1)


@functools.cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _background(rng: np.random.Generator, photos: tuple[str, ...], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    photo = _photo(photos[rng.integers(len(photos))])
    ph, pw = photo.shape[:2]
    # crop with the output's aspect ratio, 35-100% of what fits
    fit = min(ph / h, pw / w)
    scale = fit * rng.uniform(0.35, 1.0)
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    crop = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((w, h), Image.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out * rng.uniform(0.8, 1.2, size=3).astype(np.float32)


# ---------------------------------------------------------------------------------------- shapes
def _outline(kind: str, radius: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices around (0, 0) (None for a circle, drawn as an ellipse)."""
    if kind == "circle":
        return None
    if kind == "square":
        angles, radii = angle + np.pi / 4 + np.arange(4) * np.pi / 2, np.full(4, radius)
    elif kind == "triangle":
        angles, radii = angle + np.arange(3) * 2 * np.pi / 3, np.full(3, radius)
    elif kind == "star":  # five points, inner radius 45% of the outer
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return list(zip(radii * np.cos(angles), radii * np.sin(angles)))


def _alpha(kind: str, radius: float, angle: float) -> np.ndarray:
    """[P, P] float32 coverage in [0, 1] of a shape centred in a square patch of side P."""
    side = int(np.ceil(2 * radius)) + 2
    big = side * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    c = big / 2
    r = radius * SUPERSAMPLE
    outline = _outline(kind, r, angle)
    if outline is None:
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    else:
        draw.polygon([(c + x, c + y) for x, y in outline], fill=255)
    coverage = np.asarray(canvas, dtype=np.float32).reshape(side, SUPERSAMPLE, side, SUPERSAMPLE)
    return coverage.mean(axis=(1, 3)) / 255.0


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """[side, side, 3] float32 fill: two random colours mixed by a random pattern, then shaded."""
    colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = rng.uniform(4, 14)
    pattern = rng.integers(4)
    if pattern == 0:  # flat
        mix = np.zeros_like(u)
    elif pattern == 1:  # stripes
        mix = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif pattern == 2:  # checker
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:  # blotches: coarse noise, bilinearly upsampled
        cells = max(2, side // 8)
        coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        mix = np.asarray(coarse.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    tex = colours[0] * (1 - mix[..., None]) + colours[1] * mix[..., None]
    shade = 1.0 + rng.uniform(-0.25, 0.25) * (u - u.mean()) / max(side, 1)  # a lighting gradient
    return tex * shade[..., None]


# ---------------------------------------------------------------------------------------- samples
def render_sample(seed: int, split: str, index: int, size: tuple[int, int] | int = 320) -> Sample:
    """Sample ``index`` of ``split`` ("train" or "heldout") at ``size`` (H, W), from ``seed``."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, SPLIT_KEYS[split], index])
    image = _background(rng, HELDOUT_PHOTOS if split == "heldout" else TRAIN_PHOTOS, (h, w))
    owner = np.full((h, w), -1, dtype=np.int16)  # index of the top shape per pixel
    kinds: list[int] = []
    full_area: list[int] = []
    short = min(h, w)
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        kind = int(rng.integers(len(CLASSES)))
        for _attempt in range(10):
            radius = rng.uniform(*RADIUS_RANGE) * short
            alpha = _alpha(CLASSES[kind], radius, rng.uniform(0, 2 * np.pi))
            side = alpha.shape[0]
            if side >= min(h, w):
                continue
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            covered = alpha >= 0.5
            below = owner[y0 : y0 + side, x0 : x0 + side][covered]
            lost = np.bincount(below[below >= 0], minlength=len(kinds))
            remaining = np.bincount(owner[owner >= 0], minlength=len(kinds)) - lost
            if np.all(remaining >= (1 - MAX_HIDDEN) * np.asarray(full_area, dtype=np.float64)):
                break
        else:
            continue  # no placement keeps the others visible enough: one object fewer
        region = image[y0 : y0 + side, x0 : x0 + side]
        region += alpha[..., None] * (_texture(rng, side) - region)
        owner[y0 : y0 + side, x0 : x0 + side][covered] = len(kinds)
        kinds.append(kind)
        full_area.append(int(covered.sum()))

    instances = owner[None] == np.arange(len(kinds), dtype=np.int16)[:, None, None]
    boxes = np.zeros((len(kinds), 4), dtype=np.float32)
    for i, inst in enumerate(instances):
        ys, xs = np.nonzero(inst)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    labels = np.asarray(kinds, dtype=np.int64) + 1
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[owner >= 0] = labels[owner[owner >= 0]]
    return Sample(np.clip(image, 0, 255).round().astype(np.uint8), boxes, labels, instances, mask)


def stream(seed: int = 0, size: tuple[int, int] | int = 320, start: int = 0) -> Iterator[Sample]:
    """The endless train stream: samples start, start + 1, ... of split "train"."""
    index = start
    while True:
        yield render_sample(seed, "train", index, size)
        index += 1


def heldout(n: int = HELDOUT_SIZE, size: tuple[int, int] | int = 320, seed: int = HELDOUT_SEED) -> list[Sample]:
    """The held-out split: ``n`` samples on the held-out photographs, fixed seed by default."""
    return [render_sample(seed, "heldout", i, size) for i in range(n)]
