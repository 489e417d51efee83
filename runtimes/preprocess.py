"""Image preprocessing from the manifest: numpy and Pillow only (edge apps embed this).

The parity gate feeds eager PyTorch the very arrays made here, so the runtime's preprocessing is
what gets tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import UsageError


def load_image(image) -> np.ndarray:
    """A path, a PIL image or an HxWx3 uint8 array -> an HxWx3 uint8 RGB array."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise UsageError(f"Image {str(path)!r} does not exist. Give the path of a JPEG or PNG file.")
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise UsageError(f"Cannot read {str(path)!r} as an image ({exc}). Give a JPEG or PNG file.") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise UsageError(
            f"An image array must be HxWx3 uint8 (RGB); got shape {arr.shape} and dtype {arr.dtype}. "
            "Convert it with np.asarray(PIL.Image.open(path).convert('RGB'))."
        )
    return arr[..., :3]


def preprocess(image, pre: dict) -> np.ndarray:
    """HxWx3 uint8 RGB -> [1, 3, H, W] (or [1, H, W, 3] for NHWC) float32, per the manifest.

    ``pre`` is the manifest's ``preprocessing``: size [H, W], mean, std (RGB, on [0, 1] values),
    layout "NCHW" | "NHWC".  Resizing is bilinear to exactly ``size`` (no aspect-preserving pad:
    the models were defined on square/fixed inputs and the eager reference gets the same array).
    """
    from PIL import Image

    rgb = load_image(image)
    h, w = pre["size"]
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    if pre.get("layout", "NCHW") == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])
