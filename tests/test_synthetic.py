"""The procedural shapes dataset: determinism, label consistency, and files that standard tools read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lightdeploy.datasets import synthetic, writers


def _equal(a: synthetic.Sample, b: synthetic.Sample) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("image", "boxes", "labels", "instances", "mask"))


def test_same_seed_same_samples_and_any_sample_alone():
    first = [s for s, _ in zip(synthetic.stream(seed=3, size=128), range(4))]
    again = [s for s, _ in zip(synthetic.stream(seed=3, size=128), range(4))]
    assert all(_equal(a, b) for a, b in zip(first, again))
    assert _equal(synthetic.render_sample(3, "train", 2, 128), first[2])  # no hidden state
    assert not _equal(synthetic.render_sample(4, "train", 0, 128), first[0])


def test_heldout_is_fixed_and_disjoint_from_train():
    a = synthetic.heldout(5, size=96)
    b = synthetic.heldout(5, size=96)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not set(synthetic.HELDOUT_PHOTOS) & set(synthetic.TRAIN_PHOTOS)
    # the same index in the two splits is drawn from different generators
    assert not _equal(synthetic.render_sample(synthetic.HELDOUT_SEED, "train", 0, 96), a[0])


@pytest.mark.parametrize("index", range(12))
def test_boxes_masks_and_labels_agree(index):
    s = synthetic.render_sample(0, "train", index, (160, 192))
    n = len(s.labels)
    assert 1 <= n <= synthetic.MAX_OBJECTS
    assert s.image.shape == (160, 192, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (160, 192) and s.instances.shape == (n, 160, 192)
    assert set(s.labels.tolist()) <= set(range(1, len(synthetic.CLASSES) + 1))
    assert not (s.instances.sum(axis=0) > 1).any()  # each pixel belongs to at most one object
    for box, label, inst in zip(s.boxes, s.labels, s.instances):
        ys, xs = np.nonzero(inst)
        assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight visible box
        assert (s.mask[inst] == label).all()
    assert ((s.mask > 0) == s.instances.any(axis=0)).all()  # background exactly where no object


def test_every_object_stays_visible_under_occlusion():
    for index in range(20):
        s = synthetic.render_sample(0, "train", index, 160)
        assert (s.areas > 0).all()
        box_area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
        assert (s.areas <= box_area).all()


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((7, 9)) < 0.4
        counts = writers.rle_encode(mask)["counts"]
        flat = np.concatenate([np.full(c, i % 2, bool) for i, c in enumerate(counts)])
        assert np.array_equal(flat.reshape(9, 7).T, mask)  # column-major runs


def test_written_split_reads_with_pycocotools(tmp_path):
    pycocotools = pytest.importorskip("pycocotools.coco", reason="pycocotools not installed")
    samples = synthetic.heldout(6, size=128)
    out = writers.write_heldout(tmp_path / "heldout", n=6, size=128)
    coco = pycocotools.COCO(str(out / writers.ANNOTATIONS_FILE))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(synthetic.CLASSES)
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    classes = json.loads((out / writers.CLASSES_FILE).read_text())
    assert classes == ["background", *synthetic.CLASSES]
    for image_id, sample in zip(range(1, 7), samples):
        info = coco.loadImgs(image_id)[0]
        image = np.asarray(Image.open(out / writers.IMAGES_DIR / info["file_name"]))
        assert np.array_equal(image, sample.image)
        mask = writers.read_mask(out / writers.MASKS_DIR / info["file_name"])
        assert mask.dtype == np.uint8 and np.array_equal(mask, sample.mask)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == len(sample.labels)
        for ann, box, label, inst in zip(anns, sample.boxes, sample.labels, sample.instances):
            x, y, w, h = ann["bbox"]
            assert np.allclose([x, y, x + w, y + h], box)
            assert ann["category_id"] == label and ann["iscrowd"] == 0
            assert ann["area"] == inst.sum()
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst)


def test_cocoeval_scores_ground_truth_as_perfect(tmp_path):
    pytest.importorskip("pycocotools.cocoeval", reason="pycocotools not installed")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = writers.write_heldout(tmp_path / "h", n=8, size=128)
    gt = COCO(str(out / writers.ANNOTATIONS_FILE))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.loadAnns(gt.getAnnIds())
    ]
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)  # mAP@0.5


# ------------------------------------------------------------ the trainer's detection targets
def _losses_module():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import detection_losses

    return detection_losses


def test_box_encoding_inverts_the_models_decode():
    import torch

    from lightdeploy.models import _detection as det

    losses = _losses_module()
    ref = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 32.0, 64.0]])
    boxes = torch.tensor([[12.0, 18.0, 60.0, 45.0], [4.0, 8.0, 20.0, 30.0]])
    for stds in [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)]:
        assert torch.allclose(det.decode(losses.encode(boxes, ref, stds), ref, stds), boxes, atol=1e-4)


def test_detector_losses_on_a_synthetic_batch():
    import torch

    import lightdeploy

    losses = _losses_module()
    torch.manual_seed(0)
    model = lightdeploy.create_model(
        "thundernet_snet49", num_classes=len(synthetic.CLASSES), input_size=(128, 128), calibrate_bn=False
    ).train()
    samples = [synthetic.render_sample(0, "train", i, 128) for i in range(2)]
    images = torch.randn(2, 3, 128, 128)
    targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels)} for s in samples]
    out = losses.detector_losses(model, images, targets, torch.Generator().manual_seed(0))
    assert set(out) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    sum(out.values()).backward()
    assert model.head.cls.weight.grad.abs().sum() > 0 and model.rpn.cls.weight.grad.abs().sum() > 0
