"""FP16 safety for TensorRT engines, decided on any machine before the build.

- Eager forward hooks record each module's max |activation| on the calibration images; modules within
  ``FP16_MARGIN`` of the FP16 range (65504) are pinned to FP32, mapped to the ONNX nodes they produced
  (dynamo name scopes), plus the nodes that read their outputs.
- The post-processing tail after the last compute layer (box decoding, top-k, NMS) is kept in FP32.
- ``fp16_onnx`` emulates the engine's FP16 storage on the CPU (the plan's parity estimate).
"""

from __future__ import annotations

import sys

import numpy as np

from lightdeploy.exporters.onnx.graph import node_module, node_module_path, node_scopes

FP16_MAX = 65504.0
FP16_MAX = 65504.0
# Pin a layer to FP32 when its max |activation| on the calibration images reaches FP16_MAX / 16
# (4094): 60 images underestimate what deployment inputs reach (4 bits of headroom), and inside a
# layer the FP16 accumulators and reductions (conv sums, GlobalAveragePool, ReduceMean before the
# divide) see values larger than the layer's output.
FP16_MARGIN = 16.0
FP16_LIMIT = FP16_MAX / FP16_MARGIN
FP16_REASON = (
    f"pinned when max |activation| >= {FP16_LIMIT:.0f} = 65504 / {FP16_MARGIN:g}: the calibration "
    "images underestimate deployment maxima, and FP16 accumulators/reductions inside a layer exceed "
    "its output; readers of a pinned tensor are pinned too, so it is never cast back to FP16"
)

# The layers TensorRT computes with (and INT8 quantises, exporters/tensorrt/qdq.py).
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TAIL_REASON = "post-processing tail (no Conv/Gemm/MatMul after it): box decoding, top-k and NMS stay exact in FP32"


def activation_ranges(model, batches) -> dict[str, float]:
    """{module path ('' = root): max |output| over ``batches``}, by forward hooks on every module."""
    import torch

    ranges: dict[str, float] = {}

    def biggest(value) -> float:
        if isinstance(value, torch.Tensor):
            return float(value.detach().abs().max()) if value.is_floating_point() and value.numel() else 0.0
        if isinstance(value, (tuple, list)):
            return max((biggest(v) for v in value), default=0.0)
        if isinstance(value, dict):
            return max((biggest(v) for v in value.values()), default=0.0)
        return 0.0

    def hook(name):
        def record(module, args, output):
            ranges[name] = max(ranges.get(name, 0.0), biggest(output))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in handles:
            h.remove()
    return ranges


def fp16_pins(onnx_model, ranges: dict[str, float], limit: float = FP16_LIMIT) -> dict:
    """The ONNX nodes to keep in FP32: those whose innermost producing module is at risk, and their readers."""
    risky = {path: v for path, v in ranges.items() if v >= limit}
    nodes = list(onnx_model.graph.node)
    mapped = sum(1 for n in nodes if node_scopes(n))
    pinned: dict[str, dict] = {}
    for node in nodes:
        path = node_module_path(node)
        if path in risky and node.name:
            pinned[node.name] = {
                "node": node.name,
                "op_type": node.op_type,
                "module": node_module(node),
                "max_abs": risky[path],
                "why": "output",
            }
    produced = {out: n.name for n in nodes if n.name in pinned for out in n.output}
    for node in nodes:
        if node.name and node.name not in pinned:
            reads = [produced[i] for i in node.input if i in produced]
            if reads:
                pinned[node.name] = {
                    "node": node.name,
                    "op_type": node.op_type,
                    "module": node_module(node),
                    "max_abs": max(pinned[r]["max_abs"] for r in reads),
                    "why": f"reads {reads[0]}",
                }
    for node in tail_nodes(onnx_model):
        if node.name not in pinned:
            pinned[node.name] = {
                "node": node.name,
                "op_type": node.op_type,
                "module": node_module(node),
                "max_abs": None,
                "why": TAIL_REASON,
            }
    top = sorted(ranges.items(), key=lambda kv: -kv[1])[:10]
    return {
        "limit": limit,
        "margin": FP16_MARGIN,
        "fp16_max": FP16_MAX,
        "reason": FP16_REASON,
        "tail_nodes": sum(1 for p in pinned.values() if p["why"] == TAIL_REASON),
        "risky_modules": [
            {"module": p or "(root)", "max_abs": v} for p, v in sorted(risky.items(), key=lambda kv: -kv[1])
        ],
        "largest_activations": [{"module": p or "(root)", "max_abs": v} for p, v in top],
        "layers": list(pinned.values()),
        "nodes_with_module_path": f"{mapped}/{len(nodes)}",
    }


def tail_nodes(onnx_model) -> list:
    """Nodes after the network's last compute layer on every path to the outputs (decode, top-k, NMS...).

    In FP16 their rounding moves box corners by up to 0.25 px at 320 px and reorders near-tied scores;
    they are cheap, so the plan keeps them in FP32.  Classifiers (Gemm last) have no tail.
    """
    nodes = list(onnx_model.graph.node)
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_compute: dict[str, bool] = {}

    def reaches_compute(node) -> bool:
        if node.name in feeds_compute:
            return feeds_compute[node.name]
        feeds_compute[node.name] = False  # cycles cannot occur in ONNX graphs; guards recursion
        result = any(
            c.op_type in COMPUTE_OPS or reaches_compute(c) for out in node.output for c in consumers.get(out, [])
        )
        feeds_compute[node.name] = result
        return result

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(nodes) + 100))
    try:
        has_compute = any(n.op_type in COMPUTE_OPS for n in nodes)
        return [
            n
            for n in nodes
            if has_compute
            and n.op_type not in COMPUTE_OPS
            and n.name
            and not reaches_compute(n)
            and any(_produces_float(n, o) for o in n.output)
        ]
    finally:
        sys.setrecursionlimit(limit)


def _produces_float(node, output: str) -> bool:
    return node.op_type not in (
        "Shape",
        "Size",
        "ArgMax",
        "ArgMin",
        "NonMaxSuppression",
        "NonZero",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Not",
        "And",
        "Or",
    )


def fp16_onnx(onnx_model, pinned_nodes: list[str]):
    """FP16 emulation of the graph as TensorRT runs it with the plan's pins: every float tensor written
    by a non-pinned node (and the input, when a non-pinned node reads it) is rounded through float16
    with a Cast pair, and the weights of non-pinned nodes are rounded to float16; compute stays float32.

    ONNX Runtime's float16 converter is not used: on CPU its inserted casts run whole fp16 regions in
    float32, so activations were never rounded and overflows never showed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx_model)
    graph = model.graph
    floats = {
        v.name
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    pinned = set(pinned_nodes)
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)

    def rounds(name):
        return any(r not in pinned for r in readers.get(name, []))

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and rounds(init.name):
            # a weight beyond float16's range becomes inf; the parity gate judges the result, so numpy's
            # overflow warning would only be noise in the CLI's output
            with np.errstate(over="ignore"):
                value = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))

    def cast_pair(src, dst):
        half = f"{dst}__fp16"
        return [
            helper.make_node("Cast", [src], [half], to=TensorProto.FLOAT16, name=f"{dst}__to_fp16"),
            helper.make_node("Cast", [half], [dst], to=TensorProto.FLOAT, name=f"{dst}__to_fp32"),
        ]

    nodes = []
    renamed = {}
    for inp in graph.input:
        if inp.name in floats and rounds(inp.name):
            renamed[inp.name] = f"{inp.name}__fp16_rounded"
            nodes += cast_pair(inp.name, renamed[inp.name])
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        casts = []
        if node.name not in pinned:
            for k, out in enumerate(node.output):
                if out in floats:
                    node.output[k] = f"{out}__fp32"
                    casts += cast_pair(node.output[k], out)
        nodes += [node, *casts]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
