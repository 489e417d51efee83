"""The sample photographs (scikit-image, scikit-learn and matplotlib ship them) and the batches made
from them.

``photographs()`` (scikit-image's six) are what BN statistics are re-estimated on for models built
without weights.  ``sample_photographs()`` (every bundled photograph found) are the real images of the
parity gate and of the default INT8 calibration set, each widened by seeded crops and flips
(``augmented``) with different seeds, so the gate never judges on a calibration sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import UsageError

# RGB photographs bundled inside scikit-image (no download): people, objects, animals, space, tissue.
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def photographs() -> dict[str, np.ndarray]:
    """{name: HxWx3 uint8 RGB} of scikit-image's six photographs."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in PHOTOGRAPHS}


def sample_photographs() -> dict[str, np.ndarray]:
    """{name: HxWx3 uint8 RGB} of every real photograph bundled in the installed packages: scikit-image's
    (also its stereo motorcycle and retina), scikit-learn's sample images and matplotlib's sample photo
    (each where that package is installed).  Nothing is downloaded."""
    import skimage.data

    out = photographs()
    out["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    out["retina"] = skimage.data.retina()
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for path, image in zip(bunch.filenames, bunch.images):
            out[Path(path).stem] = np.ascontiguousarray(image)
    except ImportError:
        pass
    try:
        import matplotlib
        from PIL import Image

        with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as im:
            out["grace_hopper"] = np.asarray(im.convert("RGB"))
    except (ImportError, OSError):
        pass
    return out


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


def augmented(
    images: dict[str, np.ndarray], copies: int, seed: int = 0, *, originals: bool = True, min_scale: float = 0.6
) -> dict[str, np.ndarray]:
    """Each image (unless ``originals`` is False) plus ``copies`` seeded variants: a random crop of
    ``min_scale``-100% of each side (a zoom), flipped horizontally half of the time.

    Simple augmentations widen a handful of photographs into a usable BN / calibration / gate set.
    """
    rng = np.random.default_rng(seed)
    out = dict(images) if originals else {}
    for name, img in images.items():
        h, w = img.shape[:2]
        for k in range(copies):
            scale = rng.uniform(min_scale, 1.0)
            ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y : y + ch, x : x + cw]
            out[f"{name}#aug{k}"] = np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return out


def preprocessed(images: dict[str, np.ndarray], pre: dict) -> dict[str, np.ndarray]:
    """{name: [1, 3, H, W] float32} preprocessed per a manifest-style preprocessing dict."""
    from lightdeploy.runtimes.preprocess import preprocess

    return {name: preprocess(img, pre) for name, img in images.items()}
