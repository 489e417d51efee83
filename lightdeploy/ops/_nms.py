"""Greedy non-maximum suppression with torchvision's semantics: variable-size and fixed-size forms.

Schema::

    lightdeploy::nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor
        boxes [N, 4] float (x1, y1, x2, y2) with x1 <= x2, y1 <= y2; scores [N] float
        -> kept indices [M] int64, in decreasing score order (ties: lower index first)
    lightdeploy::nms_fixed(Tensor boxes, Tensor scores, float iou_threshold, int max_output)
        -> (Tensor keep, Tensor num_kept)
        keep [max_output] int64 = the first max_output indices of nms(), padded with -1;
        num_kept [] int64 = min(M, max_output)

Semantics = ``torchvision.ops.nms``: visit boxes by decreasing score (stable sort, so equal scores
keep index order); keep a box unless a kept box has IoU > iou_threshold with it (equal to the
threshold does not suppress).  IoU = inter / (area_a + area_b - inter) in float32, compared with the
threshold in double precision as torchvision's C++ does.  ONNX carries the threshold as float32, so
every form here compares against ``float32_threshold`` = the largest float32 <= iou_threshold; for a
float32 IoU ``iou > that`` holds exactly when ``iou > iou_threshold`` (rounding to nearest instead,
e.g. 1/3 -> 0.33333334, would let an IoU of exactly 0.33333334 be suppressed in eager and kept in
ONNX).  Boxes must have x1 <= x2 and y1 <= y2: ONNX Runtime takes min/max of the corners while
torchvision uses them as given, so flipped boxes give different answers (checked: a box and its
corner-swapped twin are suppressed in ORT, kept in torchvision).  iou_threshold must be >= 0
(torchvision then suppresses even disjoint boxes; ORT rejects thresholds outside [0, 1]).  A
threshold above 1 suppresses nothing; the ONNX form passes min(threshold, 1), which is the same
since IoU <= 1 and only IoU > threshold suppresses.

Lowerings:
- ``nms`` -> ONNX ``NonMaxSuppression`` (opset 18, one batch, one class, no score threshold,
  max_output_boxes_per_class = N); column 2 of ``selected_indices`` is the kept index.  Checked in
  ONNX Runtime 1.32: it emits each class's selections in selection order, i.e. decreasing score,
  with equal scores in increasing index order, which is exactly the eager order, so no re-sort is
  needed; the tests assert index equality with all-equal and 0.1-rounded scores.  ``nms`` has no
  decomposition: its output size depends on the data, which litert-torch cannot express.
- ``nms_fixed`` -> ONNX ``NonMaxSuppression`` with max_output_boxes_per_class = max_output, then a
  Pad with -1.  Its decomposition (TFLite) is greedy, unrolled over the max_output picks: an N x N
  "IoU > t" matrix of the sorted boxes, then max_output steps that each take the first still-alive
  box and clear the boxes it overlaps; it equals greedy exactly and costs O(N^2 + max_output * N).
  (Its first form walked all N boxes: N - 1 steps, ~21.6k TFLite ops for ThunderNet at 320x320, a
  5 min conversion and 110 ms of TFLite time against ORT's 15 ms; picking stops at max_output:
  ~8k ops.)  The score order is built from comparisons (``stable_descending_order``): litert-torch
  failed on torch.sort ("comparator block argument should be tensor<i32>").
- ``batched_nms`` (class-aware) is plain torch around ``nms``: boxes of class c are shifted by
  c * (max coordinate + 1) so different classes never overlap (torchvision's coordinate trick).  It
  exports as arithmetic + NonMaxSuppression.  The shift costs float32 precision for large class
  ids (about 4e-3 px at offset 4e4), exactly as in torchvision.
"""

from __future__ import annotations

import numpy as np
import torch

NMS_NAME = "lightdeploy::nms"
NMS_FIXED_NAME = "lightdeploy::nms_fixed"


def float32_threshold(iou_threshold: float) -> float:
    """The largest float32 <= iou_threshold: for float32 x, ``x > it`` <=> ``x > iou_threshold``."""
    rounded = np.float32(iou_threshold)
    if float(rounded) > iou_threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _check_threshold(iou_threshold: float) -> None:
    if not iou_threshold >= 0.0:  # also rejects NaN
        raise ValueError(f"nms iou_threshold must be >= 0, got {iou_threshold}")


def _check_boxes(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms boxes must be [N, 4], got shape {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"nms scores must be [N] with N = {boxes.shape[0]}, got shape {tuple(scores.shape)}")


# --------------------------------------------------------------------------------------- eager
def nms_eager(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's greedy loop, in numpy float32; only kept boxes cost an O(N) IoU row."""
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].detach().to("cpu", torch.float32).numpy()
    x1, y1, x2, y2 = (sorted_boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    threshold = np.float32(float32_threshold(iou_threshold))
    suppressed = np.zeros(len(sorted_boxes), dtype=bool)
    kept = []
    for i in range(len(sorted_boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        later = slice(i + 1, None)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 (empty boxes) is not > t
            iou = inter / (areas[i] + areas[later] - inter)
        suppressed[later] |= iou > threshold
    return order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]


def nms_fixed_eager(boxes, scores, iou_threshold: float, max_output: int):
    kept = nms_eager(boxes, scores, iou_threshold)[:max_output]
    padded = torch.full((max_output,), -1, dtype=torch.int64, device=boxes.device)
    padded[: len(kept)] = kept
    return padded, torch.tensor(len(kept), dtype=torch.int64, device=boxes.device)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] -> [N, N] IoU with the same float operations as the greedy loop (symmetric)."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    areas = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = w * h
    return inter / (areas[:, None] + areas[None] - inter)


def stable_descending_order(scores: torch.Tensor) -> torch.Tensor:
    """argsort(scores, descending, stable) from comparisons only: TFLite's sort needs int32 keys.

    rank[j] = number of boxes visited before j (higher score, or equal score and lower index);
    order[r] = the j with rank r, picked by an integer one-hot sum (exact).  O(N^2) like the IoUs.
    """
    index = torch.arange(scores.shape[0], device=scores.device)
    higher = scores[:, None] > scores[None, :]
    tie_first = (scores[:, None] == scores[None, :]) & (index[:, None] < index[None, :])
    rank = (higher | tie_first).to(torch.int64).sum(dim=0)
    return ((rank[None, :] == index[:, None]).to(torch.int64) * index[None, :]).sum(dim=1)


def nms_fixed_decomposition(boxes, scores, iou_threshold: float, max_output: int):
    """Greedy NMS with static shapes and builtin ops only (for litert-torch / TFLite).

    Sort, then pick the kept boxes one by one, max_output times (unrolled: max_output is static):
    the next kept box is the first box in score order that no kept box suppresses, and it removes
    the boxes it overlaps by IoU > t from the alive mask.  That is the greedy loop itself, so the
    result is exact; it stops where the output is full instead of walking all N boxes, so it costs
    max_output steps of O(N) (ThunderNet: 200 + 100 steps instead of 2000 + 1000).  When nothing is
    alive the slot is padding (-1).
    """
    n = boxes.shape[0]
    if n == 0:  # static: no boxes, all padding
        return torch.full((max_output,), -1, dtype=torch.int64, device=boxes.device), torch.zeros((), dtype=torch.int64)
    order = stable_descending_order(scores)
    overlaps = pairwise_iou(boxes[order].to(torch.float32)) > float32_threshold(iou_threshold)
    position = torch.arange(n, device=boxes.device)
    first_weight = (n - position).to(torch.float32)  # argmax of alive * weight = first alive position
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    picked = []
    for _ in range(max_output):
        # index_select with a [1] index (a GATHER), not t[i]: tracing would need i's value
        i = torch.argmax(alive.to(torch.float32) * first_weight, dim=0, keepdim=True)
        kept = order.index_select(0, i)
        picked.append(torch.where(alive.index_select(0, i), kept, torch.full_like(kept, -1)))
        # a zero-area box has IoU NaN with itself (not > t): it is removed by position
        alive = alive & ~overlaps.index_select(0, i)[0] & (position != i)
    padded = torch.cat(picked)
    num_kept = (padded >= 0).to(torch.int64).sum()
    return padded, num_kept


# ----------------------------------------------------------------------------------- custom ops
@torch.library.custom_op(NMS_NAME, mutates_args=())
def _nms_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_eager(boxes, scores, iou_threshold)


@_nms_op.register_fake
def _nms_fake(boxes, scores, iou_threshold):
    # How many boxes survive depends on the values: a fresh unbacked size in [0, N].
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= boxes.shape[0])
    return boxes.new_empty(kept, dtype=torch.int64)


@torch.library.custom_op(NMS_FIXED_NAME, mutates_args=())
def _nms_fixed_op(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_output: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return nms_fixed_eager(boxes, scores, iou_threshold, max_output)


@_nms_fixed_op.register_fake
def _nms_fixed_fake(boxes, scores, iou_threshold, max_output):
    return (
        boxes.new_empty(max_output, dtype=torch.int64),
        boxes.new_empty((), dtype=torch.int64),
    )


# ------------------------------------------------------------------------------------------ autograd
# NMS returns integer indices (and a count): piecewise constant in the boxes and scores, so there is
# no gradient.  Registering a backward that returns None for every input says so explicitly: a
# detector in training mode can call NMS on boxes that require grad and take gradients through
# ``boxes[keep]`` (the indexing, not the NMS) without autograd warnings or errors.  Integer outputs
# never require grad, so autograd does not even call these.
def _no_setup_context(ctx, inputs, output) -> None:
    pass


def _nms_backward(ctx, *grad_outputs):
    return None, None, None


def _nms_fixed_backward(ctx, *grad_outputs):
    return None, None, None, None


_nms_op.register_autograd(_nms_backward, setup_context=_no_setup_context)
_nms_fixed_op.register_autograd(_nms_fixed_backward, setup_context=_no_setup_context)


# ---------------------------------------------------------------------------------- public API
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms: indices of the kept boxes, by decreasing score."""
    _check_boxes(boxes, scores)
    _check_threshold(iou_threshold)
    return torch.ops.lightdeploy.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS (torchvision.ops.batched_nms): boxes of different idxs never suppress."""
    _check_boxes(boxes, scores)
    _check_threshold(iou_threshold)
    # max(boxes, 0) without a branch on N == 0, so the exported graph stays free of that guard;
    # equal to torchvision's boxes.max() whenever any coordinate is >= 0.
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return torch.ops.lightdeploy.nms(boxes + offsets[:, None], scores, float(iou_threshold))


def nms_fixed(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_output: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [max_output] padded with -1, num_kept []): static shapes, for graphs that need them."""
    _check_boxes(boxes, scores)
    _check_threshold(iou_threshold)
    if max_output < 1:
        raise ValueError(f"nms_fixed max_output must be >= 1, got {max_output}")
    return torch.ops.lightdeploy.nms_fixed(boxes, scores, float(iou_threshold), int(max_output))


# ---------------------------------------------------------------------------- ONNX translations
def _onnx_select(boxes, scores, max_per_class, iou_threshold: float):
    """NonMaxSuppression on one batch and one class -> kept indices [M], decreasing score."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    def const(value, dtype):
        return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype)))

    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, const([0], np.int64)),  # [1, N, 4]; IoU is the same for yxyx or xyxy
        op.Unsqueeze(scores, const([0, 1], np.int64)),  # [1, 1, N]
        max_per_class,
        const([min(float32_threshold(iou_threshold), 1.0)], np.float32),  # ORT needs [0, 1]
        center_point_box=0,
    )  # [M, 3] = (batch, class, box index)
    return op.Gather(selected, const(2, np.int64), axis=1)


def onnx_nms(boxes, scores, iou_threshold: float):
    from onnxscript import opset18 as op

    num_boxes = op.Shape(boxes, start=0, end=1)  # keep every box that survives
    return _onnx_select(boxes, scores, num_boxes, iou_threshold)


def onnx_nms_fixed(boxes, scores, iou_threshold: float, max_output: int):
    from onnxscript import ir
    from onnxscript import opset18 as op

    def const(value, dtype):
        return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype)))

    kept = _onnx_select(boxes, scores, const([max_output], np.int64), iou_threshold)
    num_kept = op.Shape(kept)  # [1]
    padding = op.Concat(const([0], np.int64), op.Sub(const([max_output], np.int64), num_kept), axis=0)
    padded = op.Pad(kept, padding, const(-1, np.int64), mode="constant")
    return padded, op.Squeeze(num_kept, const([0], np.int64))


_NMS = torch.ops.lightdeploy.nms.default
_NMS_FIXED = torch.ops.lightdeploy.nms_fixed.default
ONNX_TRANSLATIONS = {_NMS: onnx_nms, _NMS_FIXED: onnx_nms_fixed}
# No entry for nms: its output size depends on the data, which TFLite graphs cannot express.
DECOMPOSITIONS = {_NMS_FIXED: nms_fixed_decomposition}
