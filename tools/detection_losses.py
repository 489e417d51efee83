"""Faster R-CNN training losses for lightdeploy's two-stage detectors (ThunderNet, Light-Head R-CNN).

The detector's own parts compute everything (``features``, ``proposals``, ``ps_roi_align`` on the
thin map, ``rcnn``); this file only adds what inference does not need: targets and losses.
Standard recipe (Ren et al. 2015; torchvision's RPN / RoIHeads defaults):

- **RPN**: anchors with IoU >= 0.7 to a ground-truth box are positive, < 0.3 negative, and each
  ground-truth box's best anchors are positive too (so small objects get one); 256 anchors per image,
  at most half positive; objectness BCE over them + smooth-L1 (beta 1/9) on the positives' deltas,
  encoded with the proposal layer's stds, both divided by the number sampled;
- **R-CNN**: the model's proposals (computed without gradient) plus the ground-truth boxes; 128
  RoIs per image, at most 25% foreground (IoU >= 0.5, labelled with the matched class), background
  IoU < 0.5; cross-entropy over C + 1 classes + smooth-L1 (beta 1) on the foreground RoIs' deltas of
  their own class, encoded with the detection layer's stds, divided by the number of RoIs.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lightdeploy.models import _detection as det
from lightdeploy.ops import ps_roi_align

RPN_POS_IOU, RPN_NEG_IOU, RPN_BATCH, RPN_POS_FRACTION = 0.7, 0.3, 256, 0.5
RCNN_FG_IOU, RCNN_BATCH, RCNN_FG_FRACTION = 0.5, 128, 0.25
RPN_BETA, RCNN_BETA = 1.0 / 9, 1.0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, 4] x [M, 4] -> [N, M] IoU of (x1, y1, x2, y2) boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None] - inter)


def encode(boxes: torch.Tensor, ref: torch.Tensor, stds) -> torch.Tensor:
    """The deltas that ``_detection.decode(deltas, ref, stds)`` turns back into ``boxes``."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dx = (boxes[:, 0] + 0.5 * bw - ref[:, 0] - 0.5 * rw) / rw
    dy = (boxes[:, 1] + 0.5 * bh - ref[:, 1] - 0.5 * rh) / rh
    dw, dh = torch.log(bw / rw), torch.log(bh / rh)
    return torch.stack([dx, dy, dw, dh], dim=1) / torch.as_tensor(stds, dtype=boxes.dtype)


def _sample(positive: torch.Tensor, negative: torch.Tensor, total: int, fraction: float, gen):
    """Random positives (at most total * fraction) and negatives to fill ``total``: index tensors."""
    pos = torch.nonzero(positive).squeeze(1)
    neg = torch.nonzero(negative).squeeze(1)
    pos = pos[torch.randperm(len(pos), generator=gen)[: int(total * fraction)]]
    neg = neg[torch.randperm(len(neg), generator=gen)[: total - len(pos)]]
    return pos, neg


def rpn_loss(rpn_logits, rpn_deltas, anchors, targets, stds, gen):
    """Objectness BCE + smooth-L1 over 256 sampled anchors per image; returns (cls, box) losses."""
    cls_losses, box_losses = [], []
    for logits, deltas, target in zip(rpn_logits, rpn_deltas, targets):
        gt = target["boxes"]
        if len(gt) == 0:
            iou = anchors.new_zeros(len(anchors), 1)
            gt = anchors.new_zeros(1, 4)
        else:
            iou = box_iou(anchors, gt)  # [N, G]
        best_iou, matched = iou.max(dim=1)
        positive = best_iou >= RPN_POS_IOU
        # each ground-truth box's best anchors (ties included) are positive as well
        best_per_gt = iou.max(dim=0).values
        positive |= ((iou == best_per_gt[None]) & (best_per_gt[None] > 0)).any(dim=1)
        negative = (best_iou < RPN_NEG_IOU) & ~positive
        pos, neg = _sample(positive, negative, RPN_BATCH, RPN_POS_FRACTION, gen)
        chosen = torch.cat([pos, neg])
        labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        cls_losses.append(F.binary_cross_entropy_with_logits(logits[chosen], labels, reduction="sum") / len(chosen))
        wanted = encode(gt[matched[pos]], anchors[pos], stds)
        box_losses.append(F.smooth_l1_loss(deltas[pos], wanted, beta=RPN_BETA, reduction="sum") / len(chosen))
    return torch.stack(cls_losses).mean(), torch.stack(box_losses).mean()


def sample_rois(rois, valid, targets, gen):
    """Per image: proposals + ground truth -> 128 RoIs with class labels (0 = background) and the
    matched ground-truth boxes.  Returns lists of [R, 4] RoIs, [R] labels, [R, 4] matched boxes."""
    out_rois, out_labels, out_gt = [], [], []
    for boxes, ok, target in zip(rois, valid, targets):
        gt, gt_labels = target["boxes"], target["labels"]
        candidates = torch.cat([boxes[ok], gt])
        if len(gt) == 0:
            labels = torch.zeros(len(candidates), dtype=torch.int64)
            matched_boxes = candidates.clone()
            fg = torch.zeros(len(candidates), dtype=torch.bool)
        else:
            best_iou, matched = box_iou(candidates, gt).max(dim=1)
            fg = best_iou >= RCNN_FG_IOU
            labels = torch.where(fg, gt_labels[matched], torch.zeros_like(matched))
            matched_boxes = gt[matched]
        pos, neg = _sample(fg, ~fg, RCNN_BATCH, RCNN_FG_FRACTION, gen)
        chosen = torch.cat([pos, neg])
        out_rois.append(candidates[chosen])
        out_labels.append(labels[chosen])
        out_gt.append(matched_boxes[chosen])
    return out_rois, out_labels, out_gt


def rcnn_loss(model, thin, rois, labels, matched, stds):
    """Cross-entropy over C + 1 classes + class-wise smooth-L1 on the foreground RoIs."""
    index = torch.cat([torch.full((len(r), 1), float(i)) for i, r in enumerate(rois)])
    boxes = torch.cat(rois)
    pooled = ps_roi_align(thin, torch.cat([index, boxes], dim=1), model.pooled, model.roi_scale, model.sampling_ratio)
    logits, deltas = model.rcnn(pooled)  # [R, C + 1], [R, 4C]
    labels, matched = torch.cat(labels), torch.cat(matched)
    cls = F.cross_entropy(logits, labels)
    fg = torch.nonzero(labels > 0).squeeze(1)
    own = deltas.reshape(len(deltas), -1, 4)[fg, labels[fg] - 1]  # the deltas of the RoI's own class
    wanted = encode(matched[fg], boxes[fg], stds)
    box = F.smooth_l1_loss(own, wanted, beta=RCNN_BETA, reduction="sum") / max(1, len(labels))
    return cls, box


def detector_losses(model, images, targets, gen) -> dict[str, torch.Tensor]:
    """The four Faster R-CNN losses of one batch; ``targets``: [{"boxes" [G, 4], "labels" [G] 1-based}]."""
    image_size = (images.shape[2], images.shape[3])
    thin, rpn_cls, rpn_reg = model.features(images)
    anchors = torch.as_tensor(
        det.grid_anchors(rpn_cls.shape[2], rpn_cls.shape[3], model.rpn_stride, model.anchor_sizes, model.anchor_ratios)
    )
    rpn_logits = det.flatten_head(rpn_cls, 1).squeeze(-1)
    rpn_deltas = det.flatten_head(rpn_reg, 4)
    rpn_cls_loss, rpn_box_loss = rpn_loss(rpn_logits, rpn_deltas, anchors, targets, model.proposals.stds, gen)
    with torch.no_grad():  # proposals are inputs to the second stage, as in Faster R-CNN's approximate joint training
        rois, valid = model.proposals(rpn_logits, rpn_deltas, anchors, image_size)
    rois, labels, matched = sample_rois(rois, valid, targets, gen)
    rcnn_cls_loss, rcnn_box_loss = rcnn_loss(model, thin, rois, labels, matched, model.postprocess.stds)
    return {"rpn_cls": rpn_cls_loss, "rpn_box": rpn_box_loss, "rcnn_cls": rcnn_cls_loss, "rcnn_box": rcnn_box_loss}
