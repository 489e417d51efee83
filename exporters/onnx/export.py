"""ONNX export: ``torch.onnx.export(dynamo=True)`` with the custom-op translations, checked and simplified.

The ONNX file is the root of the ONNX Runtime, OpenVINO, TFLite and TensorRT artifacts (every artifact
keeps it, docs/design.md#artifact), so ``export_onnx`` is shared by those exporters.  Steps: export with
explicit names -> verify that requested dynamic dims really are symbolic (the dynamo exporter silently
re-specialises a dim the model code fixes) -> onnx.checker -> onnxsim -> lightdeploy metadata in
``metadata_props`` -> save as one file.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx.graph import graph_io, restore_node_metadata
from lightdeploy.logs import quiet
from lightdeploy.versions import __version__

# The dynamo exporter writes opset 18 natively; onnxruntime 1.32 has no RoiAlign-22 kernel (opset 22+).
MIN_OPSET, MAX_OPSET = 18, 21
ONNX_FILE = "model.onnx"


def dynamic_dims(job: ExportJob) -> dict[int, str]:
    """{input axis: symbolic name} requested by the options."""
    dims = {}
    if job.options.dynamic_batch:
        dims[0] = "batch"
    if job.options.dynamic_size:
        dims.update({2: "height", 3: "width"})
    return dims


def export_onnx(job: ExportJob, path: Path, *, metadata: dict | None = None) -> dict:
    """Export ``job.model`` to ``path`` (one file, no external data); return facts for the manifest."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="ONNX export")
    require("onnxscript", package="onnxscript", extra="onnx", purpose="ONNX export")
    opset = job.options.opset
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} (18 is the default; the "
            f"exporter writes 18 natively and ONNX Runtime 1.32 lacks kernels for some opset-22 ops)."
        )
    import torch

    from lightdeploy.ops import onnx_translation_table

    dims = dynamic_dims(job)
    table = onnx_translation_table()
    # The exporter logs e.g. "torchvision is not installed. Skipping torchvision::nms".
    with quiet("torch.onnx"):
        try:
            program = torch.onnx.export(
                job.model,
                (job.example_input(),),
                dynamo=True,
                external_data=False,
                input_names=[job.input_name],
                output_names=list(job.output_names),
                opset_version=opset,
                dynamic_shapes=({i: name for i, name in dims.items()},) if dims else None,
                custom_translation_table=table,
                verbose=False,
            )
        except torch.onnx.OnnxExporterError as exc:
            _raise_if_untranslated(job, table, exc)
            raise
    model = program.model_proto
    check_symbolic(model, dims)
    onnx.checker.check_model(model, full_check=True)
    model, simplified = _simplify(model)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "lightdeploy"
    onnx.save(model, str(path))
    return {
        "opset": opset,
        "simplified": simplified,
        "nodes": len(model.graph.node),
        "op_types": sorted({n.op_type for n in model.graph.node}),
        "dynamic_dims": {str(k): v for k, v in dims.items()},
    }


def _raise_if_untranslated(job: ExportJob, table: dict, exc: Exception) -> None:
    """A custom op without an ONNX translation fails the export deep inside torch.onnx; name the op and
    the module that calls it instead (every ONNX-based target needs the translation)."""
    from lightdeploy.exporters import program

    try:
        missing = program.custom_ops_missing(program.exported_program(job), table)
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; the exporter's own error stands
        return
    if missing:
        raise UsageError(
            f"{job.spec.name} calls custom op(s) that have no ONNX translation: {program.describe(missing)}. "
            "ONNX, OpenVINO and TensorRT artifacts are made from ONNX: implement the op with torch operations "
            "(or lightdeploy.ops), or give it a translation (torch.onnx.export's custom_translation_table); "
            "nothing was written."
        ) from exc


def check_symbolic(model, dims: dict[int, str]) -> None:
    """Fail if a requested dynamic input dim came out as a fixed number."""
    shape = model.graph.input[0].type.tensor_type.shape.dim
    fixed = {axis: shape[axis].dim_value for axis in dims if not shape[axis].dim_param}
    if fixed:
        names = ", ".join(f"axis {a} ({dims[a]}) fixed to {v}" for a, v in fixed.items())
        raise UsageError(
            f"The exported graph is not dynamic where asked: {names}. The model's code fixes that "
            "size (e.g. avg_pool2d(x, x.shape[2:]) or a Python int taken from a shape); use adaptive "
            "pooling or a mean, or export without the dynamic option."
        )


def _simplify(model):
    """onnxsim: mostly a no-op on dynamo graphs, kept for the TorchScript-style patterns it folds."""
    onnxsim = require("onnxsim", package="onnxsim", extra="onnx", purpose="ONNX simplification")
    with quiet("onnxsim"):
        simplified, ok = onnxsim.simplify(model)
    if not ok:
        return model, False
    restore_node_metadata(model, simplified)
    return simplified, True


def lightdeploy_metadata(job: ExportJob) -> dict:
    """What an ONNX file says about itself (``metadata_props``), for tools that open it alone."""
    return {
        "lightdeploy_version": __version__,
        "lightdeploy_model": job.spec.name,
        "lightdeploy_task": job.spec.task,
        "lightdeploy_preprocessing": job.preprocessing(),
    }


def write_onnx(job: ExportJob, workdir: Path) -> tuple[dict, object]:
    """The artifact's model.onnx in ``workdir``: (export facts, the loaded ModelProto)."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="ONNX export")
    path = workdir / ONNX_FILE
    info = export_onnx(job, path, metadata=lightdeploy_metadata(job))
    return info, onnx.load(str(path), load_external_data=False)


class OnnxExporter:
    target = "onnx"
    backend = "onnxruntime"
    precisions = ("fp32",)
    estimator = None  # ONNX Runtime runs everywhere: the gate runs the artifact itself

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        info, model = write_onnx(job, workdir)
        inputs, outputs = graph_io(model)
        return ExportResult(self.backend, ONNX_FILE, inputs, outputs, {"onnx": info})
