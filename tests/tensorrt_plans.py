"""Shared by the TensorRT tests: exporting a plan artifact through the pipeline, copying one, and the
marker for tests that need TensorRT and a CUDA device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SMALL = (64, 64)


def _trt_gpu() -> tuple[bool, str]:
    from lightdeploy.runtimes._tensorrt_env import trt_environment

    return trt_environment()


GPU_OK, GPU_WHY = _trt_gpu()
gpu = pytest.mark.skipif(not GPU_OK, reason=f"needs TensorRT and a CUDA device: {GPU_WHY[:160]}")


def export_plan(tmp_path, name="shufflenetv2_x0.5", precision="fp32", **kw):
    """Export a plan artifact through the pipeline, whose gate runs the plan's CPU estimate here (no GPU);
    raises ParityError when the estimate fails its row."""
    from lightdeploy.pipeline import export

    out = export(name, "trt", precision=precision, input_size=kw.pop("input_size", SMALL), out=tmp_path, **kw)
    return out.folder, out.manifest, out.report


def fp16_dynamic_plan(tmp_path_factory):
    """One FP16, dynamic-batch plan artifact, for a module's tests that only read it or copy it."""
    return export_plan(tmp_path_factory.mktemp("plans"), precision="fp16", dynamic_batch=True)


def copy_of(plan, tmp_path) -> Path:
    folder = tmp_path / plan[0].name
    shutil.copytree(plan[0], folder)
    return folder
