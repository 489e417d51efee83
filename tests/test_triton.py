"""``lightdeploy triton``: every config.pbtxt parses as Triton's ModelConfig protobuf and says what the
artifact is (names, types, dims, batching, instance groups); the model files are the artifact's own.

Parsed with ``google.protobuf.text_format`` into ``tritonclient.grpc.model_config_pb2.ModelConfig``
(tritonclient: a test-only dependency in the `dev` extra).  No server runs here; docs/triton.md shows
how to run Triton's container on the repository.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli
from fake_tensorrt import install

from lightdeploy.errors import ArtifactError, UsageError
from lightdeploy.triton import write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (dev extra)")
text_format = pytest.importorskip("google.protobuf.text_format")

CLASSIFIER, DETECTOR = "shufflenetv2_x0.5", "thundernet_snet49"


def parse(model_folder):
    return text_format.Parse((model_folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def dims(tensor) -> list[int]:
    return list(tensor.dims)


@pytest.mark.xdist_group("cpu_artifacts")
def test_onnx_classifier_with_a_fixed_batch(cpu_artifact, tmp_path):
    art = cpu_artifact(CLASSIFIER, "onnx")
    (folder,) = write_repository([art], tmp_path / "repo", instances=2)
    config = parse(folder)
    assert config.name == art.name == folder.name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")  # batch fixed at 1
    assert [(t.name, dims(t)) for t in config.input] == [("image", [1, 3, 64, 64])]
    assert [(t.name, dims(t)) for t in config.output] == [("logits", [1, 1000])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (folder / "1" / "model.onnx").read_bytes() == (art / "model.onnx").read_bytes()
    assert json.loads((folder / "lightdeploy_manifest.json").read_text())["preprocessing"]["size"] == [64, 64]


def test_a_dynamic_batch_gets_dynamic_batching(tmp_path):
    from lightdeploy.pipeline import export

    art = export(CLASSIFIER, "onnx", input_size=(64, 64), dynamic_batch=True, out=tmp_path / "a").folder
    (folder,) = write_repository([art], tmp_path / "repo")
    config = parse(folder)
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert dims(config.input[0]) == [3, 64, 64] and dims(config.output[0]) == [1000]  # batch dim left out
    (folder,) = write_repository([art], tmp_path / "repo", max_batch=4)  # rewritten in place
    assert parse(folder).max_batch_size == 4


@pytest.mark.xdist_group("cpu_artifacts")
def test_openvino_detector(cpu_artifact, tmp_path):
    art = cpu_artifact(DETECTOR, "openvino")
    (folder,) = write_repository([art], tmp_path / "repo", mode="throughput")
    config = parse(folder)
    assert config.backend == "openvino" and config.max_batch_size == 0
    outputs = {t.name: (dims(t), t.data_type) for t in config.output}
    assert outputs == {
        "boxes": ([1, 100, 4], model_config_pb2.TYPE_FP32),
        "scores": ([1, 100], model_config_pb2.TYPE_FP32),
        "labels": ([1, 100], model_config_pb2.TYPE_INT64),
        "num_detections": ([1], model_config_pb2.TYPE_INT64),
    }
    assert config.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.bin", "model.xml"]


@pytest.mark.xdist_group("cpu_artifacts")
def test_class_names_become_the_label_file(cpu_artifact, tmp_path):
    art = tmp_path / "named"
    shutil.copytree(cpu_artifact(CLASSIFIER, "onnx"), art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["class_names"] = [f"thing {i}" for i in range(1000)]
    (art / "manifest.json").write_text(json.dumps(manifest))  # the manifest itself is not hashed
    (folder,) = write_repository([art], tmp_path / "repo")
    assert parse(folder).output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines()[999] == "thing 999"


def test_tensorrt_engine(tmp_path, monkeypatch):
    from lightdeploy.build import build
    from lightdeploy.pipeline import export

    plan = export(CLASSIFIER, "trt", input_size=(64, 64), dynamic_batch=True, out=tmp_path / "a").folder
    with pytest.raises(UsageError, match="build plan without an engine"):
        write_repository([plan], tmp_path / "repo")
    install(monkeypatch)
    build(plan)
    (folder,) = write_repository([plan], tmp_path / "repo")
    config = parse(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8  # the engine's profile maximum
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == (plan / "model.engine").read_bytes()
    with pytest.raises(UsageError, match="allows batches up to 8"):
        write_repository([plan], tmp_path / "repo", max_batch=16)


def test_refusals(classifier_artifact, tmp_path):
    manifest = json.loads((classifier_artifact / "manifest.json").read_text())
    tflite = tmp_path / "tfl"
    shutil.copytree(classifier_artifact, tflite)
    (tflite / "manifest.json").write_text(json.dumps({**manifest, "backend": "tflite", "target": "tflite"}))
    # (a TFLite backend opening model.onnx is refused for Triton before the file matters)
    with pytest.raises(UsageError, match="no official TFLite backend"):
        write_repository([tflite], tmp_path / "repo")
    unverified = tmp_path / "unverified"
    shutil.copytree(classifier_artifact, unverified)
    (unverified / "manifest.json").write_text(json.dumps({**manifest, "parity": None}))
    with pytest.raises(ArtifactError, match="never ran"):
        write_repository([unverified], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # nothing written when one artifact is refused
    assert write_repository([unverified], tmp_path / "repo", allow_unverified=True)
    with pytest.raises(UsageError, match="fixed batch"):
        write_repository([classifier_artifact], tmp_path / "repo", max_batch=4)


def test_cli(classifier_artifact, tmp_path):
    r = run_cli("triton", str(classifier_artifact), "--repo", str(tmp_path / "repo"), "--instances", "3")
    assert r.returncode == 0, r.stderr
    config = parse(tmp_path / "repo" / classifier_artifact.name)
    assert config.instance_group[0].count == 3
    r = run_cli("triton", str(classifier_artifact), "--repo", str(tmp_path / "repo"), "--mode", "fast")
    assert r.returncode == 2 and "--mode must be one of" in r.stderr


def test_the_config_names_what_the_model_has(classifier_artifact, tmp_path):
    """Triton matches config names against the model: they are the ONNX graph's own."""
    import onnxruntime as ort

    (folder,) = write_repository([classifier_artifact], tmp_path / "repo")
    config = parse(folder)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [t.name for t in config.input] == [i.name for i in session.get_inputs()]
    assert [t.name for t in config.output] == [o.name for o in session.get_outputs()]
    x = np.zeros(dims(config.input[0]), np.float32)
    assert session.run(None, {"image": x})[0].shape == tuple(dims(config.output[0]))
