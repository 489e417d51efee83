"""Labelled data for ``lightdeploy eval``, in the formats users already have.

- classification: an ImageFolder tree, ``DIR/<class>/<image>``, where ``<class>`` is one of the model's
  class names or an integer class index;
- detection: COCO JSON (``DIR/annotations.json``, or the one ``*.json`` in DIR) with the images under
  ``DIR/images/`` or at their ``file_name`` relative to DIR; categories map to the model's labels by
  name when the model's class names hold them, else by position in the sorted category ids;
- segmentation: ``DIR/images/<stem>.<ext>`` with ``DIR/masks/<stem>.png`` (uint8 class index per pixel,
  255 = ignore).

Anything malformed is a UsageError naming the file and what is wrong (exit 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.samples import IMAGE_SUFFIXES

IGNORE_INDEX = 255


@dataclass
class Dataset:
    task: str
    root: Path
    items: list  # classify: (path, label); detect: (path, image_id); segment: (image path, mask path)
    coco: dict = field(default_factory=dict)  # detect: the parsed annotation file
    category_of_label: dict = field(default_factory=dict)  # detect: model label -> COCO category id

    def __len__(self) -> int:
        return len(self.items)


def load_dataset(root: str | Path, task: str, class_names: list[str]) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--data {str(root)!r} is not a folder. Give a folder in the format of the model's task.")
    loaders = {"classify": _image_folder, "detect": _coco, "segment": _masks}
    data = loaders[task](root, class_names)
    if not len(data):
        raise UsageError(f"--data {str(root)!r} holds no {task} samples; see `lightdeploy eval --help` for the layout.")
    return data


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder(root: Path, class_names: list[str]) -> Dataset:
    index = {name: i for i, name in enumerate(class_names)}
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in index:
            label = index[folder.name]
        elif folder.name.isdigit() and int(folder.name) < len(class_names):
            label = int(folder.name)
        else:
            raise UsageError(
                f"Class folder {str(folder)!r} is neither one of the model's {len(class_names)} class names nor a "
                f"class index below {len(class_names)}. Rename it (e.g. {class_names[0]!r} or 0)."
            )
        items += [(path, label) for path in _images(folder)]
    return Dataset("classify", root, items)


def _coco(root: Path, class_names: list[str]) -> Dataset:
    candidates = [root / "annotations.json"] if (root / "annotations.json").is_file() else sorted(root.glob("*.json"))
    if len(candidates) != 1:
        raise UsageError(
            f"{str(root)!r} needs one COCO annotation file (annotations.json); found "
            f"{[p.name for p in candidates] or 'none'}."
        )
    path = candidates[0]
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{str(path)!r} is not JSON ({exc}).") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise UsageError(f"{str(path)!r} is not COCO detection JSON: it lacks the list {key!r}.")
    image_ids = set()
    for image in coco["images"]:
        if not {"id", "file_name"} <= set(image):
            raise UsageError(f"{str(path)!r}: an image entry lacks 'id' or 'file_name': {image}")
        image_ids.add(image["id"])
    category_ids = {c.get("id") for c in coco["categories"]}
    for ann in coco["annotations"]:
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UsageError(f"{str(path)!r}: annotation {ann.get('id')} has no bbox [x, y, w, h]: {box}")
        if box[2] < 0 or box[3] < 0:
            raise UsageError(f"{str(path)!r}: annotation {ann.get('id')} has a negative width or height: {box}")
        if ann.get("image_id") not in image_ids:
            raise UsageError(
                f"{str(path)!r}: annotation {ann.get('id')} names image_id {ann.get('image_id')}, "
                "which is not among the images."
            )
        if ann.get("category_id") not in category_ids:
            raise UsageError(
                f"{str(path)!r}: annotation {ann.get('id')} names category_id "
                f"{ann.get('category_id')}, which is not among the categories."
            )
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(box[2] * box[3]))
    # COCOeval marks a detection matched to annotation id 0 as unmatched (0 is its "no match"), so the
    # ids, used by nothing outside the evaluation, are renumbered from 1.
    for number, ann in enumerate(coco["annotations"], start=1):
        ann["id"] = number
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    if set(by_name) <= set(class_names):
        category_of_label = {i: by_name[name] for i, name in enumerate(class_names) if name in by_name}
    else:
        category_of_label = dict(enumerate(sorted(category_ids)))
    items = []
    for image in coco["images"]:
        file = root / "images" / image["file_name"]
        file = file if file.is_file() else root / image["file_name"]
        if not file.is_file():
            raise UsageError(f"{str(path)!r}: image {image['file_name']!r} is neither in images/ nor beside the JSON.")
        items.append((file, image["id"]))
    return Dataset("detect", root, items, coco=coco, category_of_label=category_of_label)


def _masks(root: Path, class_names: list[str]) -> Dataset:
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise UsageError(f"{str(root)!r} needs images/ and masks/ folders (masks/<stem>.png, uint8 class indices).")
    items = []
    for image in _images(images):
        mask = masks / f"{image.stem}.png"
        if not mask.is_file():
            raise UsageError(f"No mask for {image.name}: expected {str(mask)!r}.")
        items.append((image, mask))
    return Dataset("segment", root, items)


def read_mask(path: Path, num_classes: int, shape: tuple[int, int]):
    """A mask PNG as an [H, W] int64 array, checked against the image size and the class count."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise UsageError(f"Mask {str(path)!r} is {im.mode}; a mask is a single-channel PNG of class indices.")
        mask = np.asarray(im).astype(np.int64)
    if mask.shape != shape:
        raise UsageError(f"Mask {str(path)!r} is {mask.shape[1]}x{mask.shape[0]}, its image {shape[1]}x{shape[0]}.")
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise UsageError(
            f"Mask {str(path)!r} holds class indices {bad[:5].tolist()} outside the model's "
            f"{num_classes} classes (255 = ignore)."
        )
    return mask
