"""TensorRT-ready ONNX: exact rewrites for the places where TensorRT's ONNX parser would reject the
graph or silently compute something else.

Each rewrite replaces a node by standard ONNX nodes that give the same outputs (checked in ONNX
Runtime by tests/test_tensorrt_prepare.py) and that TensorRT 10 parses:

- ``explicit_nms_score_threshold``: ONNX NonMaxSuppression without ``score_threshold`` keeps every
  box, but TensorRT's NMS layer defaults its ScoreThreshold to 0.0 (TensorRT operator docs, NMS:
  "Boxes are selected if their score is above a given threshold ... The default value of the threshold
  is 0.0f"; the onnx-tensorrt importer sets none when the input is absent).  The detectors rank by
  logits and log-probabilities, which are mostly negative, so TensorRT would drop them.  The
  rewrite passes the lowest float32 as the threshold: every finite score is above it.
- ``split_large_topk``: TensorRT's TopK needs K < 3840.  A TopK of K >= 3840 becomes a chain of
  TopKs of at most 3839 each; between them the picked elements are scattered to -inf (+inf for
  smallest), so the next TopK picks the following ones, and the pieces are concatenated.  ONNX TopK
  breaks ties by the lower index, so the chain is the same sequence (exact for finite inputs).
- ``split_large_nms``: TensorRT's NMS layer considers at most 5000 boxes (its TopK box limit; 2000
  on SM 5.3/6.2 devices such as the Jetson Nano) and silently ignores the rest.  The plan is built on
  the target device, so the chunks are of 2000, which every device takes.  Greedy NMS visits boxes by
  decreasing score, so it can run over score-ordered chunks: NMS of the first chunk; for each
  later chunk, its boxes that overlap a box kept so far (IoU > threshold) get score -inf, the chunk's
  NMS keeps the rest, and the kept indices are concatenated in order and cut to
  max_output_boxes_per_class.  Exact up to the float rounding of IoU exactly at the threshold.

``prepare(model)`` applies them in place (threshold, NMS split, TopK split) and returns what it
changed, for the plan.
"""

from __future__ import annotations

import numpy as np

from lightdeploy.exporters.onnx.graph import graph_constants, names_read, node_attributes, static_shapes
from lightdeploy.exporters.tensorrt.support import NMS_TOPK_LIMIT_SM53, TOPK_MAX_K

LOWEST_FLOAT32 = float(np.finfo(np.float32).min)
TOPK_CHUNK = TOPK_MAX_K - 1  # TensorRT: K must be less than 3840


class _Emitter:
    """Builds replacement nodes with unique names under ``prefix``; constants become initializers."""

    def __init__(self, graph, prefix: str):
        self.graph, self.prefix, self.nodes, self._n = graph, prefix, [], 0
        self._taken = {i.name for i in graph.initializer} | {n.name for n in graph.node}
        self._taken |= {t for n in graph.node for t in (*n.input, *n.output)}

    def name(self, what: str) -> str:
        while True:  # unique in the graph, also across emitters with the same prefix
            self._n += 1
            name = f"{self.prefix}/{what}_{self._n}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, value, dtype) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, outputs=None, **attrs):
        from onnx import helper

        outs = list(outputs) if outputs else [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs


def _replace(model, node, emitter: _Emitter) -> None:
    """Put ``emitter``'s nodes where ``node`` was (its inputs exist there; its outputs are re-made),
    and drop the initializers only ``node`` read."""
    nodes = list(model.graph.node)
    at = nodes.index(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:at] + emitter.nodes + nodes[at + 1 :])
    used = names_read(model.graph)
    for init in [i for i in model.graph.initializer if i.name in node.input and i.name not in used]:
        model.graph.initializer.remove(init)


# ------------------------------------------------------------------------------------ NMS threshold
def explicit_nms_score_threshold(model) -> list[str]:
    """Give every NonMaxSuppression a score_threshold of the lowest float32 where it has none."""
    changed = []
    for node in model.graph.node:
        if node.op_type != "NonMaxSuppression" or (len(node.input) > 4 and node.input[4]):
            continue
        e = _Emitter(model.graph, node.name or "nms")
        inputs = (list(node.input) + [""] * 4)[:4]  # an empty 5th input ("") is replaced too
        if not inputs[2]:
            inputs[2] = e.const([0], np.int64)  # ONNX default: 0 boxes per class
        if not inputs[3]:
            inputs[3] = e.const([0.0], np.float32)  # ONNX default IoU threshold
        del node.input[:]
        node.input.extend(inputs + [e.const([LOWEST_FLOAT32], np.float32)])
        changed.append(f"{node.name}: explicit score_threshold {LOWEST_FLOAT32:.7g} (TensorRT's default is 0)")
    return changed


# ------------------------------------------------------------------------------------------- TopK
def _topk_chain(e: _Emitter, x: str, k: int, axis: int, largest: int, outputs=None) -> tuple[str, str]:
    """Values and indices of TopK(x, k) as a chain of TopKs of at most TOPK_CHUNK."""
    from onnx import TensorProto, helper

    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [-np.inf if largest else np.inf])
    values, indices, rest, left = [], [], x, k
    while left > 0:
        step = min(left, TOPK_CHUNK)
        v, i = e.op("TopK", [rest, e.const([step], np.int64)], n_out=2, axis=axis, largest=largest, sorted=1)
        values.append(v)
        indices.append(i)
        left -= step
        if left > 0:  # hide the picked elements from the next TopK
            fills = e.op("ConstantOfShape", [e.op("Shape", [i])], value=fill)
            rest = e.op("ScatterElements", [rest, i, fills], axis=axis)
    outs = list(outputs) if outputs else [e.name("topk_values"), e.name("topk_indices")]
    e.op("Concat", values, outputs=[outs[0]], axis=axis)
    e.op("Concat", indices, outputs=[outs[1]], axis=axis)
    return outs[0], outs[1]


def split_large_topk(model, max_k: int = TOPK_MAX_K) -> list[str]:
    """Rewrite every float TopK whose constant K is >= ``max_k`` as a chain (module docstring)."""

    consts, changed = graph_constants(model.graph), []
    for node in list(model.graph.node):
        if node.op_type != "TopK" or node.input[1] not in consts:
            continue
        k = int(consts[node.input[1]].reshape(-1)[0])
        if k < max_k:
            continue
        attrs = node_attributes(node)
        e = _Emitter(model.graph, node.name or "topk")
        outputs = [o or e.name("unused") for o in list(node.output) + [""] * (2 - len(node.output))]
        _topk_chain(e, node.input[0], k, attrs.get("axis", -1), attrs.get("largest", 1), outputs)
        _replace(model, node, e)
        changed.append(f"{node.name}: TopK K={k} as {-(-k // TOPK_CHUNK)} TopKs of <= {TOPK_CHUNK}")
    return changed


# -------------------------------------------------------------------------------------------- NMS
def _suppressed_by(e: _Emitter, boxes: str, kept: str, iou_threshold: str) -> str:
    """bool [n]: which of ``boxes`` [n, 4] overlap some box of ``kept`` [m, 4] by IoU > threshold.

    The IoU is ONNX Runtime's: corners taken as min/max, inter / (area_a + area_b - inter); a
    zero-area box suppresses nothing (0 / 0 is NaN, which compares false).  A count, not a max, so
    that an empty ``kept`` gives "not suppressed" without a reduction over nothing.
    """

    def corners(b, axis):
        b = e.op("Unsqueeze", [b, e.const([axis], np.int64)])  # [n, 1, 4] or [1, m, 4]
        x1, y1, x2, y2 = e.op("Split", [b, e.const([1, 1, 1, 1], np.int64)], n_out=4, axis=2)
        lo = (e.op("Min", [x1, x2]), e.op("Min", [y1, y2]))
        hi = (e.op("Max", [x1, x2]), e.op("Max", [y1, y2]))
        area = e.op("Mul", [e.op("Sub", [hi[0], lo[0]]), e.op("Sub", [hi[1], lo[1]])])
        return lo, hi, area

    (ax1, ay1), (ax2, ay2), area_a = corners(boxes, 1)
    (bx1, by1), (bx2, by2), area_b = corners(kept, 0)
    zero = e.const(0.0, np.float32)
    w = e.op("Max", [e.op("Sub", [e.op("Min", [ax2, bx2]), e.op("Max", [ax1, bx1])]), zero])
    h = e.op("Max", [e.op("Sub", [e.op("Min", [ay2, by2]), e.op("Max", [ay1, by1])]), zero])
    inter = e.op("Mul", [w, h])
    iou = e.op("Div", [inter, e.op("Sub", [e.op("Add", [area_a, area_b]), inter])])  # [n, m, 1]
    over = e.op("Cast", [e.op("Greater", [iou, iou_threshold])], to=1)
    hits = e.op("ReduceSum", [over, e.const([1, 2], np.int64)], keepdims=0)  # [n]
    return e.op("Greater", [hits, zero])


def split_large_nms(model, limit: int = NMS_TOPK_LIMIT_SM53) -> list[str]:
    """Rewrite NonMaxSuppression over more than ``limit`` boxes (one batch, one class) as chunked
    NMS (module docstring).  Needs static shapes; run ``explicit_nms_score_threshold`` first."""
    shapes, changed = static_shapes(model), []
    for node in list(model.graph.node):
        if node.op_type != "NonMaxSuppression":
            continue
        box_shape, score_shape = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not box_shape or not score_shape or None in box_shape or None in score_shape:
            continue
        batch, n, _ = box_shape
        if n <= limit or batch != 1 or score_shape[1] != 1:
            continue  # multi-batch / multi-class inputs stay (the check reports them)
        changed.append(_split_nms(model, node, n, limit))
    return changed


def _split_nms(model, node, n: int, limit: int) -> str:
    e = _Emitter(model.graph, node.name or "nms")
    boxes_in, scores_in, max_out, iou, score_thr = node.input[:5]
    boxes = e.op("Reshape", [boxes_in, e.const([n, 4], np.int64)])
    scores = e.op("Reshape", [scores_in, e.const([n], np.int64)])
    _, order = _topk_chain(e, scores, n, axis=0, largest=1)  # the greedy visiting order
    kept_parts, start = [], 0
    while start < n:
        stop = min(start + limit, n)
        chunk = e.op("Slice", [order, e.const([start], np.int64), e.const([stop], np.int64), e.const([0], np.int64)])
        chunk_boxes = e.op("Gather", [boxes, chunk], axis=0)
        chunk_scores = e.op("Gather", [scores, chunk], axis=0)
        if kept_parts:  # boxes a kept box suppresses can neither be kept nor suppress others
            kept = kept_parts[0] if len(kept_parts) == 1 else e.op("Concat", kept_parts, axis=0)
            hit = _suppressed_by(e, chunk_boxes, e.op("Gather", [boxes, kept], axis=0), iou)
            chunk_scores = e.op("Where", [hit, e.const(-np.inf, np.float32), chunk_scores])
        selected = e.op(
            "NonMaxSuppression",
            [
                e.op("Unsqueeze", [chunk_boxes, e.const([0], np.int64)]),
                e.op("Unsqueeze", [chunk_scores, e.const([0, 1], np.int64)]),
                max_out,
                iou,
                score_thr,
            ],
        )
        local = e.op("Gather", [selected, e.const(2, np.int64)], axis=1)
        kept_parts.append(e.op("Gather", [chunk, local], axis=0))
        start = stop
    kept = e.op("Concat", kept_parts, axis=0)
    kept = e.op(
        "Slice",
        [kept, e.const([0], np.int64), e.op("Reshape", [max_out, e.const([1], np.int64)]), e.const([0], np.int64)],
    )
    column = e.op("Unsqueeze", [kept, e.const([1], np.int64)])
    zeros = e.op("Sub", [column, column])  # batch 0, class 0
    e.op("Concat", [zeros, zeros, column], outputs=[node.output[0]], axis=1)
    _replace(model, node, e)
    chunks = -(-n // limit)
    return f"{node.name}: NonMaxSuppression over {n} boxes as {chunks} chunks of <= {limit}"


# ------------------------------------------------------------------------------------------- entry
def prepare(model, *, nms_box_limit: int = NMS_TOPK_LIMIT_SM53) -> list[str]:
    """Apply every rewrite to ``model`` in place; returns one line per rewritten node."""
    changed = explicit_nms_score_threshold(model)
    changed += split_large_nms(model, nms_box_limit)
    changed += split_large_topk(model)
    return changed
