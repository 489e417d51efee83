"""ONNX export: ``torch.onnx.export(dynamo=True)`` with the custom-op translations, checked and simplified.

The ONNX file is the root of the ONNX Runtime, OpenVINO and TensorRT artifacts, so ``export_onnx``
is shared by those exporters.  Steps: export with explicit names -> verify that requested dynamic
dims really are symbolic (the dynamo exporter silently re-specialises a dim the model code fixes)
-> onnx.checker -> onnxsim -> lightdeploy metadata in ``metadata_props`` -> save as one file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult

# The dynamo exporter writes opset 18 natively; onnxruntime 1.32 has no RoiAlign-22 kernel (opset 22+).
MIN_OPSET, MAX_OPSET = 18, 21
_ELEM_TYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 3: "int8", 9: "bool"}


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
    with quiet():
        program = torch.onnx.export(
            job.model,
            (job.example_input(),),
            dynamo=True,
            external_data=False,
            input_names=[job.input_name],
            output_names=list(job.output_names),
            opset_version=opset,
            dynamic_shapes=({i: name for i, name in dims.items()},) if dims else None,
            custom_translation_table=onnx_translation_table(),
            verbose=False,
        )
    model = program.model_proto
    check_symbolic(model, dims, job.output_names)
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


def check_symbolic(model, dims: dict[int, str], output_names) -> None:
    """Fail if a requested dynamic input dim came out as a fixed number."""
    graph_input = model.graph.input[0]
    shape = graph_input.type.tensor_type.shape.dim
    fixed = {axis: shape[axis].dim_value for axis in dims if not shape[axis].dim_param}
    if fixed:
        names = ", ".join(f"axis {a} ({dims[a]}) fixed to {v}" for a, v in fixed.items())
        raise UsageError(
            f"The exported graph is not dynamic where asked: {names}. The model's code fixes that "
            "size (e.g. avg_pool2d(x, x.shape[2:]) or a Python int taken from a shape); use adaptive "
            "pooling or a mean, or export without the dynamic option."
        )


def graph_io(model) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph as manifest entries (symbolic dims stay names)."""

    def entry(value, layout=None):
        t = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        e = {"name": value.name, "shape": shape, "dtype": _ELEM_TYPES.get(t.elem_type, str(t.elem_type))}
        if layout:
            e["layout"] = layout
        return e

    return [entry(v, "NCHW") for v in model.graph.input], [entry(v) for v in model.graph.output]


def graph_constants(graph) -> dict:
    """{name: numpy value} of ``graph``'s initializers and Constant-node ``value`` outputs."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _simplify(model):
    """onnxsim, kept in the pipeline although it is mostly a no-op on dynamo graphs (design.md)."""
    onnxsim = require("onnxsim", package="onnxsim", extra="onnx", purpose="ONNX simplification")
    with quiet():
        simplified, ok = onnxsim.simplify(model)
    if not ok:
        return model, False
    restore_node_metadata(model, simplified)
    return simplified, True


# The dynamo exporter records which nn.Module made each node; onnxsim drops node metadata, so it is
# copied back by node name (names survive).  `lightdeploy check` reports module paths from it.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
KEPT_NODE_KEYS = (NAME_SCOPES, CLASS_HIERARCHY)  # small; the stack traces are not kept


def restore_node_metadata(original, simplified) -> int:
    """Copy the module-path metadata of ``original``'s nodes onto ``simplified``'s nodes of the same name."""
    props = {n.name: [(p.key, p.value) for p in n.metadata_props if p.key in KEPT_NODE_KEYS]
             for n in original.graph.node if n.name}
    restored = 0
    for node in simplified.graph.node:
        if node.name in props and not any(p.key == NAME_SCOPES for p in node.metadata_props):
            for key, value in props[node.name]:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
            restored += 1
    return restored


@contextlib.contextmanager
def quiet(logger_name: str = "torch.onnx"):
    """Silence a tool's prints, warnings and INFO logs: lightdeploy shows its own progress instead
    (the ONNX exporter logs e.g. "torchvision is not installed. Skipping torchvision::nms")."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class OnnxExporter:
    target = "onnx"
    backend = "onnxruntime"
    precisions = ("fp32",)

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        onnx = require("onnx", package="onnx", extra="onnx", purpose="ONNX export")
        path = workdir / "model.onnx"
        info = export_onnx(job, path, metadata=lightdeploy_metadata(job))
        inputs, outputs = graph_io(onnx.load(str(path), load_external_data=False))
        return ExportResult(self.backend, "model.onnx", inputs, outputs, {"onnx": info})


def lightdeploy_metadata(job: ExportJob) -> dict:
    from lightdeploy import __version__

    return {
        "lightdeploy_version": __version__,
        "lightdeploy_model": job.spec.name,
        "lightdeploy_task": job.spec.task,
        "lightdeploy_preprocessing": job.preprocessing(),
    }


EXPORTER = OnnxExporter()
