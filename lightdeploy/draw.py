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


def palette(n: int) -> np.ndarray:
    """A fixed, well-spread colour per class (golden-ratio hues), the same in every image."""
    import colorsys

    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 0.95)] for i in range(n)], np.uint8
    )


def draw_segmentation(rgb: np.ndarray, seg, path: Path) -> Path:
    """The mask blended over the image, with a legend of the classes present."""
    colours = palette(max(len(seg.class_names), int(seg.mask.max()) + 1))
    overlay = (0.5 * rgb + 0.5 * colours[seg.mask]).astype(np.uint8)
    img = Image.fromarray(overlay)
    present = [int(c) for c in np.unique(seg.mask)]
    font = _font(14)
    legend_h = 8 + 20 * ((len(present) + 2) // 3)
    canvas = Image.new("RGB", (max(img.width, 480), img.height + legend_h), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, c in enumerate(present):
        x, y = 8 + (k % 3) * 160, img.height + 6 + 20 * (k // 3)
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=tuple(int(v) for v in colours[c]))
        label = seg.class_names[c] if c < len(seg.class_names) else f"class {c}"
        share = float((seg.mask == c).mean())
        draw.text((x + 20, y), f"{label} {share:.0%}", fill="black", font=font)
    canvas.save(path)
    return path


def draw_detections(rgb: np.ndarray, dets, path: Path, max_boxes: int = 100) -> Path:
    """Boxes with "label score" tags (one colour per class), and a footer with the detection count."""
    img = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = _font(14)
    colours = palette(max([int(c) + 1 for c in dets.labels] + [1]))
    width = max(2, round(max(img.size) / 300))
    for box, score, label, name in list(zip(dets.boxes, dets.scores, dets.labels, dets.names))[:max_boxes]:
        colour = tuple(int(v) for v in colours[int(label)])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        tag = f"{name} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), tag, font=font)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 4], fill=colour)
        draw.text((x1 + 2, ty + 1), tag, fill="black", font=font)
    canvas = Image.new("RGB", (img.width, img.height + 28), "white")
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((8, img.height + 6), f"{len(dets.scores)} detections", fill="black", font=_font(16))
    canvas.save(path)
    return path


DRAWERS = {"classify": draw_classification, "detect": draw_detections, "segment": draw_segmentation}
