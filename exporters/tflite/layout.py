"""Channel-last class maps for litert-torch: ``argmax`` over channels reduces NHWC's contiguous axis.

litert-torch's layout pass runs the convolutional body channel-last and puts a TRANSPOSE wherever an
op it cannot rewrite needs NCHW.  It has no rule for ``argmax``, and its min-cut prices every
TRANSPOSE alike whatever the tensor's size, so a segmenter's class map (``logits.argmax(1)``) reads
NCHW logits: ARG_MAX then reduces a strided axis of the full-resolution logits in LiteRT's reference
kernel (XNNPACK has no ARG_MAX), a third of BiSeNet's latency at 512x1024
(docs/measurements.md#tflite-bisenet).  Two changes, for one conversion:

- ``argmax`` is decomposed into ``max(dim, keepdim=True).indices`` (then squeezed): the same ARG_MAX
  in the flatbuffer, on an op the pass can rewrite (``max.dim``);
- a ``max.dim`` over the channel axis of a 4-D tensor *must* be channel-last, so the pass keeps the
  reduction on NHWC logits and transposes the one-channel index map instead.

The TFLite converter then moves that index-map TRANSPOSE onto ARG_MAX's input (a TRANSPOSE back
from the NCHW output logits, which XNNPACK runs), so ARG_MAX reduces the contiguous last axis.
"""

from __future__ import annotations

import contextlib


def argmax_as_max_indices(x, dim=None, keepdim=False):
    """``torch.argmax`` through ``max(dim, keepdim=True).indices``: the 4-D result stays channel-last."""
    import torch

    if dim is None:
        flat = torch.max(x.reshape(-1), 0).indices
        return flat.reshape([1] * x.dim()) if keepdim else flat
    indices = torch.max(x, dim, keepdim=True).indices
    return indices if keepdim else indices.squeeze(dim)


def decompositions() -> dict:
    """{op overload: function} registered as pre-convert decompositions (``convert._decompositions``)."""
    import torch

    return {torch.ops.aten.argmax.default: argmax_as_max_indices}


@contextlib.contextmanager
def channel_max_is_channel_last():
    """Make the layout pass keep a channel ``max.dim`` of a 4-D tensor NHWC; restored on exit.

    This patches a private registry of litert-torch (0.10); if it moves, conversion still works,
    with ARG_MAX on NCHW logits as before.
    """
    try:
        import torch
        from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_check
    except ImportError:
        yield
        return
    checkers = layout_check.nhwcable_node_checkers
    op = torch.ops.aten.max.dim
    previous = dict.get(checkers, op)
    fallback = previous or checkers[op]  # the registry builds its default checker on a miss

    def checker(node):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        x = node.args[0]
        if layout_check.is_4d(node) and layout_check.is_4d(x) and dim in (1, -3):
            return layout_check.NHWCable(can_be=True, must_be=True)
        return fallback(node)

    checkers[op] = checker
    try:
        yield
    finally:
        if previous is None:
            checkers.pop(op, None)
        else:
            checkers[op] = previous
