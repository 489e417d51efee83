"""Drawing predictions onto images (PNG), one function per task; Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int = 16):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_classification(rgb: np.ndarray, predictions, path: Path) -> Path:
    """The image with a panel listing the top-k labels and probabilities."""
    img = Image.fromarray(rgb).convert("RGB")
    scale = 512 / max(img.size)
    if scale < 1:
        img = img.resize((int(img.width * scale), int(img.height * scale)))
    font = _font(16)
    lines = [f"{i + 1}. {p.label}  {p.probability:.3f}" for i, p in enumerate(predictions)]
    panel_h = 8 + 22 * len(lines)
    canvas = Image.new("RGB", (max(img.width, 320), img.height + panel_h), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((8, img.height + 6 + 22 * k), line, fill="black", font=font)
    canvas.save(path)
    return path


DRAWERS = {"classify": draw_classification}
