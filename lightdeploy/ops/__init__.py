"""The custom ops and blocks of lightdeploy's models, public for your own models.

A model that calls these exports to every backend with the same lowerings as the zoo's models:

- ``channel_shuffle(x, groups)``: ShuffleNet's channel interleave (ONNX: one channel Gather).
- ``ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1)``: position-sensitive
  RoIAlign, ``torchvision.ops.ps_roi_align``'s signature and semantics (ONNX: one RoiAlign; TFLite:
  a gather, which needs a fixed ``sampling_ratio > 0``).
- ``nms(boxes, scores, iou_threshold)`` and ``batched_nms(boxes, scores, idxs, iou_threshold)``:
  ``torchvision.ops``' greedy NMS (ONNX NonMaxSuppression; a variable-size output, so not TFLite).
- ``nms_fixed(boxes, scores, iou_threshold, max_output) -> (keep [max_output] padded with -1, num_kept)``:
  the same NMS with static shapes, what a detector needs to reach every backend (TFLite included).
- ``SAM(rpn_channels, out_channels)``: ThunderNet's spatial attention module (plain modules).

Each op is one private module here: its eager form (``torch.library.custom_op``), fake form, ONNX
translation(s) and a plain-tensor decomposition for converters without custom ops, with its schema
as the module docstring (docs/design.md#custom-ops).  The tables below collect ``ONNX_TRANSLATIONS``
({op overload: onnxscript function}) and ``DECOMPOSITIONS`` ({op overload: plain torch function}) from
every module in ``OP_MODULES``; the exporters read only these tables.  For TFLite,
``TFLITE_DECOMPOSITIONS`` override them with forms that convert to faster graphs (plain tensors), and
``TFLITE_KERNEL_DECOMPOSITIONS`` with forms that call a TFLite builtin kernel through an op of
``TFLITE_BUILTIN_OPS`` ({op overload: TFLite dialect op name}), which the TFLite exporter lowers
(``_nms_builtin``: ``nms_fixed`` on NON_MAX_SUPPRESSION_V5).
"""

from __future__ import annotations

from lightdeploy.ops import _channel_shuffle, _nms, _nms_builtin, _ps_roi_align
from lightdeploy.ops._channel_shuffle import channel_shuffle
from lightdeploy.ops._nms import batched_nms, nms, nms_fixed
from lightdeploy.ops._ps_roi_align import ps_roi_align
from lightdeploy.ops._sam import SAM

__all__ = ["channel_shuffle", "ps_roi_align", "nms", "batched_nms", "nms_fixed", "SAM"]

# The modules that define custom ops (SAM is plain modules: nothing to translate).
OP_MODULES = (_channel_shuffle, _nms, _nms_builtin, _ps_roi_align)


def _collected(*names: str) -> dict:
    """The union of the tables called ``names`` over ``OP_MODULES`` (later names override earlier)."""
    table: dict = {}
    for name in names:
        for module in OP_MODULES:
            table.update(getattr(module, name, {}))
    return table


def onnx_translation_table() -> dict:
    """{op overload: ONNX translation} for ``torch.onnx.export(custom_translation_table=...)``."""
    return _collected("ONNX_TRANSLATIONS")


def decomposition_table() -> dict:
    """{op overload: plain-tensor function} for converters that take only builtin ops."""
    return _collected("DECOMPOSITIONS")


def tflite_decomposition_table(kernels: bool = True) -> dict:
    """``decomposition_table()`` with the TFLite forms in place of the plain ones; ``kernels``: the
    exporter can lower ``tflite_builtin_ops()``, so the forms that call them are included."""
    names = ("DECOMPOSITIONS", "TFLITE_DECOMPOSITIONS") + (("TFLITE_KERNEL_DECOMPOSITIONS",) if kernels else ())
    return _collected(*names)


def tflite_builtin_ops() -> dict:
    """{op overload: TFLite dialect op name} for the ops the TFLite exporter lowers to builtin kernels."""
    return _collected("TFLITE_BUILTIN_OPS")
