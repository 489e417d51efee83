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
  Pad with -1.  Its decomposition (TFLite) is greedy, unrolled over the max_output picks: sort once,
  then each step takes the first still-alive box, computes its IoU row against all N sorted boxes
  and clears the ones it overlaps.  It equals greedy exactly and costs O(N log N + max_output * N),
  with no N x N tensor (at N = 2000 one is 4M elements per op).  The sort is two TOPK_V2
  (``stable_descending_order``): litert-torch fails on torch.sort ("comparator block argument
  should be tensor<i32>"), and top-k orders equal scores as its backend likes, so the second top-k
  sorts distinct integer keys.
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


def stable_descending_order(scores: torch.Tensor) -> torch.Tensor:
    """argsort(scores, descending, stable) from two top-k's (TOPK_V2 in TFLite).

    The first top-k sorts the values; its order within a run of equal values is the backend's (TF
    and torch may differ).  The second sorts distinct int32 keys run * N + index (run = the rank of
    the distinct value), so equal scores come out in index order whatever the backend does.
    """
    n = scores.shape[0]
    if n * n >= 2**31:  # int32 keys would overflow; detectors sort a few thousand boxes
        raise ValueError(f"the TFLite form of nms_fixed sorts at most 46340 boxes, got {n}")
    values, first = torch.topk(scores, n)
    # cumsum in int32 (torch promotes it to int64, which TFLite's concatenation would not match)
    new_run = (values[1:] != values[:-1]).to(torch.int32)
    run = torch.cat([new_run.new_zeros(1), torch.cumsum(new_run, 0, dtype=torch.int32)])
    key = run * n + first.to(torch.int32)
    return first.gather(0, torch.topk(-key, n).indices)


def nms_fixed_decomposition(boxes, scores, iou_threshold: float, max_output: int):
    """Greedy NMS with static shapes and builtin ops only (for litert-torch / TFLite).

    Sort, then pick the kept boxes one by one (unrolled: max_output is static): the next kept box is
    the first box in score order that no kept box suppresses; its IoU row against the N sorted boxes
    (the greedy loop's own float operations) clears those it overlaps by IoU > t.  That is the greedy
    loop itself, so the result is exact; it stops where the output is full instead of walking all N
    boxes (ThunderNet: 200 + 100 steps instead of 2000 + 1000), and each step is O(N).
    """
    n = boxes.shape[0]
    if n == 0:  # static: no boxes, all padding
        return torch.full((max_output,), -1, dtype=torch.int64, device=boxes.device), torch.zeros((), dtype=torch.int64)
    device = boxes.device
    threshold = float32_threshold(iou_threshold)
    order = stable_descending_order(scores)
    # A sentinel at position n (an empty box, index -1) is picked once nothing is alive: its weight
    # 0.5 is below every alive box's, it overlaps nothing (IoU 0 or 0/0), and position -1 keeps a
    # sentinel pick from removing it.
    sorted_boxes = torch.cat([boxes[order].to(torch.float32), torch.zeros(1, 4, device=device)])
    lo_rows, hi_rows = sorted_boxes[:, :2], sorted_boxes[:, 2:]  # [n + 1, 2]: one row gathered per step
    lo, hi = lo_rows.T.contiguous(), hi_rows.T.contiguous()  # [2, n + 1]: x and y rows, no per-step transpose
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    index = torch.arange(n, dtype=torch.int32, device=device)
    position = torch.cat([index, torch.full((1,), -1, dtype=torch.int32, device=device)])
    # argmax of the weights = the first alive position (weights decrease along the order; dead = 0)
    weight = torch.cat([(n - index).to(torch.float32), torch.full((1,), 0.5, device=device)])
    picked = []
    for _ in range(min(max_output, n)):
        i = torch.argmax(weight, dim=0, keepdim=True)
        picked.append(i)
        lower = torch.maximum(lo_rows[i].reshape(2, 1), lo)
        upper = torch.minimum(hi_rows[i].reshape(2, 1), hi)
        wh = (upper - lower).clamp(min=0)
        inter = wh[0] * wh[1]
        iou = inter / (areas[i] + areas - inter)
        # a zero-area box has IoU 0/0 = NaN with itself (not > t): it is removed by position
        weight = torch.where((iou > threshold) | (position == i), 0.0, weight)
    kept_index = torch.cat([order.to(torch.int32), torch.full((1,), -1, dtype=torch.int32, device=device)])
    padded = kept_index[torch.cat(picked)].to(torch.int64)
    if max_output > n:  # static: more slots than boxes
        padded = torch.cat([padded, torch.full((max_output - n,), -1, dtype=torch.int64, device=device)])
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
