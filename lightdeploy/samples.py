"""The sample photographs (scikit-image ships them) and the batches made from them.

They are the real images among the parity inputs, the data BN statistics are re-estimated on for
models built without weights, and the default calibration set for INT8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import UsageError

# RGB photographs bundled inside scikit-image (no download): people, objects, animals, space, tissue.
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def photographs() -> dict[str, np.ndarray]:
    """{name: HxWx3 uint8 RGB} of the bundled photographs."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in PHOTOGRAPHS}


def images_from_dir(path: str | Path) -> dict[str, np.ndarray]:
    """{file name: HxWx3 uint8} of the images in a folder (for --images / --calib)."""
    from lightdeploy.runtimes.preprocess import load_image

    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"Image folder {str(folder)!r} does not exist. Give a folder of JPEG/PNG files.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(
            f"Image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}). Add some or drop the option."
        )
    return {p.name: load_image(p) for p in files}


def augmented(images: dict[str, np.ndarray], copies: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each image plus ``copies`` seeded variants (random crop of 60-100%, horizontal flip).

    Simple augmentations widen a handful of photographs into a usable BN / calibration set.
    """
    rng = np.random.default_rng(seed)
    out = dict(images)
    for name, img in images.items():
        h, w = img.shape[:2]
        for k in range(copies):
            scale = rng.uniform(0.6, 1.0)
            ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y : y + ch, x : x + cw]
            out[f"{name}#aug{k}"] = np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return out


def preprocessed(images: dict[str, np.ndarray], pre: dict) -> dict[str, np.ndarray]:
    """{name: [1, 3, H, W] float32} preprocessed per a manifest-style preprocessing dict."""
    from lightdeploy.runtimes.preprocess import preprocess

    return {name: preprocess(img, pre) for name, img in images.items()}
