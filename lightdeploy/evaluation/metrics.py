"""Accuracy metrics per task, each fed one prediction at a time and summarised at the end.

Detection mAP is COCO's own (pycocotools' COCOeval), never re-implemented here.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from lightdeploy.errors import require
from lightdeploy.evaluation.data import IGNORE_INDEX, Dataset


class ClassifyMetric:
    def __init__(self, data: Dataset):
        self.hits1 = self.hits5 = self.count = 0

    def add(self, item, prediction) -> None:
        _, label = item
        top = [p.index for p in prediction]
        self.hits1 += int(top[0] == label)
        self.hits5 += int(label in top[:5])
        self.count += 1

    def result(self) -> dict:
        return {"top1": self.hits1 / self.count, "top5": self.hits5 / self.count, "images": self.count}


class DetectMetric:
    def __init__(self, data: Dataset):
        self.data = data
        self.results: list[dict] = []

    def add(self, item, detections) -> None:
        _, image_id = item
        for box, score, label in zip(detections.boxes, detections.scores, detections.labels):
            if int(label) not in self.data.category_of_label:
                continue  # a class the annotation file does not list
            x1, y1, x2, y2 = (float(v) for v in box)
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": self.data.category_of_label[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )

    def result(self) -> dict:
        require("pycocotools", package="pycocotools", extra="eval", purpose="Detection mAP (COCOeval)")
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress and summary table
            truth = COCO()
            truth.dataset = self.data.coco
            truth.createIndex()
            if not self.results:
                return {"map50": 0.0, "map50_95": 0.0, "images": len(self.data), "detections": 0}
            found = truth.loadRes(self.results)
            run = COCOeval(truth, found, "bbox")
            run.evaluate()
            run.accumulate()
            run.summarize()
        return {
            "map50": float(run.stats[1]),
            "map50_95": float(run.stats[0]),
            "images": len(self.data),
            "detections": len(self.results),
        }


class SegmentMetric:
    def __init__(self, data: Dataset, num_classes: int):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def add(self, item, segmentation) -> None:
        from lightdeploy.evaluation.data import read_mask

        truth = read_mask(item[1], self.num_classes, segmentation.mask.shape)
        keep = truth != IGNORE_INDEX
        index = truth[keep] * self.num_classes + segmentation.mask[keep]
        self.confusion += np.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def result(self) -> dict:
        c = self.confusion
        truth, predicted, hit = c.sum(1), c.sum(0), np.diag(c)
        present = truth > 0  # mIoU over the classes the ground truth holds
        iou = hit[present] / (truth[present] + predicted[present] - hit[present])
        return {
            "miou": float(iou.mean()) if iou.size else 0.0,
            "pixel_accuracy": float(hit.sum() / max(c.sum(), 1)),
            "classes": int(present.sum()),
        }


def metric_for(data: Dataset, num_classes: int):
    if data.task == "classify":
        return ClassifyMetric(data)
    if data.task == "detect":
        return DetectMetric(data)
    return SegmentMetric(data, num_classes)


# The headline figure per task (the table's "delta" column compares these).
HEADLINE = {"classify": "top1", "detect": "map50", "segment": "miou"}
