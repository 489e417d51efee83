"""``lightdeploy check MODEL|FACTORY|ONNX_FILE --to TARGET``: operator support before any build.

A model (registered, or your own from its factory) is traced with the pipeline's own job, as the
target's export traces it, and checked with the target's own knowledge (``exporters/<backend>/check.py``):

- trt: the ONNX export, TensorRT's exact rewrites, then TensorRT's ONNX operator table;
- openvino: the ONNX export, then OpenVINO's ONNX frontend (partial conversion) and CPU plugin query;
- tflite: the traced program against litert-torch's lowering table (TFLite converts from PyTorch).

Every unsupported op is named with the nn.Module that produced it.  A custom op without an ONNX
translation stops the ONNX export itself, with a UsageError naming it and its module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.exporters import resolve_target
from lightdeploy.exporters.base import ExportJob, ExportOptions
from lightdeploy.jobs import make_job
from lightdeploy.usermodel import UserModel

CHECK_TARGETS = ("trt", "openvino", "tflite")


def check_model(
    model: str | UserModel,
    *,
    target: str = "trt",
    input_size: tuple[int, int] | None = None,
    opset: int = 18,
    dynamic_batch: bool = False,
    extra: dict | None = None,
):
    """The ``target`` check of a registered model (by name) or of your own (``UserModel``).

    Weights do not change the graph's operators, so a registered model is built with random weights
    and no BN re-estimation.
    """
    from lightdeploy.factory import create_model
    from lightdeploy.models.registry import get_spec

    target = _check_target(target)
    if isinstance(model, UserModel):
        spec, module = model.spec, model.deployable()
        size = spec.input_size
    else:
        spec = get_spec(model)
        size = spec.check_input_size(input_size or spec.input_size)
        module = create_model(model, input_size=size, calibrate_bn=False)
    options = ExportOptions(
        target=target, input_size=size, dynamic_batch=dynamic_batch, opset=opset, extra=dict(extra or {})
    )
    return check_job(make_job(spec, module, options))


def check_job(job: ExportJob):
    """Check an export job with its target's checker (``job.options.target``)."""
    target = job.options.target
    if target == "tflite":
        from lightdeploy.exporters.tflite.check import check_job as check_tflite

        return check_tflite(job)
    import onnx

    from lightdeploy.exporters.onnx.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="lightdeploy-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(job, path)
        model = onnx.load(str(path))
    if target == "openvino":
        from lightdeploy.exporters.openvino.check import check_onnx as check_openvino

        return check_openvino(model, subject=job.spec.name)
    from lightdeploy.exporters.tensorrt.check import check_prepared

    return check_prepared(model, subject=job.spec.name)


def check(subject: str | UserModel, target: str, *, input_size: tuple[int, int] | None = None, opset: int = 18):
    """The CLI entry: an existing ``.onnx`` file, a registered model name, or your own model."""
    target = _check_target(target)
    if isinstance(subject, str):
        path = Path(subject)
        if path.suffix == ".onnx" or path.is_file():
            return _check_onnx_file(path, target)
    return check_model(subject, target=target, input_size=input_size, opset=opset)


def _check_onnx_file(path: Path, target: str):
    if target == "tflite":
        raise UsageError(
            "TFLite artifacts are converted from the PyTorch model, not from ONNX: check a model name or a "
            "factory (pkg.module:function) with --to tflite."
        )
    if target == "openvino":
        from lightdeploy.exporters.openvino.check import check_onnx as check_openvino

        return check_openvino(path)
    from lightdeploy.exporters.tensorrt.check import check_onnx

    return check_onnx(path)


def _check_target(target: str) -> str:
    """The canonical name of a checkable target (aliases resolved: ``tensorrt`` -> ``trt``)."""
    canonical = resolve_target(target)
    if canonical not in CHECK_TARGETS:
        raise UsageError(
            f"`lightdeploy check --to {target}` is not available; checks exist for: {', '.join(CHECK_TARGETS)}."
        )
    return canonical
