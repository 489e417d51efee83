"""What ``runtimes.load`` refuses before anything runs, each with its message; and what an export
keeps when its gate fails.

The tampering cases are issue 14's: an empty ``files`` table with a flipped byte in the model, a
``backend_file`` outside the folder, a failed or missing parity verdict, a corrupt model file whose
hash was re-recorded; plus a link out of the folder and an unlisted weights file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from conftest import run_cli

from lightdeploy import runtimes
from lightdeploy.artifact import write_manifest
from lightdeploy.errors import ArtifactError, ParityError


def copy_of(folder, tmp_path, name="copy"):
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    return copy


def edit_manifest(folder, rehash: bool = False, **changes) -> dict:
    """Change manifest fields (None deletes one); ``rehash`` records the files' current hashes."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    if rehash:
        return write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------- files
def test_an_empty_files_table_does_not_vouch_for_a_changed_model(classifier_artifact, tmp_path):
    copy = copy_of(classifier_artifact, tmp_path)
    flip_a_byte(copy / "model.onnx")
    edit_manifest(copy, files={})
    with pytest.raises(ArtifactError, match="does not list model.onnx in 'files'"):
        runtimes.load(copy)


def test_a_backend_file_outside_the_folder_is_refused(classifier_artifact, tmp_path):
    copy = copy_of(classifier_artifact, tmp_path)
    shutil.copyfile(copy / "model.onnx", tmp_path / "outside.onnx")
    edit_manifest(copy, backend_file="../outside.onnx")
    with pytest.raises(ArtifactError, match="leaves the artifact folder"):
        runtimes.load(copy)
    edit_manifest(copy, backend_file="model.onnx", files={"../outside.onnx": "0" * 64})
    with pytest.raises(ArtifactError, match="leaves the artifact folder"):
        runtimes.load(copy)


def test_a_link_out_of_the_folder_is_refused(classifier_artifact, tmp_path):
    """The link's target has the right hash: only the path gives it away."""
    copy = copy_of(classifier_artifact, tmp_path)
    (copy / "model.onnx").rename(tmp_path / "elsewhere.onnx")
    (copy / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        runtimes.load(copy)


@pytest.mark.xdist_group("cpu_artifacts")
def test_openvino_weights_must_be_listed(cpu_artifact, tmp_path):
    copy = copy_of(cpu_artifact("shufflenetv2_x0.5", "openvino"), tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit_manifest(copy, files={k: v for k, v in manifest["files"].items() if k != "model.bin"})
    with pytest.raises(ArtifactError, match="does not list model.bin"):
        runtimes.load(copy)


# -------------------------------------------------------------------------------------- verdict
def test_a_failed_verdict_is_refused_unless_allowed(classifier_artifact, tmp_path):
    copy = copy_of(classifier_artifact, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    report = manifest["parity"]
    report["passed"] = False
    report["checks"][0].update(passed=False, value=0.9)
    edit_manifest(copy, parity=report)
    with pytest.raises(ArtifactError, match=r"failed its parity gate \(logits cosine = 0\.9") as info:
        runtimes.load(copy)
    assert "allow_unverified=True" in str(info.value) and "--allow-unverified" in str(info.value)
    model = runtimes.load(copy, allow_unverified=True)
    assert model.info["verdict"].startswith("UNVERIFIED: it failed its parity gate")
    r = run_cli("predict", str(copy), "x.png")
    assert r.returncode == 2 and "failed its parity gate" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", str(copy), "--runs", "1", "--warmup", "0")
    assert r.returncode == 2 and "--allow-unverified" in r.stderr


def test_an_artifact_never_gated_is_refused(tmp_path, cat_image):
    from PIL import Image

    from lightdeploy.pipeline import export

    folder = export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), parity=False, out=tmp_path).folder
    with pytest.raises(ArtifactError, match="parity gate never ran"):
        runtimes.load(folder)
    Image.fromarray(cat_image).save(tmp_path / "cat.png")
    r = run_cli("predict", str(folder), str(tmp_path / "cat.png"), "--allow-unverified", "--out", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "never ran" in r.stderr


def test_an_estimated_verdict_counts_and_says_so(classifier_artifact, tmp_path):
    copy = copy_of(classifier_artifact, tmp_path)
    report = json.loads((copy / "manifest.json").read_text())["parity"]
    edit_manifest(copy, parity={**report, "estimated": True, "method": "the plan's ONNX in ONNX Runtime"})
    model = runtimes.load(copy)
    assert model.info["verdict"] == "parity passed on a CPU estimate (the plan's ONNX in ONNX Runtime)"


# ---------------------------------------------------------------------- corrupt files, matching hashes
@pytest.mark.xdist_group("cpu_artifacts")
@pytest.mark.parametrize("target,file", [("onnx", "model.onnx"), ("openvino", "model.xml"), ("tflite", "model.tflite")])
def test_a_corrupt_model_with_a_matching_hash_is_an_artifact_error(target, file, cpu_artifact, tmp_path):
    copy = copy_of(cpu_artifact("shufflenetv2_x0.5", target), tmp_path)
    (copy / file).write_bytes(b"not a model at all")
    edit_manifest(copy, rehash=True)  # the hashes vouch for the garbage: the backend must still not crash
    with pytest.raises(ArtifactError, match=file) as info:
        runtimes.load(copy)
    assert "cannot" in str(info.value)
    r = run_cli("predict", str(copy), "x.png")
    assert r.returncode == 2 and file in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- a failed export
def test_a_failed_export_never_replaces_a_good_artifact(tmp_path, monkeypatch):
    from lightdeploy.parity import gate
    from lightdeploy.pipeline import export

    good = export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=tmp_path).folder
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.name != "export_log.json"}
    impossible = replace(gate.tolerance_for("onnxruntime", "fp32"), cosine_min=1.5)  # no artifact reaches it
    monkeypatch.setattr(gate, "tolerance_for", lambda backend, precision: impossible)
    with pytest.raises(ParityError) as info:
        export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=tmp_path)
    failed = tmp_path / "shufflenetv2_x0.5-onnx-fp32.failed"
    assert info.value.folder == failed and f"kept at {failed}" in str(info.value) and "is unchanged" in str(info.value)
    assert {p.name: p.read_bytes() for p in good.iterdir() if p.name != "export_log.json"} == before
    assert json.loads((failed / "manifest.json").read_text())["parity"]["passed"] is False
    with pytest.raises(ArtifactError, match="failed its parity gate"):
        runtimes.load(failed)
    monkeypatch.undo()
    export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=tmp_path)
    assert not failed.exists()  # a passing export clears the stale failure beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shufflenetv2_x0.5-onnx-fp32"]


def test_a_failed_first_export_leaves_nothing_at_the_name(tmp_path, monkeypatch):
    from lightdeploy.parity import gate
    from lightdeploy.pipeline import export

    impossible = replace(gate.tolerance_for("onnxruntime", "fp32"), cosine_min=1.5)
    monkeypatch.setattr(gate, "tolerance_for", lambda backend, precision: impossible)
    with pytest.raises(ParityError, match="nothing was written at"):
        export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shufflenetv2_x0.5-onnx-fp32.failed"]
