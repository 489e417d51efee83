"""``runtimes.load(dir, device=...)``: OpenVINO device names, ONNX Runtime providers in order with the
CPU as fallback, TensorRT GPU indices; what was asked and what runs is recorded in ``info``.  This
machine has a CPU only, so other devices are checked for their errors (exit 2 for an unknown name,
exit 3 for a device that is not here)."""

from __future__ import annotations

import pytest

from lightdeploy import runtimes
from lightdeploy.errors import MissingDependencyError, UsageError


def test_onnxruntime_providers_in_order_with_cpu_fallback(classifier_artifact):
    model = runtimes.load(classifier_artifact, device="cuda,cpu")
    assert model.info["providers"] == ["CPUExecutionProvider"]  # no CUDA build here: skipped, CPU runs
    assert model.info["providers_skipped"] == ["CUDAExecutionProvider"] and model.info["device"] == "cuda,cpu"
    assert runtimes.load(classifier_artifact, device=["CPUExecutionProvider"]).info["providers"] == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(UsageError, match="Unknown ONNX Runtime execution provider 'gpu9'") as info:
        runtimes.load(classifier_artifact, device="gpu9")
    assert info.value.exit_code == 2 and "cuda" in str(info.value)


@pytest.mark.xdist_group("cpu_artifacts")
def test_openvino_device_names(cpu_artifact):
    folder = cpu_artifact("shufflenetv2_x0.5", "openvino")
    model = runtimes.load(folder, device="AUTO")
    assert model.info["device"] == "AUTO" and model.info["execution_devices"] == ["CPU"]
    assert model.info["inference_precision"] == "f32"
    assert runtimes.load(folder, device="cpu").info["device"] == "CPU"
    with pytest.raises(MissingDependencyError, match="OpenVINO finds no GPU device here") as info:
        runtimes.load(folder, device="GPU")
    assert info.value.exit_code == 3
    with pytest.raises(MissingDependencyError, match="no NPU device"):
        runtimes.load(folder, device="AUTO:NPU,CPU")
    with pytest.raises(UsageError, match="Unknown OpenVINO device 'XPU'"):
        runtimes.load(folder, device="XPU")


@pytest.mark.xdist_group("cpu_artifacts")
def test_tflite_runs_on_the_cpu_only(cpu_artifact):
    folder = cpu_artifact("shufflenetv2_x0.5", "tflite")
    assert runtimes.load(folder, device="CPU").info["device"] == "CPU"
    with pytest.raises(UsageError, match="TFLite artifacts run on the CPU"):
        runtimes.load(folder, device="GPU")


def test_tensorrt_device_indices():
    from lightdeploy.runtimes.tensorrt import device_index

    assert [device_index(d) for d in (None, "GPU", "cuda", "GPU:1", "gpu.2", "cuda:3", 4)] == [0, 0, 0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="TensorRT runs on an NVIDIA GPU"):
        device_index("CPU")
