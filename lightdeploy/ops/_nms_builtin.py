"""``nms_fixed`` through TFLite's builtin NON_MAX_SUPPRESSION_V5, with torchvision's semantics kept.

Schema::

    lightdeploy::tflite_nms_v5(Tensor boxes, Tensor scores, int max_output, float iou_threshold)
        -> (Tensor selected, Tensor num_valid)
        boxes [N, 4] float32 (two opposite corners; IoU is the same for xyxy and yxyx); scores [N]
        -> selected [max_output] int32 (positions into boxes, zeros after the valid ones);
           num_valid [] int32

Semantics = LiteRT's NON_MAX_SUPPRESSION_V5 kernel with score_threshold -inf and soft_nms_sigma 0
(``tensorflow/lite/kernels/internal/reference/non_max_suppression.h``): candidates are popped from a
priority queue by score; a candidate is suppressed when a box selected since its last visit has IoU
>= iou_threshold with it; a box with zero or negative area has IoU 0 with every box.  A selected
candidate goes back into the queue (the soft-NMS path runs for sigma 0 too) and is popped again at
once, compared with itself: a box whose IoU with itself is below the threshold (zero area, or a
threshold above 1) is selected again and again until the output is full.  The kernel's order among
equal scores is its queue's; the eager form here takes them in index order.

The op exists so the TFLite exporter can lower it to the builtin kernel (``exporters/tflite/
builtins.py``: litert-torch turns a ``stablehlo.custom_call`` named ``tfl.<op>`` into that TFLite op).
The unrolled decomposition in ``_nms.py`` costs O(max_output x N) small ops, a few dozen per pick; the
kernel runs the greedy loop in C++ (docs/measurements.md#tflite-builtin-nms).

``nms_fixed_builtin`` is ``nms_fixed`` (torchvision's semantics, ``_nms.py``) built on it, exactly:

- ties: the boxes are sorted once by the stable order of ``stable_descending_order`` (two TOPK_V2)
  and given the distinct scores N, N-1, ..., 1 in that order, so the kernel visits them in
  torchvision's order whatever its queue does with equal scores;
- threshold: torchvision suppresses on IoU > t, the kernel on IoU >= t'.  With t' the float32 just
  above ``float32_threshold(t)``, ``iou >= t'`` holds for a float32 IoU exactly when ``iou > t``.
  For t < 1, t' <= 1 and a selected box suppresses its own second visit (IoU 1).  For t >= 1
  torchvision suppresses nothing and the form is the sorted order itself, without the kernel;
- zero-area boxes: torchvision's IoU with them is 0 or 0/0, so they are never suppressed and
  suppress nothing.  The kernel would select one forever, so each is replaced by a stand-in with the
  same rank: a G x G square at x = G * (2k + 2) (G = 2 max|coordinate| + 1, k its position), which
  overlaps no box (every other box ends before x = G, the stand-ins are G apart) and has IoU exactly
  1 with itself (finite coordinates only).  Merging them back after the kernel instead is exact too,
  but costs a [max_output, N] comparison (docs/measurements.md#tflite-builtin-nms);
- IoU: the kernel computes the same float32 products, sum and quotient (in another operand order,
  which float addition and multiplication do not see);
- padding: positions past the kept count become -1, as ``nms_fixed`` pads.
"""

from __future__ import annotations

import numpy as np
import torch

from lightdeploy.ops._nms import float32_threshold, stable_descending_order

NMS_V5_NAME = "lightdeploy::tflite_nms_v5"


def builtin_threshold(iou_threshold: float) -> float:
    """t' for the kernel's ``iou >= t'``: the float32 just above ``float32_threshold(iou_threshold)``."""
    return float(np.nextafter(np.float32(float32_threshold(iou_threshold)), np.float32(np.inf)))


# --------------------------------------------------------------------------------------- eager
def nms_v5_eager(boxes: torch.Tensor, scores: torch.Tensor, max_output: int, iou_threshold: float):
    """The kernel's loop in numpy float32, re-visits included (equal scores in index order)."""
    import heapq

    b = boxes.detach().to("cpu", torch.float32).numpy()
    lo, hi = np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])
    areas = (hi[:, 0] - lo[:, 0]) * (hi[:, 1] - lo[:, 1])
    threshold = np.float32(iou_threshold)
    values = scores.detach().to("cpu", torch.float32).numpy()
    # (negated score, index, how many selected boxes this candidate was already compared with)
    queue = [(-float(v), i, 0) for i, v in enumerate(values) if v > -np.inf]
    heapq.heapify(queue)
    selected: list[int] = []
    limit = min(len(queue), max_output)
    while len(selected) < limit and queue:
        priority, i, checked = heapq.heappop(queue)
        since = np.asarray(selected[checked:], dtype=np.int64)
        wh = np.maximum(np.minimum(hi[i], hi[since]) - np.maximum(lo[i], lo[since]), np.float32(0))
        inter = wh[:, 0] * wh[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((areas[since] > 0) & (areas[i] > 0), inter / (areas[i] + areas[since] - inter), 0)
        if not (iou.astype(np.float32) >= threshold).any():
            # selected, and back into the queue: the next visit compares it with itself
            heapq.heappush(queue, (priority, i, len(selected)))
            selected.append(int(i))
    out = np.zeros(max_output, np.int32)
    out[: len(selected)] = selected
    return torch.from_numpy(out), torch.tensor(len(selected), dtype=torch.int32)


@torch.library.custom_op(NMS_V5_NAME, mutates_args=())
def _nms_v5_op(
    boxes: torch.Tensor, scores: torch.Tensor, max_output: int, iou_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return nms_v5_eager(boxes, scores, max_output, iou_threshold)


@_nms_v5_op.register_fake
def _nms_v5_fake(boxes, scores, max_output, iou_threshold):
    return boxes.new_empty(max_output, dtype=torch.int32), boxes.new_empty((), dtype=torch.int32)


# ------------------------------------------------------------------------------ nms_fixed form
def nms_fixed_builtin(boxes, scores, iou_threshold: float, max_output: int):
    """``nms_fixed`` (torchvision's semantics, padded with -1) on the builtin kernel; see the docstring."""
    n, device = boxes.shape[0], boxes.device
    if n == 0:  # static: no boxes, all padding
        return torch.full((max_output,), -1, dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64)
    order = stable_descending_order(scores).to(torch.int32)
    position = torch.arange(n, dtype=torch.int32, device=device)
    if iou_threshold >= 1.0:  # static: IoU <= 1 never exceeds it, nothing is suppressed
        keep = order[: min(max_output, n)].to(torch.int64)
    else:
        sorted_boxes = boxes[order].to(torch.float32)
        x1, y1, x2, y2 = sorted_boxes.unbind(1)
        empty = (x2 - x1) * (y2 - y1) <= 0  # the kernel's own area test
        g = 2 * sorted_boxes.abs().max() + 1
        slot = position.to(torch.float32)
        stand_in = torch.stack([g * (2 * slot + 2), torch.zeros_like(slot), g * (2 * slot + 3), g.expand(n)], 1)
        rank = (n - position).to(torch.float32)
        picked, num_valid = torch.ops.lightdeploy.tflite_nms_v5(
            torch.where(empty[:, None], stand_in, sorted_boxes), rank, max_output, builtin_threshold(iou_threshold)
        )
        valid = torch.arange(max_output, dtype=torch.int32, device=device) < num_valid
        keep = torch.where(valid, order[picked], -1).to(torch.int64)[: min(max_output, n)]
    if max_output > n:  # static: more slots than boxes
        keep = torch.cat([keep, torch.full((max_output - n,), -1, dtype=torch.int64, device=device)])
    return keep, (keep >= 0).to(torch.int64).sum()


_NMS_FIXED = torch.ops.lightdeploy.nms_fixed.default
# Read by ``lightdeploy.ops.tflite_decomposition_table()`` when the exporter can lower the kernel op.
TFLITE_KERNEL_DECOMPOSITIONS = {_NMS_FIXED: nms_fixed_builtin}
TFLITE_BUILTIN_OPS = {torch.ops.lightdeploy.tflite_nms_v5.default: "tfl.non_max_suppression_v5"}
