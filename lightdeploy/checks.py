"""``lightdeploy check MODEL|ONNX_FILE --to TARGET``: operator support before any build.

A registered model is exported to a temporary ONNX file with the pipeline's own job and exporter step
(``write_onnx``), and checked as the target's export would check it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.exporters.base import ExportOptions
from lightdeploy.jobs import make_job

CHECK_TARGETS = ("trt",)


def check_model(
    name: str,
    *,
    input_size: tuple[int, int] | None = None,
    opset: int = 18,
    dynamic_batch: bool = False,
    extra: dict | None = None,
):
    """The TensorRT check of a registered model, after the export's exact rewrites, as export does.

    Weights do not change the graph's operators, so the model is built with random weights and no
    BN re-estimation.
    """
    import onnx

    from lightdeploy.exporters.onnx.export import export_onnx
    from lightdeploy.exporters.tensorrt.check import check_prepared
    from lightdeploy.factory import create_model
    from lightdeploy.models.registry import get_spec

    spec = get_spec(name)
    size = spec.check_input_size(input_size or spec.input_size)
    model = create_model(name, input_size=size, calibrate_bn=False)
    options = ExportOptions(
        target="trt", input_size=size, dynamic_batch=dynamic_batch, opset=opset, extra=dict(extra or {})
    )
    job = make_job(spec, model, options)
    with tempfile.TemporaryDirectory(prefix="lightdeploy-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(job, path)
        return check_prepared(onnx.load(str(path)), subject=name)


def check(subject: str, target: str, *, input_size: tuple[int, int] | None = None, opset: int = 18):
    """The CLI entry: an existing ``.onnx`` file, or a registered model name."""
    if target not in CHECK_TARGETS:
        raise UsageError(
            f"`lightdeploy check --to {target}` is not available; operator tables exist for: "
            f"{', '.join(CHECK_TARGETS)}."
        )
    from lightdeploy.exporters.tensorrt.check import check_onnx

    path = Path(subject)
    if path.suffix == ".onnx" or path.is_file():
        return check_onnx(path)
    return check_model(subject, input_size=input_size, opset=opset)
