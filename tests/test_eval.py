"""``lightdeploy eval``: each data format read, scored and compared; malformed data refused (exit 2).

Each labelled set is written from eager's own predictions on the bundled photographs, so eager must
score exactly 1 (top-1, mAP@0.5, mIoU) and an fp32 artifact the same: a wrong label mapping,
preprocessing or box scaling anywhere in the evaluation would show.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from lightdeploy.errors import UsageError
from lightdeploy.evaluation.data import load_dataset
from lightdeploy.evaluation.run import evaluate, write_json

SIZE = (64, 64)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from lightdeploy.pipeline import export

    out = tmp_path_factory.mktemp("eval-artifacts")
    return {
        task: export(name, "onnx", input_size=SIZE, out=out).folder
        for task, name in (
            ("classify", "shufflenetv2_x0.5"),
            ("detect", "thundernet_snet49"),
            ("segment", "bisenet_xception39"),
        )
    }


def eager_predictor(folder):
    from lightdeploy.evaluation.run import _eager
    from lightdeploy.runtimes.manifest import read_manifest

    return _eager(read_manifest(folder))


def photos(n=5):
    from lightdeploy.samples import photographs

    return dict(list(photographs().items())[:n])


def test_classification_image_folder(artifacts, tmp_path):
    predictor = eager_predictor(artifacts["classify"])
    for name, rgb in photos().items():
        label = predictor.predict(rgb)[0].index
        (tmp_path / str(label)).mkdir(exist_ok=True)  # folder named by class index
        Image.fromarray(rgb).save(tmp_path / str(label) / f"{name}.png")
    rows = evaluate([str(artifacts["classify"])], tmp_path)
    assert [r.runtime for r in rows] == ["eager", "onnxruntime/fp32"]
    assert rows[0].metrics["top1"] == 1.0 and rows[0].metrics["images"] == 5
    assert rows[1].metrics["top1"] == 1.0 and rows[1].delta == 0.0
    write_json(rows, tmp_path / "rows.json")
    assert json.loads((tmp_path / "rows.json").read_text())[1]["delta"] == 0.0


def test_detection_coco(artifacts, tmp_path):
    predictor = eager_predictor(artifacts["detect"])
    (tmp_path / "images").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 100 + i, "name": f"c{i}"} for i in range(80)]}
    found = {}
    for image_id, (name, rgb) in enumerate(photos().items()):
        Image.fromarray(rgb).save(tmp_path / "images" / f"{name}.png")
        coco["images"].append(
            {"id": image_id, "file_name": f"{name}.png", "height": rgb.shape[0], "width": rgb.shape[1]}
        )
        found[image_id] = predictor.predict(rgb)
    # Eager's confident detections are the ground truth; COCO never matches a zero-area box, so the
    # threshold sits above every degenerate detection (each would be a false positive ranked first).
    degenerate = [float(s) for d in found.values() for b, s in zip(d.boxes, d.scores) if min(b[2:] - b[:2]) < 1]
    threshold = max([0.5, *(np.nextafter(s, 1) for s in degenerate)])
    for image_id, dets in found.items():
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
            if score >= threshold:
                x1, y1, x2, y2 = (float(v) for v in box)
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]),
                        "image_id": image_id,
                        "category_id": 100 + int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                    }
                )
    assert coco["annotations"], "the random detector gives no confident detection to build a ground truth from"
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    rows = evaluate([str(artifacts["detect"])], tmp_path)
    eager, onnx = rows
    assert eager.metrics["map50"] == pytest.approx(1.0) and eager.metrics["images"] == 5
    assert 0.0 <= eager.metrics["map50_95"] <= 1.0
    assert onnx.metrics["map50"] == pytest.approx(1.0, abs=0.02)


def test_segmentation_masks(artifacts, tmp_path):
    predictor = eager_predictor(artifacts["segment"])
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, rgb in photos(3).items():
        Image.fromarray(rgb).save(tmp_path / "images" / f"{name}.jpg", quality=95)
        rgb = np.asarray(Image.open(tmp_path / "images" / f"{name}.jpg"))  # what eval will read
        Image.fromarray(predictor.predict(rgb).mask.astype(np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    eager, onnx = evaluate([str(artifacts["segment"])], tmp_path)
    assert eager.metrics["miou"] == 1.0 and eager.metrics["pixel_accuracy"] == 1.0
    assert onnx.metrics["pixel_accuracy"] > 0.999


# ------------------------------------------------------------------------------- malformed data
def write_coco(tmp_path, **changes):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
    }
    for key, value in changes.items():
        if key == "annotation":
            coco["annotations"][0].update(value)
        else:
            coco[key] = value
    (tmp_path / "annotations.json").write_text(json.dumps(coco))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"annotation": {"bbox": [0, 0, 4]}}, "no bbox"),
        ({"annotation": {"bbox": [0, 0, -1, 4]}}, "negative width"),
        ({"annotation": {"image_id": 7}}, "not among the images"),
        ({"annotation": {"category_id": 9}}, "not among the categories"),
        ({"categories": None}, "lacks the list 'categories'"),
        ({"images": [{"id": 1, "file_name": "missing.png"}]}, "neither in images/"),
    ],
)
def test_malformed_coco_is_refused(tmp_path, change, message):
    write_coco(tmp_path, **change)
    with pytest.raises(UsageError, match=message):
        load_dataset(tmp_path, "detect", ["person"])


def test_malformed_image_folder_and_masks(tmp_path):
    (tmp_path / "cls" / "not_a_class").mkdir(parents=True)
    with pytest.raises(UsageError, match="neither one of the model's"):
        load_dataset(tmp_path / "cls", "classify", ["cat", "dog"])
    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(seg / "images" / "a.png")
    with pytest.raises(UsageError, match="No mask for a.png"):
        load_dataset(seg, "segment", ["bg", "fg"])
    from lightdeploy.evaluation.data import read_mask

    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(seg / "masks" / "a.png")
    with pytest.raises(UsageError, match="outside the model's 2 classes"):
        read_mask(seg / "masks" / "a.png", 2, (8, 8))
    with pytest.raises(UsageError, match="is 8x8, its image 4x4"):
        read_mask(seg / "masks" / "a.png", 9, (4, 4))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(seg / "masks" / "a.png")
    with pytest.raises(UsageError, match="single-channel"):
        read_mask(seg / "masks" / "a.png", 2, (8, 8))


def test_cli_exit_2_on_malformed_annotations(artifacts, tmp_path):
    write_coco(tmp_path, annotation={"bbox": "oops"})
    result = run_cli("eval", str(artifacts["detect"]), "--data", str(tmp_path), "--quiet")
    assert result.returncode == 2 and "no bbox" in result.stderr


def test_a_model_given_beside_its_artifact_is_scored_once(tmp_path):
    """`eval MODEL MODEL-onnx-fp32`: the name's eager run is the artifact's eager reference (same source)."""
    from lightdeploy.eager import eager_manifest
    from lightdeploy.evaluation.run import _default_source
    from lightdeploy.pipeline import export
    from lightdeploy.runtimes.manifest import read_manifest

    folder = export("shufflenetv2_x0.5", "onnx", out=tmp_path, parity=False).folder
    recorded = read_manifest(folder, verify=False)["source"]
    ours = _default_source("shufflenetv2_x0.5", eager_manifest("shufflenetv2_x0.5"))
    assert json.dumps(ours, sort_keys=True) == json.dumps(recorded, sort_keys=True)
