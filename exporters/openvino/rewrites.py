"""Rewrites of the OpenVINO graph (and of the ONNX it is converted from) where OpenVINO would compute
something else than ONNX, or compute it slowly.  Each keeps the values exactly; tests/test_openvino.py
compares each with the unrewritten graph.
"""

from __future__ import annotations

from lightdeploy.exporters.onnx.graph import graph_constants

GUARD_WHY = (
    "OpenVINO's ReverseInputChannelsFusion folds a channel-permuting Gather into the next "
    "Convolution's weights with the permutation instead of its inverse (right only for "
    "involutions such as RGB<->BGR); a negative Gather axis keeps the pass off"
)


def guard_permutation_gathers(model) -> int:
    """Rewrite permutation Gathers' axis to its negative form in place; return how many.

    OpenVINO 2026.4's ReverseInputChannelsFusion (MOC, run by ``convert_model`` and when compiling)
    takes any Gather whose constant indices are a permutation of the whole axis for an RGB<->BGR
    swap and folds it into the following Convolution as ``W[:, order]``; for a permutation that is
    not its own inverse (ShuffleNet's channel shuffle) the right fold is ``W[:, argsort(order)]``,
    so the result is silently wrong (docs/measurements.md#openvino-gather-fold).  The pass skips a
    negative axis, which ONNX defines as the same axis.
    """
    import numpy as np
    import onnx

    consts = graph_constants(model.graph)
    ranks = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    count = 0
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in ranks or node.input[1] not in consts:
            continue
        indices = consts[node.input[1]]
        axis = next((a for a in node.attribute if a.name == "axis"), None)
        if indices.ndim != 1 or indices.size < 2 or np.unique(indices).size != indices.size:
            continue
        if axis is None:
            axis = node.attribute.add()
            axis.name, axis.type, axis.i = "axis", onnx.AttributeProto.INT, 0
        if axis.i >= 0:
            axis.i -= ranks[node.input[0]]
            count += 1
    return count


def shuffle_gathers_to_op(model) -> int:
    """Replace every channel-shuffle Gather (constant indices = ``shuffle_permutation(C, g)`` on the
    channel axis) by OpenVINO's own ShuffleChannels op, in place; return how many.

    Same values, bit for bit (both only move data), but the CPU plugin runs a channel Gather with its
    reference kernel (``ref_any``), in int8 too, while ShuffleChannels has a JIT one
    (docs/measurements.md#openvino-shufflechannels).  It also keeps the shuffle away from
    ReverseInputChannelsFusion (``guard_permutation_gathers``).
    """
    import numpy as np
    from openvino import opset13 as ops

    from lightdeploy.ops._channel_shuffle import shuffle_permutation

    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather" or op.get_input_partial_shape(0).rank.get_length() != 4:
            continue
        indices, axis = (op.input_value(i).get_node() for i in (1, 2))
        if indices.get_type_name() != "Constant" or axis.get_type_name() != "Constant":
            continue
        if int(axis.get_data().ravel()[0]) not in (1, -3):
            continue
        perm = indices.get_data().ravel()
        # A shuffle of g groups sends input channel C/g to output 1: the only candidate to verify.
        groups = len(perm) // int(perm[1]) if len(perm) > 2 and perm[1] > 1 else 0
        if groups < 2 or not np.array_equal(perm, shuffle_permutation(len(perm), groups)):
            continue
        shuffle = ops.shuffle_channels(op.input_value(0), 1, groups)
        shuffle.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(shuffle.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def stable_topk(model) -> int:
    """Make every TopK keep equal values in index order, as ONNX's TopK (and ONNX Runtime) does.

    OpenVINO's ONNX frontend emits TopK-11 with ``stable=False``; on exact ties (e.g. the detectors'
    saturated proposal scores) it then picks other indices than eager and ONNX Runtime.  But
    ``stable=True`` makes the CPU plugin use its O(n * k) bubble sort instead of the bitonic sort
    (ThunderNet's two big TopKs dominate its latency then; docs/measurements.md#openvino-stable-topk).
    So a TopK that ``_keyed_stable_topk`` can rewrite gets the same stable result from unstable TopKs
    (bit-identical to ``stable=True``); the rest get ``stable=True``.
    """
    count = 0
    for op in model.get_ordered_ops():
        attrs = op.get_attributes()
        if op.get_type_name() != "TopK" or "stable" not in attrs:
            continue
        if _keyed_stable_topk(op):
            count += 1
        elif not attrs["stable"]:
            op.set_attribute("stable", True)
            count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def _keyed_stable_topk(op) -> bool:
    """Replace a TopK (sort by value, last axis, static length, constant k > 1) with unstable TopKs.

    An unstable TopK gives the right values (tied values are equal); the stable indices are those of
    the k smallest integer keys ``rank * n + index``, where rank is the dense rank of the value among
    the k top values (k for values below them).  The keys are distinct, so an unstable TopK on them
    is exact: order by value, ties by index, and a tie at the k-th value is cut in index order.
    """
    import numpy as np
    import openvino.opset15 as ops

    attrs = op.get_attributes()
    x = op.input_value(0)
    shape, k_node = x.get_partial_shape(), op.input_value(1).get_node()
    if (
        attrs["sort"] != "value"
        or shape.rank.is_dynamic
        or not shape[-1].is_static
        or k_node.get_type_name() != "Constant"
        or attrs["axis"] not in (-1, shape.rank.get_length() - 1)
    ):
        return False
    n, k = shape[-1].get_length(), int(k_node.get_data().reshape(-1)[0])
    if not 1 < k <= n or (k + 1) * n >= 2**31:  # k = 1 is O(n) anyway; keys must fit in int32
        return False

    def i32(v):
        return ops.constant(np.array(v, dtype=np.int32))

    def last(t, start, stop):
        return ops.slice(t, i32([start]), i32([stop]), i32([1]), i32([-1]))

    fast = ops.topk(x, ops.constant(np.int64(k)), -1, attrs["mode"], "value", "i32", False)
    values, where = fast.output(0), fast.output(1)
    changes = ops.convert(ops.not_equal(last(values, 1, k), last(values, 0, k - 1)), "i32")
    zero = ops.broadcast(i32(0), ops.shape_of(last(values, 0, 1), "i32"))
    rank = ops.concat([zero, ops.cumsum(changes, i32(-1))], -1)  # dense rank of the top k values
    ranks = ops.scatter_elements_update(ops.broadcast(i32(k), ops.shape_of(x, "i32")), where, rank, i32(-1))
    # Values equal to the k-th one that the unstable TopK left out compete for its last places.
    tied = ops.equal(x, ops.gather(values, i32([k - 1]), i32(-1)))
    ranks = ops.select(tied, ops.gather(rank, i32([k - 1]), i32(-1)), ranks)
    keys = ops.add(ops.multiply(ranks, i32(n)), i32(np.arange(n)))
    order = ops.topk(keys, ops.constant(np.int64(k)), -1, "min", "value", attrs["index_element_type"], False)
    fast.set_friendly_name(op.get_friendly_name() + "/values")
    order.set_friendly_name(op.get_friendly_name() + "/stable_indices")
    op.output(0).replace(values)
    op.output(1).replace(order.output(1))
    return True
