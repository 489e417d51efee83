"""Reading ONNX graphs: I/O entries for the manifest, constants, attributes, the names read, static
shapes, and the nn.Module behind each node.

The dynamo exporter records which nn.Module made each node in its ``metadata_props``
(``pkg.torch.onnx.name_scopes``, e.g. ``['', 'stage2', 'stage2.0', ...]``, and
``pkg.torch.onnx.class_hierarchy``); onnxsim drops node metadata, so ``restore_node_metadata`` copies
it back by node name.  Operator checks, FP16 pinning and fault localisation name modules from it.
"""

from __future__ import annotations

# The module-path readers live in lightdeploy.modulepaths (the parity layer reads them too); the
# exporters keep importing them from here.
from lightdeploy.modulepaths import (  # noqa: F401
    CLASS_HIERARCHY,
    NAME_SCOPES,
    node_module,
    node_module_path,
    node_scopes,
)
from lightdeploy.runtimes.base import onnx_type_to_numpy

KEPT_NODE_KEYS = (NAME_SCOPES, CLASS_HIERARCHY)  # small; the stack traces are not kept


# ----------------------------------------------------------------------------------- I/O and values
def graph_io(model) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph as manifest entries (symbolic dims stay names)."""
    from onnx import TensorProto

    def entry(value, layout=None):
        t = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        e = {
            "name": value.name,
            "shape": shape,
            "dtype": onnx_type_to_numpy(TensorProto.DataType.Name(t.elem_type).lower()),
        }
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


def node_attributes(node) -> dict:
    """{name: value} of a node's attributes (strings decoded)."""
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def names_read(graph) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads, and the graph outputs."""
    names = {o.name for o in graph.output}
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= names_read(sub)
    return names


def static_shapes(model) -> dict[str, tuple]:
    """{tensor name: dims (int, or None where unknown)} from ONNX shape inference."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
            )
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def restore_node_metadata(original, simplified) -> int:
    """Copy the module-path metadata of ``original``'s nodes onto ``simplified``'s nodes of the same name."""
    props = {
        n.name: [(p.key, p.value) for p in n.metadata_props if p.key in KEPT_NODE_KEYS]
        for n in original.graph.node
        if n.name
    }
    restored = 0
    for node in simplified.graph.node:
        if node.name in props and not any(p.key == NAME_SCOPES for p in node.metadata_props):
            for key, value in props[node.name]:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
            restored += 1
    return restored
