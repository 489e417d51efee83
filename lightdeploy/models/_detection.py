"""Shared pieces of the two-stage detectors (ThunderNet, Light-Head R-CNN).

Everything from the head tensors to the final detections lives in the graph with **static shapes**,
so the exported ONNX runs in ONNX Runtime as is and the same module can convert for TFLite
(litert-torch: ranks <= 6, no data-dependent shapes):

- anchors are computed in numpy from the feature map's static size (constants in the export);
- proposals: decode, clip, fixed-size top-k, ``nms_fixed`` (padded to ``post_nms_top_n``);
- R-CNN post-processing: softmax, class-wise decode, clip, fixed-size top-k over (RoI, class)
  candidates, class-aware ``nms_fixed`` (coordinate offsets per class), score threshold as a mask,
  padding to K -> ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``, ``num_detections [B]``.

Box convention: (x1, y1, x2, y2) in input pixels, Faster R-CNN deltas (dx, dy, dw, dh) divided by
``stds`` (torchvision's BoxCoder / mmdet's DeltaXYWHBBoxCoder), width = x2 - x1 (no "+1").
Padding: unused detection slots hold box 0, score 0 and label -1; ``num_detections`` counts the
valid slots, which always come first (detections are in decreasing score order).

The batch is looped over in Python (``nms_fixed`` takes one image): detector graphs have a static
batch; ``--dynamic-batch`` is refused up front, with that reason (pipeline.export).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lightdeploy.ops import nms_fixed, ps_roi_align

STANDARD_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
# Raw head tensors, before any NMS, appended with the export option raw_heads (--raw-heads):
# RPN objectness logits [B, N] and deltas [B, N, 4] over all N anchors; the proposals [B, R, 4] fed
# to the R-CNN subnet; its class logits [B, R, C + 1] (column 0 = background) and deltas [B, R, 4C].
RAW_OUTPUTS = ("rpn_logits", "rpn_deltas", "proposals", "rcnn_logits", "rcnn_deltas")
MAX_DETECTIONS = 100  # docs/design.md#custom-ops: K = 100
# torchvision's BoxCoder clamp: exp(dw) never exceeds 1000 / 16 (random weights give big deltas).
DELTA_CLAMP = math.log(1000.0 / 16)
MASKED_LOGP = -1e4  # log-probability given to masked candidates (padded RoIs, tiny boxes): never kept


# ------------------------------------------------------------------------------------------ anchors
def anchor_shapes(sizes, ratios) -> np.ndarray:
    """[A, 2] (w, h) for every (size, ratio) with ratio = h / w and area size^2; size-major order."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = size / math.sqrt(ratio)
            out.append((w, w * ratio))
    return np.asarray(out, np.float64)


def grid_anchors(height: int, width: int, stride: int, sizes, ratios) -> np.ndarray:
    """[H * W * A, 4] float32 anchors, location-major (row, column), anchor-minor.

    Centres sit at the middle of each feature cell, ((j + 0.5) * stride, (i + 0.5) * stride);
    the order matches a head output [B, A, H, W] permuted to [B, H, W, A] and flattened.
    """
    shapes = anchor_shapes(sizes, ratios)  # [A, 2]
    ys, xs = np.meshgrid((np.arange(height) + 0.5) * stride, (np.arange(width) + 0.5) * stride, indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1)[:, None, :]  # [HW, 1, 2]
    half = shapes[None] / 2  # [1, A, 2]
    boxes = np.concatenate([centres - half, centres + half], axis=2)  # [HW, A, 4]
    return boxes.reshape(-1, 4).astype(np.float32)


def flatten_head(t: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """[B, A * per_anchor, H, W] -> [B, H * W * A, per_anchor] (the anchors' order)."""
    b, _, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b, h * w * (t.shape[1] // per_anchor), per_anchor)


# --------------------------------------------------------------------------------------- box coding
def decode(deltas: torch.Tensor, ref: torch.Tensor, stds) -> torch.Tensor:
    """Apply (dx, dy, dw, dh) * stds to reference boxes [..., 4] -> boxes [..., 4] (x1, y1, x2, y2)."""
    w = ref[..., 2] - ref[..., 0]
    h = ref[..., 3] - ref[..., 1]
    cx = ref[..., 0] + 0.5 * w
    cy = ref[..., 1] + 0.5 * h
    dx, dy, dw, dh = (deltas[..., i] * float(stds[i]) for i in range(4))
    dw = dw.clamp(max=DELTA_CLAMP)
    dh = dh.clamp(max=DELTA_CLAMP)
    pcx = cx + dx * w
    pcy = cy + dy * h
    pw = torch.exp(dw) * w
    ph = torch.exp(dh) * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)


def clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip to the image; keeps x1 <= x2 and y1 <= y2 (the nms contract) since both are clamped alike."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1)


# ----------------------------------------------------------------------------------------- proposals
class ProposalLayer(nn.Module):
    """RPN outputs -> ``post_nms_top_n`` proposals per image, padded, with a validity mask.

    Per image: top ``pre_nms_top_n`` anchors by objectness logit (ranking logits, not sigmoids, so
    saturated probabilities cannot tie), decode with ``stds``, clip, NMS at ``nms_thresh``, keep
    ``post_nms_top_n``, ordered by anchor index (see forward).  When fewer survive, the free slots
    (last) repeat the best proposal (any real box keeps PSRoIAlign well defined) and are marked
    invalid, so their detections are masked out.
    """

    def __init__(self, pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float, stds=(1.0, 1.0, 1.0, 1.0)):
        super().__init__()
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.stds = tuple(stds)

    def forward(self, logits, deltas, anchors, image_size):
        h, w = image_size
        k = min(self.pre_nms_top_n, logits.shape[1])
        rois, valid = [], []
        for b in range(logits.shape[0]):
            top, idx = logits[b].topk(k)
            boxes = clip(decode(deltas[b][idx], anchors[idx], self.stds), h, w)
            keep, num = nms_fixed(boxes, top, self.nms_thresh, self.post_nms_top_n)
            slot = keep.clamp(min=0)
            ok = torch.arange(self.post_nms_top_n, device=logits.device) < num
            # Canonical order: by anchor index, not by score.  Scores of different anchors can lie
            # within float noise of each other, and a backend's rounding would then swap two RoIs,
            # misaligning every per-RoI tensor downstream (raw-head parity) though the set is equal.
            # The anchor index is an exact integer; RoI order means nothing to the R-CNN subnet.
            key = torch.where(ok, idx[slot], torch.full_like(slot, logits.shape[1])).to(torch.float32)
            order = key.topk(self.post_nms_top_n, largest=False).indices
            rois.append(boxes[slot[order]])
            valid.append(ok[order])
        return torch.stack(rois), torch.stack(valid)


def rois_with_batch_index(rois: torch.Tensor) -> torch.Tensor:
    """[B, R, 4] -> [B * R, 5] = (batch index, x1, y1, x2, y2), the ps_roi_align box format."""
    b, r, _ = rois.shape
    index = torch.arange(b, dtype=rois.dtype, device=rois.device).repeat_interleave(r)[:, None]
    return torch.cat([index, rois.reshape(b * r, 4)], dim=1)


# ------------------------------------------------------------------------------ R-CNN post-processing
class DetectionLayer(nn.Module):
    """R-CNN outputs -> the fixed-size detections (docs/design.md#custom-ops, the NMS contract).

    Per image: log-softmax over C + 1 classes (0 = background), class-wise decode of the RoIs with
    ``stds``, clip; candidates of padded RoIs or smaller than ``min_size`` (torchvision's 1e-2 px)
    are masked; the R x C (RoI, class) candidates are cut to the best ``pre_nms_top_n`` by score (a
    static top-k; scores below ``score_thresh`` can only trail), then
    class-aware NMS at ``nms_thresh`` via per-class coordinate offsets (torchvision's batched_nms
    trick, offset = max(H, W) + 1 per class id, exact since boxes are clipped to the image), keep
    ``max_detections``; the score threshold is applied as a mask after NMS: a box under the threshold
    only suppresses boxes scoring even lower, so the kept set equals thresholding first.
    """

    def __init__(
        self,
        num_classes: int,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections: int = MAX_DETECTIONS,
        pre_nms_top_n: int = 1000,
        stds=(0.1, 0.1, 0.2, 0.2),
        min_size: float = 1e-2,
    ):
        super().__init__()
        self.min_size = min_size
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.pre_nms_top_n = pre_nms_top_n
        self.stds = tuple(stds)

    def forward(self, rois, valid, cls_logits, box_deltas, image_size):
        h, w = image_size
        c = self.num_classes
        k_out = self.max_detections
        offset = float(max(h, w) + 1)
        out_boxes, out_scores, out_labels, out_num = [], [], [], []
        for b in range(rois.shape[0]):
            # Rank by log-probabilities: softmax saturates to exactly 1.0 in float32 once a logit
            # leads by ~17, and exact ties are broken by index, which a backend may order otherwise.
            logp = F.log_softmax(cls_logits[b], dim=-1)[:, 1:]  # [R, C]
            deltas = box_deltas[b].reshape(-1, c, 4)
            boxes = clip(decode(deltas, rois[b][:, None, :].expand(-1, c, -1), self.stds), h, w)  # [R, C, 4]
            # torchvision's remove_small_boxes(min_size) and the padded RoIs, as masks (static shapes)
            wide = (boxes[..., 2] - boxes[..., 0]) >= self.min_size
            big = wide & ((boxes[..., 3] - boxes[..., 1]) >= self.min_size)
            usable = big & valid[b][:, None]
            logp = torch.where(usable, logp, torch.full_like(logp, MASKED_LOGP))
            k = min(self.pre_nms_top_n, logp.numel())
            top, idx = logp.reshape(-1).topk(k)
            cand = boxes.reshape(-1, 4)[idx]
            labels = idx % c
            shifted = cand + (labels.to(cand.dtype) * offset)[:, None]
            keep, num = nms_fixed(shifted, top, self.nms_thresh, k_out)
            slot = keep.clamp(min=0)
            score = top[slot]
            ok = (torch.arange(k_out, device=rois.device) < num) & (score >= math.log(self.score_thresh))
            out_boxes.append(torch.where(ok[:, None], cand[slot], torch.zeros_like(cand[slot])))
            out_scores.append(torch.where(ok, torch.exp(score), torch.zeros_like(score)))
            out_labels.append(torch.where(ok, labels[slot], torch.full_like(labels[slot], -1)))
            out_num.append(ok.to(torch.int64).sum())
        return torch.stack(out_boxes), torch.stack(out_scores), torch.stack(out_labels), torch.stack(out_num)


# ------------------------------------------------------------------------------------ untrained init
UNTRAINED_LOGIT_STD = 2.5
# Detection heads' usual init (mmdet RPNHead / BBoxHead, as in ThunderNet's official config [O]):
# RPN objectness and deltas N(0, 0.01), R-CNN box deltas N(0, 0.001), biases 0.  Beyond matching
# training practice this keeps untrained deltas small (proposals near their anchors): with PyTorch's
# default init the RPN deltas reach ~20, every box is clamped to exp(4.1) x its anchor and clipped,
# and float noise in the deltas is multiplied by 512-pixel anchors into the proposals.
RPN_INIT_STD = 0.01
BOX_INIT_STD = 0.001


def init_normal(layer: nn.Module, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


def init_untrained_classifier(cls: nn.Linear, input_mean_square: float) -> None:
    """Spread an untrained class layer's logits so a random-weight detector emits detections.

    With PyTorch's default Linear init the class logits of these heads have a std of ~0.08
    (measured on the sample photographs after BN re-estimation), so all 80 foreground softmax scores
    sit near 1/81 < the 0.05 score threshold: the detector would output nothing and parity would
    compare empty sets.  Drawing the weights with std UNTRAINED_LOGIT_STD / sqrt(fan_in * E[h^2])
    (E[h^2] = ``input_mean_square``, the measured mean square of the fc features) gives logits with a
    std of about 2.5, i.e. a handful of confident classes per RoI, like a trained head.  Trained
    weights (--weights) replace this; the bias stays 0.
    """
    std = UNTRAINED_LOGIT_STD / math.sqrt(cls.in_features * input_mean_square)
    nn.init.normal_(cls.weight, std=std)
    nn.init.zeros_(cls.bias)


# ------------------------------------------------------------------------------------- the detector
class TwoStageDetector(nn.Module):
    """RPN -> proposals -> PSRoIAlign on a thin map -> R-CNN subnet -> fixed-size detections.

    Subclasses build ``self.rpn_stride``, ``self.anchor_sizes``, ``self.anchor_ratios``,
    ``self.roi_scale``, ``self.pooled`` (p), ``self.proposals`` (ProposalLayer), ``self.postprocess``
    (DetectionLayer) and implement ``features(x) -> (thin map, rpn logits [B, A, h, w], rpn deltas
    [B, 4A, h, w])`` and ``rcnn(pooled [R, alpha, p, p]) -> (logits [R, C + 1], deltas [R, 4C])``.

    ``forward`` returns the four standard outputs; ``detect(x, raw=True)`` adds the RAW_OUTPUTS.
    """

    sampling_ratio = 2  # ThunderNet official [O]; Light-Head's psalign samples 2 x 2 [O]

    def forward(self, x: torch.Tensor):
        return self.detect(x)

    def detect(self, x: torch.Tensor, raw: bool = False):
        image_size = (x.shape[2], x.shape[3])
        thin, rpn_cls, rpn_reg = self.features(x)
        anchors = torch.as_tensor(
            grid_anchors(rpn_cls.shape[2], rpn_cls.shape[3], self.rpn_stride, self.anchor_sizes, self.anchor_ratios),
            device=x.device,
        )
        rpn_logits = flatten_head(rpn_cls, 1).squeeze(-1)  # [B, N]
        rpn_deltas = flatten_head(rpn_reg, 4)  # [B, N, 4]
        rois, valid = self.proposals(rpn_logits, rpn_deltas, anchors, image_size)
        pooled = ps_roi_align(thin, rois_with_batch_index(rois), self.pooled, self.roi_scale, self.sampling_ratio)
        logits, deltas = self.rcnn(pooled)
        b, r = rois.shape[:2]
        logits = logits.reshape(b, r, -1)
        deltas = deltas.reshape(b, r, -1)
        detections = self.postprocess(rois, valid, logits, deltas, image_size)
        if not raw:
            return detections
        return (*detections, rpn_logits, rpn_deltas, rois, logits, deltas)

    # -------------------------------------------------------------------------------- complexity
    def macs_by_part(self, input_size: tuple[int, int] | None = None) -> dict[str, int]:
        """Multiply-adds of one batch-1 forward, by part (FlopCounterMode per top-level module).

        Parts are ``self.parts``: {label: module attribute names}; the R-CNN head is counted at the
        fixed number of proposals (``post_nms_top_n`` RoIs, padded or not), so it is explicit.
        """
        from torch.utils.flop_counter import FlopCounterMode

        size = input_size or self.input_size
        param = next(self.parameters())
        x = torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False, depth=None)
        with torch.no_grad(), counter:
            self(x)
        counts = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
        root = type(self).__name__  # FlopCounterMode names modules "<root class>.<path>"
        out = {
            label: sum(_subtree_macs(counts, f"{root}.{m}") for m in modules) for label, modules in self.parts.items()
        }
        out["total"] = counter.get_total_flops() // 2
        return out


def _subtree_macs(counts: dict[str, int], prefix: str) -> int:
    """MACs under module ``prefix``: its own entry, or (for a module whose ``forward`` is not what
    runs, e.g. a backbone's ``features``) the sum over its outermost counted descendants."""
    if prefix in counts:
        return counts[prefix]
    keys = [k for k in counts if k.startswith(prefix + ".")]
    top = [k for k in keys if not any(k.startswith(o + ".") for o in keys)]
    return sum(counts[k] for k in top)


class RawHeads(nn.Module):
    """Export wrapper: the detector's 4 standard outputs followed by the RAW_OUTPUTS."""

    def __init__(self, detector: TwoStageDetector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        return self.detector.detect(x, raw=True)


def export_wrapper(model, extra: dict):
    """ModelSpec.export_wrapper of the detectors: with ``extra["raw_heads"]``, add the raw heads
    (named by the spec's ``raw_outputs`` = RAW_OUTPUTS)."""
    if not extra.get("raw_heads"):
        return model
    return RawHeads(model).eval()
