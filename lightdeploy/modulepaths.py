"""Which nn.Module made each node of an exported ONNX graph, read from the node's metadata.

The dynamo exporter records it in ``metadata_props`` (``pkg.torch.onnx.name_scopes``, e.g.
``['', 'stage2', 'stage2.0', ...]``, and ``pkg.torch.onnx.class_hierarchy``).  Operator checks and FP16
pinning (exporters) and fault localisation (``lightdeploy.localize``) name modules from it, so
it lives below both layers.
"""

from __future__ import annotations

import ast

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
NAMESPACE = "namespace"  # the TorchScript exporter's form of the same information


def node_scopes(node) -> list[str]:
    """The module-path scopes of a node from its metadata (empty when the exporter wrote none)."""
    props = {p.key: p.value for p in node.metadata_props}
    if NAME_SCOPES in props:
        try:
            return [s for s in ast.literal_eval(props[NAME_SCOPES]) if s]
        except (ValueError, SyntaxError):
            return []
    if NAMESPACE in props:  # ": pkg.Cls/conv1: torch.nn.Sequential/conv1.1: torch.nn.BatchNorm2d/op: aten..."
        return [part.split(":")[0].strip() for part in props[NAMESPACE].split("/") if part.split(":")[0].strip()]
    return []


def node_module_path(node) -> str:
    """The innermost module path that produced ``node`` ('' for the root module or when unknown)."""
    scopes = node_scopes(node)
    return scopes[-2] if len(scopes) >= 2 else ""  # the last scope is the fx node itself


def node_module(node) -> str:
    """'stage2.0.branch1.1 (BatchNorm2d)': the innermost nn.Module that produced ``node``, or ''."""
    path = node_module_path(node)
    if not path:
        return ""
    props = {p.key: p.value for p in node.metadata_props}
    cls = ""
    if CLASS_HIERARCHY in props:
        try:
            hierarchy = ast.literal_eval(props[CLASS_HIERARCHY])
            cls = hierarchy[-2].rsplit(".", 1)[-1] if len(hierarchy) >= 2 else ""
        except (ValueError, SyntaxError):
            cls = ""
    return f"{path} ({cls})" if cls else path
