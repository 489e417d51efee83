"""The traced program of an export job (``torch.export``), for naming what a backend cannot take.

Converters report an unsupported op by its name alone.  The traced program knows more: every node's
``nn_module_stack`` says which module of the model called it, so a problem can be named as
"op X in head.post (Block)".  Used when the ONNX export meets a custom op without a translation, and
by the TFLite check (``tflite/check.py``).
"""

from __future__ import annotations

import operator

from lightdeploy.exporters.base import ExportJob

# Namespaces of torch's own ops; an op from any other namespace is a custom op (``torch.library``).
TORCH_NAMESPACES = ("aten", "prims", "higher_order")


def exported_program(job: ExportJob):
    """``torch.export`` of the job's module on its example input, as the converters trace it."""
    import torch

    from lightdeploy.logs import quiet

    with quiet("torch"):
        return torch.export.export(job.model, (job.example_input(),), strict=False)


def op_nodes(program):
    """The graph's op calls (``call_function`` nodes other than tuple indexing)."""
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]


def node_module(node) -> str:
    """'head.post (Block)': the innermost nn.Module that called ``node``, or '' at the model's root."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    path = path.removeprefix("L['self'].").removeprefix("L__self__.")
    return f"{path} ({name.rsplit('.', 1)[-1]})" if path else ""


def op_name(target) -> str:
    """'usertest::weird' for a torch.library op, else the target's own name."""
    schema = getattr(target, "_schema", None)
    return schema.name if schema is not None else str(target)


def custom_ops_missing(program, table: dict) -> list[tuple[str, str]]:
    """(op name, calling module) of every custom op in ``program`` that ``table`` has no entry for."""
    missing = []
    for node in op_nodes(program):
        namespace = getattr(node.target, "namespace", None)
        if namespace and namespace not in TORCH_NAMESPACES and node.target not in table:
            missing.append((op_name(node.target), node_module(node)))
    return missing


def describe(missing: list[tuple[str, str]]) -> str:
    return ", ".join(f"{op} (in {module})" if module else op for op, module in missing)
