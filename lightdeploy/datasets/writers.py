"""Write a list of samples to disk in standard formats, so any evaluator can read them.

Layout of a written split (``write_split``)::

    DIR/images/000000.png ...   the RGB images (PNG, lossless)
    DIR/annotations.json        COCO detection JSON: file_name is relative to DIR/images
    DIR/masks/000000.png ...    one uint8 PNG per image, pixel = class id, 0 = background
    DIR/classes.json            ["background", "circle", ...]: the name of every mask value

COCO fields: images {id, file_name, height, width}; annotations {id, image_id, category_id,
bbox [x, y, w, h] (pixel edges), area (visible pixels), iscrowd 0, segmentation (uncompressed RLE of
the visible pixels, column-major runs starting with background, the format pycocotools reads)};
categories {id, name, supercategory}, ids 1-based (mask value = category id).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lightdeploy.datasets.synthetic import CLASSES, Sample

IMAGES_DIR, MASKS_DIR = "images", "masks"
ANNOTATIONS_FILE, CLASSES_FILE = "annotations.json", "classes.json"


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool [H, W] mask: run lengths over the column-major pixels,
    alternating background / foreground, starting with a (possibly empty) background run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def coco_dict(
    samples: Sequence[Sample], file_names: Sequence[str], class_names=CLASSES, info: dict | None = None
) -> dict:
    """The COCO detection dict of ``samples`` (image ids 1..N in order, annotation ids 1..M)."""
    images, annotations = [], []
    for image_id, (sample, name) in enumerate(zip(samples, file_names), start=1):
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for box, label, inst in zip(sample.boxes, sample.labels, sample.instances):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(inst.sum()),
                    "iscrowd": 0,
                    "segmentation": rle_encode(inst),
                }
            )
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(class_names, start=1)]
    return {"info": info or {}, "images": images, "annotations": annotations, "categories": categories}


def write_split(samples: Iterable[Sample], out_dir: str | Path, class_names=CLASSES, info: dict | None = None) -> Path:
    """Write images, COCO JSON, PNG masks and classes.json under ``out_dir``; returns it."""
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    samples = list(samples)
    names = [f"{i:06d}.png" for i in range(len(samples))]
    for sample, name in zip(samples, names):
        Image.fromarray(sample.image).save(out / IMAGES_DIR / name)
        Image.fromarray(sample.mask, mode="L").save(out / MASKS_DIR / name)
    coco = coco_dict(samples, names, class_names, info)
    (out / ANNOTATIONS_FILE).write_text(json.dumps(coco))
    (out / CLASSES_FILE).write_text(json.dumps(["background", *class_names]))
    return out


def write_heldout(out_dir: str | Path, n: int | None = None, size: int | tuple[int, int] = 320) -> Path:
    """Generate the standard held-out split (fixed seed) and write it: eval's test data."""
    from lightdeploy.datasets import synthetic

    n = synthetic.HELDOUT_SIZE if n is None else n
    h, w = (size, size) if isinstance(size, int) else size
    info = {
        "description": "lightdeploy synthetic shapes, held-out split",
        "generator": "lightdeploy.datasets.synthetic.heldout",
        "seed": synthetic.HELDOUT_SEED,
        "images": n,
        "size": [h, w],
        "photographs": list(synthetic.HELDOUT_PHOTOS),
    }
    return write_split(synthetic.heldout(n, (h, w)), out_dir, info=info)


def read_mask(path: str | Path) -> np.ndarray:
    """[H, W] uint8 class ids of a written mask PNG."""
    return np.asarray(Image.open(path))
