"""Lowerings of lightdeploy's kernel ops (``lightdeploy.ops.tflite_builtin_ops()``) to TFLite builtins.

litert-torch lowers a ``stablehlo.custom_call`` whose target is ``tfl.<op>`` straight to that TFLite
dialect op (its own ``tfl.topk_v2`` goes this way: ``backend/experimental/torch_tfl/_lowerings.py``).
A lowering here emits that call with the kernel's operands, scalars as constants.  They are registered
in litert-torch's lowering registry for one conversion (``registered()``) and removed after, so
importing lightdeploy changes nothing in litert-torch.

This uses litert-torch internals (0.10): ``backend.lowerings.registry`` and the torch_tfl
``_ir_operation`` helper.  Where they are missing, ``registered()`` yields False and the exporter
uses the plain decompositions instead (slower, same results).
"""

from __future__ import annotations

import contextlib


def _nms_v5_lowering(lctx, boxes, scores, max_output: int, iou_threshold: float):
    """tfl.non_max_suppression_v5(boxes, scores, max_output, iou, score -inf, sigma 0)
    -> (selected_indices, selected_scores, valid_outputs); the op's outputs are the 1st and 3rd."""
    import numpy as np
    from litert_converter.mlir import ir
    from litert_torch.backend.experimental.torch_tfl._lowerings import _ir_operation
    from litert_torch.backend.lowerings import utils

    indices_type, valid_type = utils.node_meta_to_ir_types(lctx.node)
    scores_type = ir.RankedTensorType.get([max_output], ir.F32Type.get())
    call = _ir_operation(
        "tfl.non_max_suppression_v5",
        results=[indices_type, scores_type, valid_type],
        operands=[
            boxes,
            scores,
            utils.numpy_array_constant(np.array(max_output, np.int32)),
            utils.numpy_array_constant(np.array(iou_threshold, np.float32)),
            utils.numpy_array_constant(np.array(-np.inf, np.float32)),
            utils.numpy_array_constant(np.array(0.0, np.float32)),
        ],
    )
    return call[0], call[2]


# TFLite dialect op name -> lowering
_LOWERINGS = {"tfl.non_max_suppression_v5": _nms_v5_lowering}


@contextlib.contextmanager
def registered():
    """Register the builtin lowerings with litert-torch for one conversion; yields whether they are."""
    from lightdeploy.ops import tflite_builtin_ops

    try:
        from litert_torch.backend.experimental.torch_tfl._lowerings import _ir_operation  # noqa: F401
        from litert_torch.backend.lowerings import registry, utils

        ops = registry.global_registry.registered_ops
        utils.node_meta_to_ir_types, utils.numpy_array_constant  # noqa: B018 (fail here, not mid-conversion)
    except (ImportError, AttributeError):
        yield False
        return
    wanted = {op: _LOWERINGS[name] for op, name in tflite_builtin_ops().items()}
    before = {op: ops.get(op) for op in wanted}
    ops.update(wanted)
    try:
        yield True
    finally:
        for op, lowering in before.items():
            if lowering is None:
                ops.pop(op, None)
            else:
                ops[op] = lowering
